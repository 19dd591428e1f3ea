"""Where a cache lives: a local (or shared) path, or an fsspec URL (``s3://bucket/cache``).

Every ``--cache`` (and the other cache options: ``--source``, ``--target``) goes through
:func:`check_location` once, in :func:`check_config`, before a command runs (``cli.invoke`` calls it
for every command): a local path passes as it is; ``file:///x`` becomes ``/x``; a URL passes when
fsspec knows its protocol and the package behind it is installed, and its bucket answers
(:func:`probe`: credentials and endpoint are checked there, with one line naming what is missing).
Anything that looks like a URL (``word:/...``) and is not one fsspec serves is refused in one
line, so no command ever makes a local directory named ``s3:``.

``--out`` and the other output paths (runs, results, images) are local paths: a URL there is refused
in one line (:data:`LOCAL_ONLY`).

Store code joins and lists through :func:`join`, :func:`filesystem`, :func:`exists` and
:func:`listdir`, which take either kind; :func:`remote_error` turns an object-store failure into
one :class:`PadError` line.
"""
from __future__ import annotations

import dataclasses
import os
import re

from data_cache.errors import PadError

#: ``scheme://``: an fsspec URL.
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: ``scheme:`` with a scheme of two letters or more: meant as a URL when a slash follows (``s3:/bucket``)
#: or the scheme is a protocol fsspec knows (``s3:bucket``); ``run:2`` stays a local name.
_URL_LIKE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")
#: Config fields that name a cache (read and written through fsspec when a URL).
CACHE_FIELDS = ("cache", "source", "target")
#: Config fields that name local outputs (runs, results, images): never a URL.
LOCAL_ONLY = ("out", "workdir", "checkpoint", "dataset", "file")
#: What to install for the protocols users meet most.
EXTRAS = {"s3": "pip install 'pad[s3]' (s3fs)", "s3a": "pip install 'pad[s3]' (s3fs)",
          "gs": "pip install gcsfs", "gcs": "pip install gcsfs", "az": "pip install adlfs",
          "abfs": "pip install adlfs"}
CREDENTIALS_HELP = ("s3fs needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, "
                    "~/.aws/credentials, an instance role), and AWS_ENDPOINT_URL for a server other than AWS")


def is_url(path: str) -> bool:
    """True for ``scheme://...`` (an fsspec URL), False for a local path."""
    return bool(_URL.match(str(path)))


def protocol(path: str) -> str | None:
    m = _URL.match(str(path))
    return m.group(1).lower() if m else None


def _known(scheme: str) -> bool:
    from fsspec.registry import known_implementations, registry
    return scheme.lower() in known_implementations or scheme.lower() in registry


def check_location(value: str, option: str = "--cache") -> str:
    """``value`` as pad uses it: a local path unchanged (``~`` expanded), ``file://`` URLs as local
    paths, other URLs without a trailing slash once fsspec can serve them; :class:`PadError` (one
    line) for a URL whose protocol fsspec does not know or whose package is missing, and for
    anything that looks like a URL and is not one."""
    value = str(value)
    proto = protocol(value)
    if proto is None:
        m = _URL_LIKE.match(value)
        if m and not os.path.exists(value) and (value[m.end():m.end() + 1] in ("/", "") or _known(m.group(1))):
            raise PadError(f"{option} {value}: looks like a URL but is not one (write {m.group(1)}://...), "
                           "or give a local path")
        return os.path.expanduser(value)
    if proto in ("file", "local"):
        return value[len(proto) + 3:] or "/"
    import fsspec
    try:
        fsspec.get_filesystem_class(proto)
    except ValueError:
        raise PadError(f"{option} {value}: fsspec knows no protocol '{proto}' "
                       "(a local path, or a URL such as s3://bucket/cache)") from None
    except ImportError as exc:
        hint = EXTRAS.get(proto) or " ".join(str(exc).split())
        raise PadError(f"{option} {value}: the '{proto}' filesystem is not installed; {hint}") from None
    return value.rstrip("/")


def check_local(value: str, option: str = "--out") -> str:
    """A local output path; :class:`PadError` for a URL (pad writes runs, results and images on a local
    or shared disk only) or anything that looks like one."""
    value = str(value)
    if is_url(value) and protocol(value) not in ("file", "local"):
        raise PadError(f"{option} {value}: must be a local (or shared) path; runs, results and images are "
                       "written to disk, only caches may live behind a URL")
    return check_location(value, option)


def check_config(config) -> object:
    """The config with every cache field checked (:func:`check_location`, reachability with
    :func:`probe`) and every local output field checked (:func:`check_local`). The one call for a
    command's config (``cli.invoke`` makes it)."""
    if not dataclasses.is_dataclass(config):
        return config
    changes = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not isinstance(value, str) or not value:
            continue
        flag = f.name.upper() if f.metadata.get("argument") else \
            "--" + (f.metadata.get("flag") or f.name.replace("_", "-"))
        if f.name in CACHE_FIELDS:
            checked = check_location(value, flag)
            if is_url(checked):
                probe(checked)
        elif f.name in LOCAL_ONLY:
            checked = check_local(value, flag)
        else:
            continue
        if checked != value:
            changes[f.name] = checked
    return dataclasses.replace(config, **changes) if changes else config


# ----------------------------------------------------------------------------- filesystem access
def filesystem(url: str):
    """``(fs, path)`` of an fsspec URL (the filesystem instance is cached by fsspec)."""
    from fsspec.core import url_to_fs
    return url_to_fs(url)


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a URL, ``os.path.join`` for a local path."""
    if is_url(base):
        return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
    return os.path.join(base, *parts)


def absolute(path: str) -> str:
    """A URL as it is, a local path made absolute (for records and for workers with another cwd)."""
    return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def same(a: str, b: str) -> bool:
    """Whether two locations name the same cache (URLs compared as written, local paths resolved)."""
    if is_url(a) or is_url(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def parent(path: str) -> str:
    """The directory holding ``path`` (URL-aware)."""
    if is_url(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.exists(path)
    fs, p = filesystem(path)
    try:
        return fs.exists(p)
    except Exception as exc:
        raise remote_error(exc, path) from None


def listdir(path: str) -> list[str]:
    """Names in a directory (empty when it does not exist)."""
    if not is_url(path):
        return os.listdir(path) if os.path.isdir(path) else []
    fs, p = filesystem(path)
    try:
        fs.invalidate_cache(p)
        return [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False)] if fs.isdir(p) else []
    except FileNotFoundError:
        return []
    except Exception as exc:
        raise remote_error(exc, path) from None


def size(path: str) -> int | None:
    """Bytes stored under ``path`` in an object store (files and 'directories' alike); None when absent."""
    fs, p = filesystem(path)
    try:
        fs.invalidate_cache(p)
        if not fs.exists(p):
            return None
        return int(fs.du(p, total=True))
    except Exception as exc:
        raise remote_error(exc, path) from None


def remove(path: str) -> None:
    """Delete one file or object (absent: nothing to do)."""
    if not is_url(path):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        return
    fs, p = filesystem(path)
    try:
        fs.rm(p)
    except FileNotFoundError:
        pass
    except Exception as exc:
        raise remote_error(exc, path) from None


def probe(url: str) -> None:
    """Ask the object store about ``url`` once: :class:`PadError` (one line) when its endpoint does not
    answer, credentials are missing or refused, or its bucket does not exist."""
    fs, p = filesystem(url)
    bucket = p.split("/", 1)[0]
    try:
        fs.invalidate_cache(bucket)
        found = fs.exists(bucket) if bucket != p else True
        if bucket != p:
            fs.ls(bucket, detail=False)
    except Exception as exc:
        raise remote_error(exc, url) from None
    if not found:
        raise PadError(f"no bucket '{bucket}' at this object store (create it first)", url)


def remote_error(exc: BaseException, url: str, doing: str = "") -> PadError:
    """One line for an object-store failure: credentials missing, access refused, endpoint unreachable,
    or the error's own text; ``doing`` (e.g. "uploading the feature store failed") leads the line."""
    if isinstance(exc, PadError):
        return exc
    reason = _reason(exc)
    return PadError(f"{doing}: {reason}" if doing else reason, url)


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    if name in ("NoCredentialsError", "PartialCredentialsError") or "locate credentials" in text:
        return f"no credentials for the object store ({text}); {CREDENTIALS_HELP}"
    if isinstance(exc, PermissionError) or name in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return f"the object store refused access ({name}: {text[:160]}); {CREDENTIALS_HELP}"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError",
                "ServerDisconnectedError") or isinstance(exc, (ConnectionError, TimeoutError)) \
            or "Could not connect" in text:
        return (f"the object store does not answer ({name}: {text[:160]}); check the endpoint "
                "(AWS_ENDPOINT_URL) and the network, then re-run: what is in the cache stays valid")
    return f"object store error ({name}: {text[:200]})"
