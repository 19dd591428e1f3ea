"""Reference sets from a cache, and cache scans scored against them.

- :func:`reference_scans`: the normal scans (label 0, feature row done) of each class in one
  split; a class without any is refused in one line (a reference set needs good parts).
- :func:`build_reference`: their aggregated features (:func:`scoring.mutual.reference.aggregate`)
  as a :class:`~scoring.mutual.reference.ReferenceSet` (what ``pad mutual --save-reference REF``
  saves and ``pad mutual --reference SPLIT`` scores against).
- :func:`score_scans`: cache scans scored against a reference set, each leaving itself out when
  it is one of the reference scans (same sample id) — the scores ``pad calibrate --reference``
  calibrates with and ``pad mutual --reference SPLIT`` reports, identical to what ``pad predict
  --reference`` gives the same cloud.

The cache's point-token store (``data_cache.token_store.TokenStore``, kind ``point-tokens``)
gives each scan's tokens, centres, curvatures, input points, pixels and the map from the
render store's points to the input points (:func:`store_row`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from data_cache.errors import PadError
from scoring.mutual.reference import (DEFAULT_R_LIST, DEFAULT_SIGMA, DEFAULT_TOPMIN, ReferenceSet, ScanScore,
                                      aggregate, check_features, make_reference, score_row)

KIND = "point-tokens"


def open_tokens(cache: str, tag: str | None, render):
    """The cache's point-token store (``tag``, or its only one). PadError, one line, when there
    is none (the fix: extract them)."""
    from data_cache.token_store import TokenStore, list_token_tags

    if tag is None and not list_token_tags(cache, kind=KIND):
        raise PadError("no point-token features in this cache: run pad extract-features --backbone point-mae",
                       cache)
    return TokenStore.open(cache, tag=tag, kind=KIND, render=render)


def store_row(store, i: int) -> dict:
    """Row ``i`` of a point-token store as :func:`scoring.mutual.reference.score_row` takes it:
    ``tokens`` (L, M, D) float16, ``centers`` (M, 3), ``curvature`` (M,), ``points`` (P, 3),
    ``point_pixel`` (P,) or (0,), ``point_of_render`` (N,) int32, ``grid`` int."""
    return {"tokens": store.tokens(i), "centers": store.centers(i), "curvature": store.curvature(i),
            "points": store.points(i), "point_pixel": store.point_pixel(i), "point_of_render": store.point_of_render(i),
            "grid": int(store.attrs.get("grid", 0) or 0)}


def reference_scans(render, store, classes: Sequence[str], split: str) -> dict[str, list[int]]:
    """Store indices of the normal scans (label 0) of each class in ``split`` whose feature row
    is done, in id order. PadError, one line, for a class with none."""
    done = np.asarray(store.done(render), bool)
    ids = render.sample_ids
    out: dict[str, list[int]] = {c: [] for c in classes}
    for i in render.select(classes=list(classes), splits=[split]):
        cls = ids[i].split("/")[0]
        if done[i] and int(render.sample_attrs(i).get("label", 1)) == 0:
            out[cls].append(int(i))
    empty = [c for c in classes if not out[c]]
    if empty:
        raise PadError(f"class(es) {', '.join(repr(c) for c in empty)} have no normal scan with features in split "
                       f"'{split}': a reference set needs good parts (label 0) of that split", render.path)
    return {c: sorted(v, key=lambda i: ids[i]) for c, v in out.items()}


def build_reference(cache: str, split: str, classes: Sequence[str], *, tag: str | None = None,
                    r_list: Sequence[int] = DEFAULT_R_LIST, topmin: float = DEFAULT_TOPMIN,
                    sigma: float = DEFAULT_SIGMA, device: str = "cpu", render=None, store=None) -> ReferenceSet:
    """The reference set of ``classes``: the aggregated features of their normal scans in
    ``split`` (:func:`reference_scans`), with the token store's feature identity and the render
    store's fingerprint."""
    import torch

    from data_cache.render_store import RenderStore

    render = render or RenderStore.open(cache)
    store = store or open_tokens(cache, tag, render)
    chosen = reference_scans(render, store, classes, split)
    ids = render.sample_ids
    keys = render.sample_keys()
    z_by_class = {}
    for cls, rows in chosen.items():
        zs = [aggregate(store.tokens(i), store.centers(i), store.curvature(i), r_list).to(device) for i in rows]
        z_by_class[cls] = ([ids[i] for i in rows], torch.stack(zs, dim=1).cpu(), [int(keys[i]) for i in rows])
    graph = np.asarray(render.read_sample(next(iter(chosen.values()))[0], ("knn",))["knn"])
    knn = graph.shape[1] - int(bool((graph[:, 0] == np.arange(graph.shape[0])).all()))   # neighbours besides self
    return make_reference(z_by_class, features=dict(store.attrs, tag=store.tag), modality="3d", r_list=r_list,
                          topmin=topmin, render_fingerprint=render.fingerprint, cache=cache, split=split,
                          sigma=sigma, knn=knn)


def score_scans(render, store, indices: Sequence[int], ref: ReferenceSet, cls: str, device: str = "cpu",
                progress=None) -> list[ScanScore]:
    """Score store rows ``indices`` of class ``cls`` against ``ref``, each leaving itself out
    when it is one of the reference scans (same sample id and content key). PadError, one line, when the
    store's features differ from the reference set's (:func:`scoring.mutual.reference.check_features`)
    or the class is not in it. Unorganized scans' maps are smoothed over the render store's kNN
    graph of each scan (as ``pad mutual``). ``progress``: called once per scan (or None)."""
    check_features(ref, dict(store.attrs, tag=store.tag), render.path)
    if cls not in ref.classes:
        raise PadError(f"the reference set has no class '{cls}' (it holds {', '.join(sorted(ref.classes))})",
                       ref.path)
    cls_ref = ref.classes[cls]
    ids = render.sample_ids
    keys = render.sample_keys()
    out = []
    for i in indices:
        graph = render.read_sample(i, ("knn", "knn_dist"))    # unorganized maps are smoothed over it
        out.append(score_row(store_row(store, i), ref, cls_ref, cls_ref.index_of(ids[i], int(keys[i])), graph["knn"],
                             graph["knn_dist"], device=device))
        if progress is not None:
            progress()
    return out
