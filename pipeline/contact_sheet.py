"""``pad show``: a contact sheet of one rendered sample — every view in a grid, the 2D
ground truth outlined in red, each tile labelled with its view name (PIL only); with ``--3d``
also a standalone interactive 3D view of the cached cloud (:mod:`data_cache.viewer`) beside it:
``FILE.html`` and ``assets/``, the points in the dataset's coordinates coloured by the number of
views that see each one (0: never seen, scored only through its neighbours), the ground-truth
points behind a button, the contact sheet next to it."""
from __future__ import annotations

import difflib
import math
import os

import numpy as np

from data_cache.errors import PadError
from data_cache.render_store import RenderStore
from pipeline.options import ShowConfig

OUTLINE_RGB = (230, 20, 20)
LABEL_HEIGHT = 16
GAP = 4
MIN_TILE = 160  # small renderings are upscaled (nearest) so labels and outlines stay legible


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of binary masks: ``mask & ~erode(mask)`` with a 3×3 erosion.

    ``mask``: (..., H, W) any dtype (nonzero = inside) -> (..., H, W) bool. Pixels on the image
    border count as boundary when inside (the erosion pads with background).
    """
    m = np.asarray(mask) != 0
    pad = [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(m, pad, constant_values=False)
    h, w = m.shape[-2:]
    eroded = np.ones_like(m)
    for dy in range(3):
        for dx in range(3):
            eroded &= p[..., dy:dy + h, dx:dx + w]
    return m & ~eroded


def outline(images: np.ndarray, gt2d: np.ndarray, color: tuple[int, int, int] = OUTLINE_RGB) -> np.ndarray:
    """Draw the ground-truth contour over renderings.

    ``images`` (V, H, W, 3) uint8, ``gt2d`` (V, H, W) uint8 -> (V, H, W, 3) uint8 copy.
    """
    out = np.array(images, dtype=np.uint8, copy=True)
    out[mask_boundary(gt2d)] = np.asarray(color, dtype=np.uint8)
    return out


def resolve_sample(store: RenderStore, sample: str) -> int:
    """Index of a sample given by id (``<class>/<split>/<stem>``) or by index."""
    ids = store.sample_ids
    text = str(sample).strip()
    if text.lstrip("-").isdigit():
        i = int(text)
        if not 0 <= i < len(ids):
            raise PadError(f"sample index {i} out of range: the store holds {len(ids)} samples (0..{len(ids) - 1})",
                           store.path)
        return i
    if text in ids:
        return ids.index(text)
    close = difflib.get_close_matches(text, ids, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise PadError(f"no sample '{text}' in the render store{hint} (ids are <class>/<split>/<stem>; "
                   f"'pad info --cache {os.path.dirname(store.path) or '.'} --samples' lists them, or give an index "
                   f"0..{len(ids) - 1})", store.path)


def _tile_scale(size: int) -> int:
    return max(1, math.ceil(MIN_TILE / max(1, size)))


def contact_sheet(images: np.ndarray, gt2d: np.ndarray, names: list[str], title: str = ""):
    """A PIL image: views in a grid of ``ceil(sqrt(V))`` columns, the ground truth outlined,
    each tile labelled. ``images`` (V, H, W, 3) uint8; ``gt2d`` (V, H, W) uint8."""
    from PIL import Image, ImageDraw

    v, h, w = gt2d.shape
    scale = _tile_scale(max(h, w))
    if scale > 1:  # nearest upscale first: the contour is then drawn one sheet pixel wide
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        gt2d = gt2d.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    tiles = outline(images, gt2d)
    cols = max(1, math.ceil(math.sqrt(v)))
    rows = max(1, math.ceil(v / cols))
    top = LABEL_HEIGHT + GAP if title else 0
    sheet = Image.new("RGB", (cols * (w + GAP) + GAP, top + rows * (h + LABEL_HEIGHT + GAP) + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((GAP, GAP), title, fill=(0, 0, 0))
    for k in range(v):
        r, c = divmod(k, cols)
        x = GAP + c * (w + GAP)
        y = top + GAP + r * (h + LABEL_HEIGHT + GAP)
        anomalous = int(np.count_nonzero(gt2d[k]) > 0)
        name = names[k] if k < len(names) else f"view{k}"
        draw.text((x, y + 2), name + ("  [anomaly]" if anomalous else ""),
                  fill=OUTLINE_RGB if anomalous else (0, 0, 0))
        sheet.paste(Image.fromarray(tiles[k]), (x, y + LABEL_HEIGHT))
    return sheet


def run_show(cfg: ShowConfig) -> int:
    """``pad show``: write the contact sheet of one sample to ``cfg.out`` (PNG)."""
    store = RenderStore.open(cfg.cache)
    i = resolve_sample(store, cfg.sample)
    sid = store.sample_ids[i]
    if not store.done()[i]:
        failure = next((f for f in store.failures() if f["index"] == i), None)
        why = f"it failed: {failure['error']}" if failure else "it has not been rendered yet"
        raise PadError(f"sample {sid} (index {i}) is not in the store: {why}; re-run 'pad render'", store.path)
    names = [str(view.get("name", f"view{k}")) for k, view in enumerate(store.views)]
    attrs = store.sample_attrs(i)
    label = {0: "normal", 1: "anomalous"}.get(attrs.get("label"), "?")
    sheet = contact_sheet(store.images(i), store.gt2d(i), names,
                          title=f"{sid}  (index {i}, {label}, {attrs.get('n_points', '?')} points)")
    out = os.path.abspath(os.path.expanduser(cfg.out))
    parent = os.path.dirname(out)
    if cfg.three_d and cfg.view_points < 1:
        raise PadError(f"--view-points must be at least 1 (got {cfg.view_points})")
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = f"{out}.tmp-{os.getpid()}"
        sheet.save(tmp, format="PNG")
        os.replace(tmp, out)
    except OSError as exc:
        raise PadError(f"cannot write the contact sheet: {exc.strerror or exc}", out) from None
    print(f"pad show: {sid} ({len(names)} views) -> {out}")
    if cfg.three_d:
        page = write_sample_view(store, i, os.path.splitext(out)[0] + ".html", sheet, cfg.view_points)
        print(f"pad show: 3D view -> {page}")
    return 0


def write_sample_view(store: RenderStore, i: int, path: str, sheet=None, max_points: int = 50000) -> str:
    """Write the standalone 3D view of cached sample ``i`` to ``path`` (HTML, ``assets/`` beside
    it); ``sheet``: the contact sheet (PIL image) shown next to it. Returns ``path``."""
    import io

    from data_cache.viewer import viewer_document, write_viewer_page

    sample = store.read_sample(i, ("points", "labels", "visible"))
    attrs = store.sample_attrs(i)
    points = (np.asarray(sample["points"], np.float64) * float(attrs.get("scale", 1.0) or 1.0)
              + np.asarray(attrs.get("center", (0.0, 0.0, 0.0)), np.float64).reshape(1, 3))
    seen = np.asarray(sample["visible"], bool).sum(axis=1).astype(np.float32)
    n_views = len(store.views)
    label = {0: "normal", 1: "anomalous"}.get(attrs.get("label"), "?")
    facts = [("class", str(attrs.get("class", ""))), ("label", label), ("views", str(n_views)),
             ("points never seen", str(int((seen == 0).sum())))]
    doc = viewer_document(points, seen, sample["labels"], lo=0.0, hi=float(max(n_views, 1)),
                          title=store.sample_ids[i], facts=facts, color_title="views seeing the point",
                          colorscale="Viridis", max_points=max_points, seed=i)
    image = None
    if sheet is not None:
        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        image = buf.getvalue()
    try:
        return write_viewer_page(path, doc, image, heading="pad show",
                                 image_caption="rendered views, 2D ground truth outlined in red")
    except OSError as exc:
        raise PadError(f"cannot write the 3D view: {exc.strerror or exc}", path) from None
