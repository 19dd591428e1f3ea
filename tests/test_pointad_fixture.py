"""``--style pointad`` against renderings made by the official PointAD scripts with Open3D itself.

``tests/fixtures/pointad`` holds one small scan per layout and what the official scripts
(Open3D 0.20) made of it; its README has the command that made it
(``benchmarks/official_render_parity.py --write-fixture``). pad reads each scan as the official
preprocessing and script do, renders it with pyrender and must give the same points in the same
order, the same point-pixel maps and visibility, the same images and 2D ground truth, to the
issue's targets (they are exact on this machine)."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from pipeline.ingest import discover
from pipeline.ingest.pointad import load_pointad_sample
from pipeline.render import RenderSettings, render_sample

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "pointad"
META = json.loads((FIXTURE / "official" / "meta.json").read_text())


@pytest.fixture(scope="module", params=[(layout, threads) for layout in sorted(META["samples"]) for threads in (1, 2)],
                ids=lambda p: f"{p[0]}-{p[1]}thread{'s' if p[1] > 1 else ''}")
def rendered(request):
    """Each layout rendered on one thread, and on two (``pad render --workers 1`` on a 2-core
    machine: the normals' query and the views on 2 threads each) — the same official outputs."""
    from PIL import Image

    from pipeline.render.threads import RENDER_THREADS_ENV

    layout, threads = request.param
    fmt, refs = discover(str(FIXTURE / "input" / layout))
    assert fmt == {"real3d": "shapenet"}.get(layout, layout)
    info = META["samples"][layout]
    (ref,) = [r for r in refs if r.id == info["id"]]
    seed = int(META["seed"])
    sample = load_pointad_sample(ref, seed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(RENDER_THREADS_ENV, str(threads))
        out = render_sample(sample, RenderSettings(style="pointad", layout=fmt, seed=seed), [])
    official = np.load(FIXTURE / "official" / f"{layout}.npz")
    views = [np.asarray(Image.open(FIXTURE / "official" / layout / f"view_{v}.png")) for v in range(9)]
    gts = [np.asarray(Image.open(FIXTURE / "official" / layout / f"view_{v}_gt.png")) > 127 for v in range(9)]
    return layout, info, sample, out, official, views, gts


def test_points_are_the_official_ones_in_the_same_order(rendered):
    layout, info, sample, out, official, _, _ = rendered
    ref = official["points"]
    assert sample.points.shape == ref.shape
    assert np.abs(sample.points - ref).max() / np.abs(ref).max() < 1e-5
    assert out.attrs["point_size_window_px"] == info["point_size"]


def test_point_pixel_maps_and_visibility(rendered):
    _, _, _, out, official, _, _ = rendered
    cor = official["cor"]                                        # (V, N, 3): x = col, y = row, seen
    pixel, visible = out.arrays["pixel"], out.arrays["visible"]
    same_pixel = (pixel[:, :, 1] == cor[:, :, 0].T) & (pixel[:, :, 0] == cor[:, :, 1].T)
    assert same_pixel.mean() >= 0.999
    assert (visible == (cor[:, :, 2].T == 1)).mean() >= 0.995
    assert visible.any(axis=0).all()


#: Image targets (mean absolute difference in grey levels, share of pixels off by more than 16).
#: The issue's for MVTec 3D-AD (met exactly here) and Eyecandies. Real3D-AD clouds interpolated up
#: to 336² points hold pairs of points exactly equidistant from others (the 1/4 and 3/4 points of
#: an edge about its midpoint); where such a tie decides the 30th neighbour of the normals, Open3D's
#: KD-tree (nanoflann) and pad's (scipy) keep different points, and the shades of about 1% of the
#: points differ (docs/fidelity.md): measured 1.7-2.1 and 2.7-3.1% on this cloud.
IMAGE_TARGETS = {"mvtec3d": (2.0, 0.02), "eyecandies": (2.0, 0.02), "real3d": (2.5, 0.04)}


def test_images_and_ground_truth(rendered):
    layout, _, sample, out, _, views, gts = rendered
    mae, off16 = IMAGE_TARGETS[layout]
    for v in range(9):
        d = np.abs(out.images[v].astype(int) - views[v][..., None].astype(int))
        assert d.mean() <= mae and (d.max(axis=2) > 16).mean() <= off16, f"view {v}"
        mine = out.gt2d[v].astype(bool)
        if gts[v].any():
            assert (mine & gts[v]).sum() / (mine | gts[v]).sum() >= 0.95, f"view {v}"
        else:
            assert not mine.any()
    assert sample.label == 1 and any(g.any() for g in gts)
