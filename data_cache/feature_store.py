"""The feature store ``<cache>/features/<tag>.h5`` (HDF5). See DESIGN.md.

Attributes: ``pad_schema``, ``tag``, ``backbone``, ``pretrained``, ``layers`` (1-based block
indices), ``dpam_layers``, ``grid`` (patch grid side G), ``dim`` (D), ``image_size`` (model
input side), ``render_fingerprint``, ``options`` (JSON of the extract config).

Datasets (S samples, V views, L layers):
- ``global``      float16 (S, V, D)          class-token embeddings, L2-normalized
- ``patch``       float16 (S, V, L, G*G, D)  patch embeddings (DPAM path), one sample per chunk
- ``rgb_global``  float16 (S, D)             when the render store has ``rgb``
- ``rgb_patch``   float16 (S, L, G*G, D)     when the render store has ``rgb``
- ``done``        bool (S,)                  set (and flushed) after the sample's data
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from data_cache.errors import PadError

SCHEMA = 1
FEATURES_DIR = "features"


def feature_tag(backbone: str, pretrained: str, layers: Sequence[int], dpam_layers: int, image_size: int) -> str:
    """``ViT-L-14-336_openai_L24_dpam20_336``; a checkpoint path becomes its file stem."""
    weights = os.path.splitext(os.path.basename(pretrained))[0] if os.sep in pretrained or "." in pretrained \
        else pretrained
    weights = "".join(c if c.isalnum() or c in "-." else "-" for c in weights)
    return f"{backbone}_{weights}_L{'-'.join(str(l) for l in layers)}_dpam{dpam_layers}_{image_size}"


def features_dir(cache: str) -> str:
    return os.path.join(cache, FEATURES_DIR)


def list_tags(cache: str) -> list[str]:
    """Tags of the feature stores in a cache, sorted."""
    d = features_dir(cache)
    if not os.path.isdir(d):
        return []
    return sorted(f[:-3] for f in os.listdir(d) if f.endswith(".h5"))


def resolve_tag(cache: str, tag: str | None) -> str:
    """The given tag if it exists, or the only tag in the cache; :class:`PadError` otherwise."""
    tags = list_tags(cache)
    if tag is None:
        if len(tags) == 1:
            return tags[0]
        if not tags:
            raise PadError("no feature store in this cache; run 'pad extract-features' first", cache)
        raise PadError(f"several feature stores ({', '.join(tags)}); choose one with --features", cache)
    if tag not in tags:
        raise PadError(f"no feature store with tag '{tag}' (available: {', '.join(tags) or 'none'})", cache)
    return tag


class FeatureStore:
    """Read access to one feature store (open lazily, safe to pass to a worker)."""

    def __init__(self, path: str):
        self.path = path
        self._file = None

    @classmethod
    def open(cls, cache: str, tag: str | None = None) -> "FeatureStore":
        store = cls(os.path.join(features_dir(cache), resolve_tag(cache, tag) + ".h5"))
        store.file  # validate now
        return store

    @property
    def file(self):
        if self._file is None:
            import h5py
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise PadError(f"cannot open the feature store ({' '.join(str(exc).split())})", self.path) from None
            if self._file.attrs.get("pad_schema") != SCHEMA:
                raise PadError(f"not a pad feature store of schema {SCHEMA}", self.path)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    @property
    def tag(self) -> str:
        return os.path.basename(self.path)[:-3]

    @property
    def attrs(self) -> dict:
        out = {}
        for k, v in self.file.attrs.items():
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, np.generic):
                v = v.item()
            out[k] = v
        if isinstance(out.get("options"), str):
            out["options"] = json.loads(out["options"])
        return out

    @property
    def has_rgb(self) -> bool:
        return "rgb_global" in self.file

    def done(self) -> np.ndarray:
        """(S,) bool."""
        return np.asarray(self.file["done"][:], dtype=bool)

    def check_render_fingerprint(self, fingerprint: str) -> None:
        found = self.file.attrs.get("render_fingerprint")
        if isinstance(found, bytes):
            found = found.decode()
        if found != fingerprint:
            raise PadError(f"this feature store was extracted from another render store (fingerprint {found}, "
                           f"render store {fingerprint}); re-run 'pad extract-features'", self.path)

    def global_(self, i: int) -> np.ndarray:
        """(V, D) float16 global embeddings of sample ``i``."""
        return self.file["global"][i]

    def patch(self, i: int) -> np.ndarray:
        """(V, L, G*G, D) float16 patch embeddings of sample ``i``."""
        return self.file["patch"][i]

    def rgb_global(self, i: int) -> np.ndarray | None:
        """(D,) float16 or None."""
        return self.file["rgb_global"][i] if self.has_rgb else None

    def rgb_patch(self, i: int) -> np.ndarray | None:
        """(L, G*G, D) float16 or None."""
        return self.file["rgb_patch"][i] if self.has_rgb else None
