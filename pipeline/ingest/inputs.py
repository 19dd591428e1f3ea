"""What the commands check about the files and directories a user names, before anything heavy
(a model, a Dask cluster, a renderer) is loaded, each problem on its own line naming the path:

- :func:`check_input_file`: a point or mesh file (``pad predict FILES``, and every reader): missing,
  a directory, not a regular file, no extension, an unsupported type, empty, unreadable;
- :func:`check_input_dir`: a directory of them (``pad render DATASET``, ``pad inspect``,
  ``pad synth --from``): missing, a file, unreadable;
- :func:`check_point_count` and :func:`dropped_line`: the one policy for degenerate clouds in
  synth, render (and inspect) and predict: rows with a NaN/Inf coordinate are dropped and one
  line says how many; a cloud left with fewer than ``MIN_CLOUD_POINTS`` points is refused.
"""
from __future__ import annotations

import errno
import os
import stat

from data_cache.errors import PadError

from .cloud import Cloud, MeshInfo
from .constants import MIN_CLOUD_POINTS
from .meshes import MESH_EXTENSIONS

#: Point files, by extension (``.ply`` with faces is a mesh, see :mod:`pipeline.ingest.meshes`).
CLOUD_EXTENSIONS = (".ply", ".pcd", ".npy", ".npz", ".xyz", ".txt")
#: Every file type pad reads as a cloud: point files and meshes.
POINT_EXTENSIONS = CLOUD_EXTENSIONS + MESH_EXTENSIONS
#: Organized scans (xyz grids), which pad predict reads for a run rendered with --style pointad.
ORGANIZED_EXTENSIONS = (".tiff", ".tif")


def kinds_text() -> str:
    """``point files (.ply .pcd ...) or meshes (.obj .stl .off .glb, .ply with faces)``."""
    return f"point files ({' '.join(CLOUD_EXTENSIONS)}) or meshes ({' '.join(MESH_EXTENSIONS)}, .ply with faces)"


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return (exc.strerror or type(exc).__name__).lower()


def check_input_file(path: str | os.PathLike, extensions: tuple[str, ...] = POINT_EXTENSIONS) -> None:
    """PadError, naming ``path``, when it is not a readable point or mesh file: missing (or a
    link to nothing), a directory, not a regular file, without an extension, of a type pad does not
    read (``extensions``: what the caller reads), empty, or unreadable. Reads at most one byte;
    imports nothing heavy."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        broken = os.path.islink(path)
        raise PadError("no such file" + (" (a symbolic link to a missing file)" if broken else ""), path) from None
    except OSError as exc:
        raise PadError(f"cannot be read: {_reason(exc)}", path) from None
    if stat.S_ISDIR(st.st_mode):
        raise PadError(f"is a directory; give the files in it, {kinds_text()}", path)
    if not stat.S_ISREG(st.st_mode):
        raise PadError("is not a regular file (a device, pipe or socket); give a point or mesh file", path)
    ext = os.path.splitext(path)[1].lower()
    if not ext:
        raise PadError(f"has no file extension; pad tells the format by it and reads {kinds_text()}", path)
    if ext not in extensions:
        hint = (" (an organized .tiff scan only for a run rendered with 'pad render --style pointad')"
                if ext in ORGANIZED_EXTENSIONS else "")
        raise PadError(f"unsupported file type {ext!r}; pad reads {kinds_text()}{hint}", path)
    if st.st_size == 0:
        raise PadError("empty file", path)
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.read(fd, 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PadError(f"cannot be read: {_reason(exc)}", path) from None


def check_input_dir(path: str | os.PathLike, what: str = "directory") -> None:
    """PadError, naming ``path``, when it is not a directory that can be listed: missing, a file
    (``what`` says what was expected, e.g. "dataset directory"), or unreadable."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise PadError(f"no such {what}", path)
    if not os.path.isdir(path):
        hint = " (to score single files: pad predict FILE... --checkpoint RUN)" if what == "dataset directory" else ""
        raise PadError(f"is a file, not a {what}{hint}", path)
    try:
        with os.scandir(path) as it:
            next(it, None)
    except OSError as exc:
        raise PadError(f"cannot list the {what}: {_reason(exc)}", path) from None


def check_point_count(path: str | os.PathLike, n_points: int) -> None:
    """PadError when a cloud has fewer than MIN_CLOUD_POINTS points (after dropping NaN/Inf rows)."""
    if n_points < MIN_CLOUD_POINTS:
        raise PadError(f"has {n_points} usable point{'s' if n_points != 1 else ''}; pad needs at least "
                       f"{MIN_CLOUD_POINTS} to render, score or place a defect", path)


def dropped_text(n: int, rows: int, mesh: MeshInfo | None = None) -> str | None:
    """The words of every line about NaN/Inf coordinates (None when ``n`` is 0): ``dropped 500 of
    35213 rows with NaN/Inf coordinates``, or for a mesh (``mesh``: its :class:`MeshInfo`), ``left
    out 3 of 1839 vertices with NaN/Inf coordinates and the 12 faces using them``."""
    if not n:
        return None
    if mesh is not None:
        return (f"left out {n} of {mesh.n_vertices} vertices with NaN/Inf coordinates and the "
                f"{mesh.n_faces_dropped} faces using them")
    return f"dropped {n} of {rows} rows with NaN/Inf coordinates"


def dropped_line(cloud: Cloud) -> str | None:
    """:func:`dropped_text` of a cloud as read."""
    rows = int(cloud.kept.shape[0]) if cloud.kept is not None else cloud.points.shape[0] + cloud.n_dropped_nonfinite
    return dropped_text(cloud.n_dropped_nonfinite, rows, cloud.mesh)
