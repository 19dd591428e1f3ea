"""Token feature stores ``<cache>/features/<tag>.h5`` for MuSc-V2's training-free scoring.

They live beside the CLIP stores (:mod:`data_cache.feature_store`) and follow its rules: one row
per render-store sample (same index), growing with the render store; ``render_key`` + ``done`` (a
row counts when it is done and its key equals the render sample's key); one writer at a time
(``<tag>.h5.lock``); a new store laid out in ``<tag>.h5.partial`` and renamed; growth resizes
every dataset (``done`` last) and zeroes the new flags before one flush. ``pad_schema`` 2.
The attribute ``kind`` tells them apart from CLIP stores (which have none):

``kind = "point-tokens"`` (backbone ``point-mae``), S rows, L tapped blocks, M groups, D = 384:
- ``tokens``          float32 (S, L, M, D)  Point-MAE tokens through the final LayerNorm, not normalized
- ``centers``         float32 (S, M, 3)     group centres in the network's input coordinates
- ``curvature``       float32 (S, M)        each centre's curvature (IPG)
- ``center_point``    int32   (S, M)        index of each centre in the sample's input points
- ``n_points``        int32   (S,)          P_i, input points of sample i
- ``points``          vlen float32 (S,)     each (P_i*3,): the input points (P_i, 3), flattened
- ``point_pixel``     vlen int32 (S,)       each (P_i,): flat index row*grid+col on the grid×grid
  image (organized scans); empty for unorganized
- ``point_of_render`` vlen int32 (S,)       each (N_i,): for each render-store point, the input
  point whose score it takes
Attributes: ``kind``, ``tag``, ``backbone``, ``pretrained``, ``weights``, ``seed``, ``layers``
(1-based), ``n_groups``, ``group_size``, ``dim``, ``mode``, ``grid`` (224 organized, 0 otherwise),
``render_fingerprint``, ``options`` (JSON), ``has_rgb``.

``kind = "image-tokens"`` (backbone ``dino-vitb8``): ``tokens`` float32 (S, L, G*G, D) patch
tokens (class token dropped) through the final norm; attributes ``kind``, ``tag``, ``backbone``,
``pretrained``, ``weights``, ``seed``, ``layers``, ``grid`` (28), ``dim`` (768), ``image_size``
(224), ``mean``/``std``, ``render_fingerprint``, ``options``, ``has_rgb``, ``rgb_source``
(``dataset-preprocessed``: MVTec 3D-AD's image read again and preprocessed as the official reader
takes it; ``render-store``: the render store's ``rgb``).

Both: ``render_key`` uint64 (S,), ``done`` bool (S,).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from data_cache.errors import PadError
from data_cache.feature_store import (SCHEMA, TOKEN_BACKBONES, H5Store, H5Writer, check_same_extraction,
                                      features_dir, is_token_tag, plain_value, store_file)

POINT_TOKENS = "point-tokens"
IMAGE_TOKENS = "image-tokens"
KINDS = (POINT_TOKENS, IMAGE_TOKENS)
VLEN = {"points": np.float32, "point_pixel": np.int32, "point_of_render": np.int32}
DEFINING_ATTRS = ("kind", "backbone", "pretrained", "weights", "seed", "layers", "n_groups", "group_size", "dim",
                  "mode", "grid", "image_size", "has_rgb", "rgb_source")


def token_tag(backbone: str, pretrained: str, layers: Sequence[int], suffix: str) -> str:
    """``point-mae_random_L4-8-12_g1024x128``; a checkpoint path becomes its file stem."""
    weights = os.path.splitext(os.path.basename(pretrained))[0] if os.sep in pretrained or "." in pretrained \
        else pretrained
    weights = "".join(c if c.isalnum() or c in "-." else "-" for c in weights)
    return f"{backbone}_{weights}_L{'-'.join(str(l) for l in layers)}_{suffix}"


def list_token_tags(cache: str, kind: str | None = None) -> list[str]:
    """Tags of the token stores of a cache (of ``kind`` when given), sorted."""
    from data_cache.location import listdir
    tags = sorted(f[:-3] for f in listdir(features_dir(cache)) if f.endswith(".h5") and is_token_tag(f[:-3]))
    if kind is None:
        return tags
    return [t for t in tags if TOKEN_BACKBONES[t.split("_", 1)[0]] == kind]


def _check_attrs(attrs, path: str) -> None:
    schema = plain_value(attrs.get("pad_schema"))
    kind = plain_value(attrs.get("kind"))
    if schema != SCHEMA or kind not in KINDS:
        raise PadError(f"not a pad token store of schema {SCHEMA} (pad_schema {schema!r}, kind {kind!r})", path)


class TokenStore(H5Store):
    """Read access to one token store (see :class:`data_cache.feature_store.H5Store`: opened lazily,
    safe to pass to a worker, read in place behind a URL, ``done`` checked against the render store)."""

    WHAT = "token store"

    @classmethod
    def open(cls, cache: str, tag: str | None = None, kind: str | None = None, render=None) -> "TokenStore":
        """The store ``tag`` of ``cache``, or its only store of ``kind``; :class:`PadError` naming the
        fix when there is none, several, or the tag is of another kind."""
        tags = list_token_tags(cache, kind)
        what = f"{kind} store" if kind else "token store"
        backbone = {v: k for k, v in TOKEN_BACKBONES.items()}.get(kind, "point-mae|dino-vitb8")
        if tag is None:
            if not tags:
                raise PadError(f"no {what} in this cache; run 'pad extract-features --backbone {backbone}' first", cache)
            if len(tags) > 1:
                raise PadError(f"several {what}s ({', '.join(tags)}); name the one to use by its tag", cache)
            tag = tags[0]
        elif tag not in tags:
            raise PadError(f"no {what} with tag '{tag}' (available: {', '.join(tags) or 'none'})", cache)
        store = cls(store_file(cache, tag), render)
        store.file  # validate now
        return store

    @staticmethod
    def _check(attrs, path: str) -> None:
        _check_attrs(attrs, path)

    @property
    def kind(self) -> str:
        return str(plain_value(self.file.attrs["kind"]))

    def _need(self, name: str):
        if name not in self.file:
            raise PadError(f"the {self.kind} store has no '{name}'", self.path)
        return self.file[name]

    def tokens(self, i: int) -> np.ndarray:
        """(L, M, D) float32 (point-tokens) or (L, G*G, D) float32 (image-tokens)."""
        return self.file["tokens"][i]

    def centers(self, i: int) -> np.ndarray:
        """(M, 3) float32 group centres (input coordinates)."""
        return self._need("centers")[i]

    def curvature(self, i: int) -> np.ndarray:
        """(M,) float32."""
        return self._need("curvature")[i]

    def center_point(self, i: int) -> np.ndarray:
        """(M,) int32 index of each centre in :meth:`points`."""
        return self._need("center_point")[i]

    def points(self, i: int) -> np.ndarray:
        """(P, 3) float32 the network's input points."""
        return np.asarray(self._need("points")[i], dtype=np.float32).reshape(-1, 3)

    def point_pixel(self, i: int) -> np.ndarray:
        """(P,) int32 flat grid index of each input point, or (0,) for unorganized samples."""
        return np.asarray(self._need("point_pixel")[i], dtype=np.int32)

    def point_of_render(self, i: int) -> np.ndarray:
        """(N,) int32: for each render-store point of sample i, the input point whose score it takes."""
        return np.asarray(self._need("point_of_render")[i], dtype=np.int32)


def point_datasets(n_layers: int, n_groups: int, dim: int) -> dict:
    """name -> (row shape, dtype) of a point-tokens store; vlen datasets have shape None."""
    return {"tokens": ((n_layers, n_groups, dim), np.float32), "centers": ((n_groups, 3), np.float32),
            "curvature": ((n_groups,), np.float32), "center_point": ((n_groups,), np.int32),
            "n_points": ((), np.int32), "points": (None, np.float32), "point_pixel": (None, np.int32),
            "point_of_render": (None, np.int32)}


def image_datasets(n_layers: int, n_patches: int, dim: int) -> dict:
    return {"tokens": ((n_layers, n_patches, dim), np.float32)}


class TokenWriter(H5Writer):
    """The single writer of one token store (:class:`~data_cache.feature_store.H5Writer`)."""

    what = "token store"

    @classmethod
    def create_or_open(cls, path: str, attrs: dict, n_samples: int, datasets: dict) -> "TokenWriter":
        """Open (creating when absent, growing to ``n_samples`` rows when shorter) the store at ``path``.
        ``datasets``: :func:`point_datasets` / :func:`image_datasets`. An existing store must have the
        same ``render_fingerprint`` and :data:`DEFINING_ATTRS` and at most ``n_samples`` rows."""
        return cls._open_or_create(path, attrs, n_samples, datasets)

    def _check(self, attrs: dict, n_samples: int) -> None:
        _check_attrs(self.file.attrs, self.path)
        check_same_extraction(self.file, self.path, attrs, n_samples, DEFINING_ATTRS, "token store")

    def write_sample(self, i: int, arrays: dict, render_key: int) -> None:
        """Write row ``i``: every dataset of the store from ``arrays`` (vlen ones flattened), its
        render key, then ``done``."""
        f = self.file
        names = [k for k in f.keys() if k not in ("render_key", "done")]
        missing = [k for k in names if k not in arrays]
        if missing:
            raise ValueError(f"write_sample: missing {missing}")
        rows = {name: (np.ascontiguousarray(arrays[name], dtype=VLEN[name]).reshape(-1) if name in VLEN
                       else np.asarray(arrays[name], dtype=f[name].dtype)) for name in names}
        self._write_row(i, rows, render_key)
