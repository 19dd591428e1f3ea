"""A cache file written whole: HDF5 cannot be written in place on an object store (no partial writes,
no locks), so a feature store behind a URL is written as a local copy and uploaded when the writer
closes. See the README, "Caches on object storage".

:class:`StagedFile`: for a local path, the path itself (nothing is copied); for a URL, a copy in a
temporary directory (downloaded first when the object exists, so a rerun continues from it), then
:meth:`StagedFile.finish` uploads it as ``<url>.partial`` and moves that over ``<url>`` (a server-side
copy: readers see the old object or the new one, never a part), and removes the temporary directory.
A run that fails before the upload leaves the object as it was.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from data_cache.location import filesystem, is_url, remote_error

PARTIAL = ".partial"


class StagedFile:
    """``local``: where to write; ``path``: where the file lives (local path or URL).

    ``download``: copy an existing object first (False: start from nothing). ``direct``: upload straight
    to ``path`` (one PUT: an object store shows the object whole or not at all) instead of through
    ``<path>.partial``, for files nothing else writes (a worker's shard)."""

    def __init__(self, path: str, download: bool = True, direct: bool = False):
        self.path = path
        self.direct = direct
        self._tmp: str | None = None
        if not is_url(path):
            self.local = path
            return
        self._tmp = tempfile.mkdtemp(prefix="pad-staged-")
        self.local = os.path.join(self._tmp, path.rstrip("/").rsplit("/", 1)[-1])
        if download:
            fs, p = filesystem(path)
            try:
                fs.invalidate_cache(p)
                if fs.exists(p):
                    fs.get_file(p, self.local)
            except Exception as exc:
                self.discard()
                raise remote_error(exc, path) from None

    @property
    def remote(self) -> bool:
        return self._tmp is not None

    def finish(self, upload: bool = True) -> None:
        """Upload the local copy (when there is one and ``upload``), then remove it; a failed upload
        is one :class:`PadError` line and leaves the object as it was."""
        if self._tmp is None:
            return
        try:
            if upload and os.path.exists(self.local):
                fs, p = filesystem(self.path)
                try:
                    if self.direct:
                        fs.put_file(self.local, p)
                    else:
                        fs.put_file(self.local, p + PARTIAL)
                        fs.mv(p + PARTIAL, p)
                    fs.invalidate_cache(p)
                except Exception as exc:
                    raise remote_error(exc, self.path, "uploading the store failed (the copy in the "
                                                          "bucket is as it was)") from None
        finally:
            self.discard()

    def discard(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "StagedFile":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.finish()
