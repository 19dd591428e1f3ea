"""Opening the token feature stores (``kind`` point-tokens / image-tokens) for ``pad mutual``.

The stores and their reader belong to ``data_cache.token_store`` (``TokenStore``,
``list_token_tags``; schema in the README's cache contract). Until that module is merged on this
branch, :class:`_SpecTokenStore` reads the same schema (read-only h5py, the reader API of
/work/specs/musc-interface.md) so that ``pad mutual`` runs and is tested; when
``data_cache.token_store`` is importable it is used and this fallback is never touched.
"""
from __future__ import annotations

import json
import os

import numpy as np

from data_cache.errors import PadError

POINT_TOKENS = "point-tokens"
IMAGE_TOKENS = "image-tokens"


def _plain(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    return value


class _SpecTokenStore:
    """Read-only access to one token store (``<cache>/features/<tag>.h5``), the spec's reader API."""

    def __init__(self, path: str, render=None):
        import h5py

        self.path = path
        self.tag = os.path.basename(path)[:-3]
        try:
            self.file = h5py.File(path, "r")
        except OSError as exc:
            raise PadError(f"cannot open the token store ({' '.join(str(exc).split())})", path) from None
        self.attrs = {k: _plain(v) for k, v in self.file.attrs.items()}
        if isinstance(self.attrs.get("options"), str):
            self.attrs["options"] = json.loads(self.attrs["options"])
        self.kind = str(self.attrs.get("kind", "clip"))
        self.render = render

    @classmethod
    def open(cls, cache: str, tag: str | None = None, kind: str | None = None, render=None) -> "_SpecTokenStore":
        tags = _spec_list_tags(cache, kind)
        if tag is None:
            if len(tags) != 1:
                raise PadError(f"{'no' if not tags else 'several'} {kind or 'token'} store(s) in this cache"
                               + (f" ({', '.join(tags)}); choose one" if tags else ""), cache)
            tag = tags[0]
        elif tag not in tags:
            raise PadError(f"no {kind or 'token'} store with tag '{tag}' (available: {', '.join(tags) or 'none'})",
                           cache)
        return cls(os.path.join(cache, "features", tag + ".h5"), render)

    def done(self, render=None) -> np.ndarray:
        render = render if render is not None else self.render
        done = np.asarray(self.file["done"][:], bool)
        keys = np.asarray(self.file["render_key"][:], np.uint64)
        if render is None:
            return done
        rk = np.asarray(render.render_keys(), np.uint64)
        out = np.zeros(rk.shape[0], bool)
        m = min(rk.shape[0], done.shape[0])
        out[:m] = done[:m] & (keys[:m] == rk[:m]) & (rk[:m] != 0)
        return out

    def tokens(self, i: int) -> np.ndarray:
        return np.asarray(self.file["tokens"][i])

    def centers(self, i: int) -> np.ndarray:
        return np.asarray(self.file["centers"][i], np.float32)

    def curvature(self, i: int) -> np.ndarray:
        return np.asarray(self.file["curvature"][i], np.float32)

    def center_point(self, i: int) -> np.ndarray:
        return np.asarray(self.file["center_point"][i], np.int32)

    def points(self, i: int) -> np.ndarray:
        return np.asarray(self.file["points"][i], np.float32).reshape(-1, 3)

    def point_pixel(self, i: int) -> np.ndarray:
        return np.asarray(self.file["point_pixel"][i], np.int32)

    def point_of_render(self, i: int) -> np.ndarray:
        return np.asarray(self.file["point_of_render"][i], np.int32)

    def close(self) -> None:
        self.file.close()


def _spec_list_tags(cache: str, kind: str | None = None) -> list[str]:
    import h5py

    folder = os.path.join(cache, "features")
    if not os.path.isdir(folder):
        return []
    out = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".h5"):
            continue
        try:
            with h5py.File(os.path.join(folder, name), "r") as fh:
                found = str(_plain(fh.attrs.get("kind", "clip")))
        except OSError:
            continue
        if kind is None or found == kind:
            out.append(name[:-3])
    return out


def _api():
    try:
        from data_cache.token_store import TokenStore, list_token_tags
    except ImportError:
        return _SpecTokenStore, _spec_list_tags
    return TokenStore, list_token_tags


def token_tags(cache: str, kind: str) -> list[str]:
    """Tags of the cache's token stores of ``kind``, sorted."""
    return list(_api()[1](cache, kind))


def open_tokens(cache: str, kind: str, tag: str | None, render, fix: str, option: str = "--features"):
    """The cache's token store of ``kind`` (``tag``, or the only one); PadError naming ``fix`` (the
    command that writes one) when the cache has none, and one asking for a tag when it has several."""
    store_cls, _ = _api()
    tags = token_tags(cache, kind)
    if not tags:
        raise PadError(f"this cache has no {kind} store: run '{fix}' first", cache)
    if tag is None and len(tags) > 1:
        raise PadError(f"several {kind} stores ({', '.join(tags)}): choose one with {option}", cache)
    if tag is not None and tag not in tags:
        raise PadError(f"no {kind} store with tag '{tag}' (available: {', '.join(tags)})", cache)
    store = store_cls.open(cache, tag or tags[0], kind=kind, render=render)
    found = store.attrs.get("render_fingerprint")
    if found is not None and found != render.fingerprint:
        raise PadError(f"the {kind} store '{store.tag}' was extracted from another render store (fingerprint "
                       f"{found}, render store {render.fingerprint}); re-run '{fix}'", cache)
    return store
