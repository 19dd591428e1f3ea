"""Opening the token feature stores (``kind`` point-tokens / image-tokens, :mod:`data_cache.token_store`)
for ``pad mutual``, with one-line refusals that name the command writing the missing store."""
from __future__ import annotations

from data_cache.errors import PadError
from data_cache.token_store import IMAGE_TOKENS, POINT_TOKENS, TokenStore, list_token_tags

__all__ = ["IMAGE_TOKENS", "POINT_TOKENS", "open_tokens"]


def open_tokens(cache: str, kind: str, tag: str | None, render, fix: str, option: str = "--features") -> TokenStore:
    """The cache's token store of ``kind`` (``tag``, or the only one), checked to come from the cache's
    render store. PadError naming ``fix`` (the command that writes one) when the cache has none, asking
    for ``option`` when it has several, naming the tags for an unknown one."""
    tags = list_token_tags(cache, kind)
    if not tags:
        raise PadError(f"this cache has no {kind} store: run '{fix}' first", cache)
    if tag is None and len(tags) > 1:
        raise PadError(f"several {kind} stores ({', '.join(tags)}): choose one with {option}", cache)
    if tag is not None and tag not in tags:
        raise PadError(f"no {kind} store with tag '{tag}' (available: {', '.join(tags)})", cache)
    store = TokenStore.open(cache, tag or tags[0], kind=kind, render=render)
    found = store.attrs.get("render_fingerprint")
    if found is not None and found != render.fingerprint:
        raise PadError(f"the {kind} store '{store.tag}' was extracted from another render store (fingerprint "
                       f"{found}, render store {render.fingerprint}); re-run '{fix}'", cache)
    return store
