"""Readers of single point files: ``.ply .pcd .npy .npz .xyz .txt`` -> :class:`Cloud`, and of
meshes (``.obj .stl .off .glb``, ``.ply`` with faces), whose surface is sampled
(:mod:`pipeline.ingest.meshes`).

What each file may hold (besides ``x y z``):

- PLY (plyfile; ascii or binary): ``vertex`` element with ``x y z``, optional ``nx ny nz``,
  optional ``label`` (or ``labels``). With a ``face`` element of at least one face it is a
  mesh: its surface is sampled (the vertices' labels carry over to the points drawn near
  them); without faces it is the point cloud of its vertices.
- PCD (pypcd4; ascii, binary, binary_compressed): fields ``x y z``, optional normals
  ``normal_x normal_y normal_z`` (PCL) or ``nx ny nz``, optional ``label``.
- NPZ: points under key ``points`` or ``xyz``; labels under ``label`` or ``labels``;
  normals under ``normals``. A ``points`` array with more than 3 columns is split as an
  npy array is; the explicit keys win.
- NPY, XYZ, TXT: a (N, C) table, C = 3 (x y z), 4 (x y z label), 6 (x y z nx ny nz) or
  7 (x y z nx ny nz label). Text files: whitespace-, comma- or semicolon-separated
  (detected from the first data row), ``#`` comments, one optional header row. When the
  three columns after ``x y z`` are not unit vectors (e.g. ``r g b`` colours), they are
  ignored rather than taken as normals.

Before any reader, :func:`pipeline.ingest.inputs.check_input_file` says what is wrong with a
path that is missing, a directory, of an unknown type, empty or unreadable.
Every reader raises only :class:`PadError` naming the file: unreadable, truncated or
malformed files, a header that declares more data than the file can hold (checked
before anything is allocated), an empty cloud, a label count different from the point
count, labels outside {0, 1}. Rows with NaN/Inf coordinates are dropped and counted.
"""
from __future__ import annotations

import io
import os
import struct
import zipfile

import numpy as np

from data_cache.errors import PadError

from .cloud import Cloud, MeshInfo, fail, finish_cloud, wrap, check_labels
from .constants import (LZF_MAX_RATIO, MAX_COMPRESSION_RATIO, MESH_POINTS, MESH_SEED, MIN_ASCII_VALUE_BYTES,
                        PCD_MAX_VALUES_PER_POINT)
from .inputs import check_input_file
from .meshes import MESH_EXTENSIONS, Mesh, check_mesh_points, read_mesh_file, sample_mesh

_HEADER_LIMIT = 1 << 20  # bytes a PLY/PCD header may take


def read_cloud(path: str | os.PathLike, mesh_points: int = MESH_POINTS, seed: int = MESH_SEED) -> Cloud:
    """Read one point file (``.ply .pcd .npy .npz .xyz .txt``) or mesh (``.obj .stl .off .glb``,
    ``.ply`` with faces) into a checked :class:`Cloud`.

    A mesh is sampled: ``mesh_points`` points on its surface, area-weighted, drawn with ``seed``
    (:func:`pipeline.ingest.meshes.sample_mesh`); ``Cloud.mesh`` then says so.
    Returns ``points`` (N, 3) float32, ``labels`` (N,) uint8 or None, ``normals`` (N, 3)
    float32 or None and the number of rows dropped for non-finite coordinates.
    Raises :class:`PadError` (naming the file) for anything wrong with the file.
    """
    path = os.fspath(path)
    check_input_file(path)
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in MESH_EXTENSIONS:
            return _from_mesh(path, read_mesh_file(path), mesh_points, seed)
        parsed = _READERS[ext](path)
        if isinstance(parsed, Mesh):
            return _from_mesh(path, parsed, mesh_points, seed)
        return parsed
    except PadError:
        raise
    except MemoryError as exc:
        raise fail(path, "too large to read into memory") from exc
    except Exception as exc:  # any other third-party failure on a user's file
        raise wrap(path, f"the {ext} file", exc) from exc


def read_input(path: str | os.PathLike, mesh_points: int = MESH_POINTS) -> Cloud:
    """A cloud a command takes as input (``pad predict FILES``, ``pad synth --from``): :func:`read_cloud`
    (a mesh sampled with ``mesh_points`` points, seed ``MESH_SEED``) under pad's policy for degenerate
    clouds: NaN/Inf rows dropped (``dropped_line`` says how many), fewer than ``MIN_CLOUD_POINTS``
    points left refused (PadError naming the file)."""
    from .inputs import check_point_count

    cloud = read_cloud(path, mesh_points=mesh_points, seed=MESH_SEED)
    check_point_count(path, int(cloud.points.shape[0]))
    return cloud


def is_mesh_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is read as a mesh: an ``.obj .stl .off .glb`` file, or a PLY whose header
    declares at least one face (only the header is read). False for anything unreadable."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in MESH_EXTENSIONS:
        return True
    if ext != ".ply":
        return False
    try:
        with open(path, "rb") as fh:
            if fh.read(4).rstrip(b"\r\n") != b"ply":
                return False
            while fh.tell() < _HEADER_LIMIT:
                words = fh.readline(_HEADER_LIMIT).decode("ascii", "replace").split()
                if not words and fh.tell() >= os.fstat(fh.fileno()).st_size:
                    return False
                if words[:1] == ["end_header"]:
                    return False
                if words[:2] == ["element", "face"] and len(words) >= 3:
                    return words[2].isdigit() and int(words[2]) > 0
    except OSError:
        return False
    return False


def _from_mesh(path: str, mesh: Mesh, mesh_points: int, seed: int) -> Cloud:
    """A mesh's cloud: its surface sampled, or its vertices when it has no faces."""
    if not len(mesh.faces):
        return finish_cloud(path, mesh.vertices, mesh.vertex_labels)
    drawn = sample_mesh(path, mesh, check_mesh_points(mesh_points), seed)
    info = MeshInfo(n_vertices=drawn.n_vertices, n_faces=drawn.n_faces, n_points=int(drawn.points.shape[0]),
                    n_faces_dropped=drawn.n_faces_dropped)
    return Cloud(points=np.ascontiguousarray(drawn.points), labels=drawn.labels,
                 normals=np.ascontiguousarray(drawn.normals), n_dropped_nonfinite=drawn.n_bad_vertices, mesh=info)


# --------------------------------------------------------------------------- column tables

def _is_unit(vectors: np.ndarray) -> bool:
    """Whether (N, 3) ``vectors`` look like unit normals (median |norm - 1| < 0.05)."""
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    norms = norms[np.isfinite(norms)]
    return norms.size > 0 and float(np.median(np.abs(norms - 1.0))) < 0.05


def _split_columns(path: str, table: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(N, C) table -> points (N, 3), labels (N,) or None, normals (N, 3) or None (see module doc)."""
    if table.ndim != 2 or table.shape[1] not in (3, 4, 6, 7):
        raise fail(path, f"holds an array of shape {table.shape}; expected (N, 3) x y z, (N, 4) x y z label, "
                         "(N, 6) x y z nx ny nz or (N, 7) x y z nx ny nz label")
    if table.dtype.kind not in "biuf":
        raise fail(path, f"holds {table.dtype} values, expected numbers")
    c = table.shape[1]
    points = table[:, :3]
    labels = table[:, c - 1] if c in (4, 7) else None
    normals = table[:, 3:6] if c >= 6 else None
    if normals is not None and not _is_unit(normals):
        normals = None  # colours or other attributes, not normals
    return points, labels, normals


# --------------------------------------------------------------------------- text

def _text_layout(path: str) -> tuple[str | None, int]:
    """(delimiter, rows to skip) of a text table, from its first data row."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError as exc:
        raise wrap(path, "the file", exc) from exc
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")
        if "\x00" in text:
            raise fail(path, "is not a text file of points (binary content)")
    lines = text.splitlines()
    if len(head) == 65536 and lines:
        lines = lines[:-1]  # possibly cut in the middle
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        delimiter = "," if "," in stripped else (";" if ";" in stripped else None)
        tokens = [t for t in stripped.split(delimiter) if t.strip()]
        try:
            [float(t) for t in tokens]
        except ValueError:
            return delimiter, index + 1  # a header row such as "x y z label"
        return delimiter, index
    raise fail(path, "the point cloud is empty (no data rows)")


def _read_text(path: str) -> Cloud:
    delimiter, skip = _text_layout(path)
    try:
        table = np.loadtxt(path, delimiter=delimiter, comments="#", skiprows=skip, ndmin=2, dtype=np.float64)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise wrap(path, "the text table", exc) from exc
    if table.size == 0:
        raise fail(path, "the point cloud is empty (no data rows)")
    return finish_cloud(path, *_split_columns(path, table))


# --------------------------------------------------------------------------- npy / npz

def _npy_header(fh, path: str, what: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, nbytes) from an open .npy stream positioned at its start."""
    try:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
        # numpy reads as many header bytes as the length field says before checking it: check first
        length_format = "<H" if version == (1, 0) else "<I"
        raw = fh.read(struct.calcsize(length_format))
        if len(raw) != struct.calcsize(length_format):
            raise EOFError("the header is truncated")
        header_len = struct.unpack(length_format, raw)[0]
        if header_len > _HEADER_LIMIT:
            raise fail(path, f"{what} declares a {header_len}-byte header (damaged file?)")
        header = io.BytesIO(raw + fh.read(header_len))
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(header)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(header)
    except PadError:
        raise
    except Exception as exc:  # numpy raises ValueError/EOFError on garbage
        raise wrap(path, what, exc) from exc
    if dtype.hasobject:
        raise fail(path, f"{what} holds Python objects (pickled); only numeric arrays are read")
    return tuple(shape), dtype, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _read_npy(path: str) -> Cloud:
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as fh:
            shape, _, nbytes = _npy_header(fh, path, "the .npy array")
            if nbytes > size - fh.tell():
                raise fail(path, f"is truncated: its header declares an array of shape {shape} "
                                 f"({nbytes} bytes) but only {size - fh.tell()} bytes follow")
        table = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise wrap(path, "the .npy array", exc) from exc
    except ValueError as exc:
        raise wrap(path, "the .npy array", exc) from exc
    return finish_cloud(path, *_split_columns(path, table))


def _npz_member(path: str, archive: zipfile.ZipFile, key: str) -> np.ndarray:
    """Read ``key`` from an npz archive after checking its declared size."""
    info = archive.getinfo(f"{key}.npy")
    if info.file_size > max(info.compress_size, 1) * MAX_COMPRESSION_RATIO + (1 << 20):
        raise fail(path, f"array {key!r} declares {info.file_size} bytes from {info.compress_size} stored bytes "
                         "(implausible compression; damaged file?)")
    with archive.open(info) as fh:
        shape, _, nbytes = _npy_header(fh, path, f"array {key!r}")
        header_len = fh.tell()
    if nbytes > info.file_size - header_len:
        raise fail(path, f"array {key!r} is truncated: its header declares shape {shape} ({nbytes} bytes) "
                         f"but the member holds {info.file_size - header_len} bytes")
    with archive.open(info) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _read_npz(path: str) -> Cloud:
    try:
        with zipfile.ZipFile(path) as archive:
            keys = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
            points_key = next((k for k in ("points", "xyz") if k in keys), None)
            if points_key is None:
                raise fail(path, f"has no 'points' or 'xyz' array (arrays: {', '.join(sorted(keys)) or 'none'})")
            points, labels, normals = _split_columns(path, _npz_member(path, archive, points_key))
            label_key = next((k for k in ("label", "labels") if k in keys), None)
            if label_key is not None:
                labels = _npz_member(path, archive, label_key)
            if "normals" in keys:
                normals = _npz_member(path, archive, "normals")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, RuntimeError) as exc:
        raise wrap(path, "the .npz archive", exc) from exc
    return finish_cloud(path, points, labels, normals)


# --------------------------------------------------------------------------- PCD

def _pcd_header(path: str, fh) -> tuple[list[str], int]:
    """Header lines of a PCD (without comments) and the byte offset where its data starts."""
    lines: list[str] = []
    while True:
        raw = fh.readline(_HEADER_LIMIT)
        if not raw or fh.tell() > _HEADER_LIMIT:
            raise fail(path, "is not a PCD file or its header is truncated (no DATA line)")
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError as exc:
            raise fail(path, "is not a PCD file (binary bytes in the header)") from exc
        if not line or line.startswith("#"):
            continue
        lines.append(line)
        if line.upper().startswith("DATA"):
            return lines, fh.tell()


def _check_pcd_size(path: str, fh, metadata, size: int, offset: int) -> None:
    """Refuse a PCD whose header declares more data than the file holds (before reading)."""
    from pypcd4 import Encoding

    n = metadata.points
    if n == 0:
        raise fail(path, "the point cloud is empty (POINTS 0)")
    if sum(metadata.count) > PCD_MAX_VALUES_PER_POINT:
        raise fail(path, f"the header declares {sum(metadata.count)} values per point (COUNT "
                         f"{' '.join(map(str, metadata.count))[:60]}); damaged header?")
    try:
        itemsize = metadata.build_dtype().itemsize
    except Exception as exc:
        raise wrap(path, "the PCD header (unsupported SIZE/TYPE)", exc) from exc
    remaining = size - offset
    declared = n * itemsize
    if metadata.data == Encoding.BINARY:
        if declared > remaining:
            raise fail(path, f"is truncated: the header declares {n} points ({declared} bytes) "
                             f"but only {remaining} bytes follow")
    elif metadata.data in (Encoding.BINARY_COMPRESSED, Encoding.BINARYSCOMPRESSED):
        if remaining < 8:
            raise fail(path, "is truncated: the compressed block is missing")
        fh.seek(offset)
        compressed, uncompressed = struct.unpack("<II", fh.read(8))
        if uncompressed != declared:
            raise fail(path, f"the header declares {n} points ({declared} bytes) but the compressed block "
                             f"holds {uncompressed} bytes")
        if compressed > remaining - 8:
            raise fail(path, f"is truncated: the compressed block needs {compressed} bytes, "
                             f"{remaining - 8} follow")
        if uncompressed > compressed * LZF_MAX_RATIO + 1024:
            raise fail(path, f"declares {uncompressed} bytes from a {compressed}-byte compressed block "
                             "(implausible; damaged file?)")
    else:  # ascii
        values = sum(metadata.count)
        if n * values * MIN_ASCII_VALUE_BYTES - 1 > remaining:
            raise fail(path, f"is truncated: the header declares {n} points but only {remaining} bytes "
                             "of text follow")


def _pcd_ascii_fallback(path: str, offset: int, metadata) -> np.ndarray:
    """Whitespace-tolerant parse of an ASCII PCD body (pypcd4 expects single spaces)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        table = np.loadtxt(fh, dtype=np.float64, ndmin=2)
    columns = sum(metadata.count)
    if table.shape[1] != columns:
        raise ValueError(f"rows have {table.shape[1]} values, the header declares {columns}")
    names: list[str] = []
    for name, count in zip(metadata.fields, metadata.count):
        names += [name] if count == 1 else [f"{name}__{i:04d}" for i in range(count)]
    data = np.empty(table.shape[0], dtype=[(name, np.float64) for name in names])
    for i, name in enumerate(names):
        data[name] = table[:, i]
    return data


def _read_pcd(path: str) -> Cloud:
    from pypcd4 import Encoding, MetaData, PointCloud

    size = os.path.getsize(path)
    try:
        with open(path, "rb") as fh:
            lines, offset = _pcd_header(path, fh)
            try:
                metadata = MetaData.parse_header(lines)
            except Exception as exc:  # pydantic.ValidationError, ValueError
                raise fail(path, "invalid PCD header (needs FIELDS, SIZE, TYPE, COUNT, WIDTH, POINTS, DATA)") \
                    from exc
            _check_pcd_size(path, fh, metadata, size, offset)
            # pypcd4 reads at most 10 header lines and otherwise assumes binary_compressed (then
            # allocates whatever the next 8 bytes say): hand it the header as parsed and checked here
            fh.seek(offset)
            checked = io.BytesIO(metadata.compose_header().encode("ascii") + fh.read())
            try:
                data = PointCloud.from_fileobj(checked).pc_data
            except Exception as exc:
                if metadata.data != Encoding.ASCII:
                    raise wrap(path, f"the PCD ({metadata.data.value}) data", exc) from exc
                data = None
        if data is None:
            data = _pcd_ascii_fallback(path, offset, metadata)
    except OSError as exc:
        raise wrap(path, "the PCD file", exc) from exc
    except ValueError as exc:
        raise wrap(path, "the PCD data", exc) from exc
    if data.shape[0] != metadata.points:
        problem = "is truncated: " if data.shape[0] < metadata.points else ""
        raise fail(path, f"{problem}the header declares {metadata.points} points but the data holds "
                         f"{data.shape[0]}")
    names = set(data.dtype.names or ())
    if not {"x", "y", "z"} <= names:
        raise fail(path, f"has no x y z fields (fields: {' '.join(metadata.fields)})")
    points = np.stack([data["x"], data["y"], data["z"]], axis=1)
    normals = None
    for nx, ny, nz in (("normal_x", "normal_y", "normal_z"), ("nx", "ny", "nz")):
        if {nx, ny, nz} <= names:
            normals = np.stack([data[nx], data[ny], data[nz]], axis=1)
            break
    labels = data["label"] if "label" in names else None
    return finish_cloud(path, points, labels, normals)


# --------------------------------------------------------------------------- PLY

_PLY_SIZES = {"char": 1, "int8": 1, "uchar": 1, "uint8": 1, "short": 2, "int16": 2, "ushort": 2,
              "uint16": 2, "int": 4, "int32": 4, "uint": 4, "uint32": 4, "float": 4, "float32": 4,
              "double": 8, "float64": 8}


def _check_ply_size(path: str) -> None:
    """Refuse a PLY whose header declares more elements than the file can hold (before reading).

    Lower bound of the body size: binary, each element's fixed-size properties plus one
    length prefix per list; ASCII, two bytes per value.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        if fh.read(4).rstrip(b"\r\n") != b"ply":
            raise fail(path, "is not a PLY file (it does not start with 'ply')")
        fmt, need, current = None, 0, None  # current: [count, bytes per element, values per element]
        elements = []
        while True:
            raw = fh.readline(_HEADER_LIMIT)
            if not raw or fh.tell() > _HEADER_LIMIT:
                raise fail(path, "is a PLY file with a truncated header (no end_header)")
            words = raw.decode("ascii", "replace").split()
            if not words:
                continue
            key = words[0]
            if key == "format" and len(words) >= 2:
                fmt = words[1]
            elif key == "element" and len(words) >= 3:
                try:
                    current = [int(words[2]), 0, 0]
                except ValueError as exc:
                    raise fail(path, f"invalid PLY element line: {raw.decode('ascii', 'replace').strip()}") from exc
                elements.append(current)
            elif key == "property" and current is not None and len(words) >= 3:
                if words[1] == "list" and len(words) >= 5:
                    current[1] += _PLY_SIZES.get(words[2], 1)
                else:
                    current[1] += _PLY_SIZES.get(words[1], 1)
                current[2] += 1
            elif key == "end_header":
                break
        body = size - fh.tell()
    # an element without properties still takes a byte (binary: the loop over it must end; ascii: its line)
    if fmt == "ascii":
        need = sum(count * max(values * MIN_ASCII_VALUE_BYTES, 1) for count, _, values in elements) - 1
    else:
        need = sum(count * max(nbytes, 1) for count, nbytes, _ in elements)
    if need > body:
        raise fail(path, f"is truncated: its header declares {', '.join(str(e[0]) for e in elements)} "
                         f"element(s) needing at least {need} bytes, only {body} follow")


class _CappedReader(io.BufferedReader):
    """A file whose ``read(n)`` never asks for more than the file holds: plyfile reads a binary list
    in one ``read`` of the length the file claims (up to 2^32 values), which Python allocates first."""

    def __init__(self, path: str):
        super().__init__(io.FileIO(path, "rb"))
        self._limit = os.path.getsize(path)

    def read(self, size=-1):
        return super().read(size if size is None or size < 0 else min(size, self._limit))


def _read_ply_data(path: str, **kwargs):
    from plyfile import PlyData

    with _CappedReader(path) as stream:
        return PlyData.read(stream, **kwargs)


def _ply_faces(path: str, ply) -> np.ndarray | None:
    """(F, 3) int64 triangles of a PLY's ``face`` element (polygons fanned), or None without faces."""
    if "face" not in ply or ply["face"].count == 0:
        return None
    face = ply["face"].data
    key = next((k for k in ("vertex_indices", "vertex_index") if k in (face.dtype.names or ())), None)
    if key is None:
        raise fail(path, f"has a face element without vertex_indices (properties: {' '.join(face.dtype.names or ())})")
    from .meshes import triangulate

    return triangulate(face[key])


def _read_ply(path: str) -> Cloud | Mesh:
    from plyfile import PlyParseError

    try:
        _check_ply_size(path)
        try:  # triangle meshes: fixed-length face lists can be memory-mapped (fast)
            ply = _read_ply_data(path, known_list_len={"face": {"vertex_indices": 3, "vertex_index": 3}})
        except PlyParseError as exc:
            if "unexpected list length" not in str(exc):
                raise
            ply = _read_ply_data(path)
        if "vertex" not in ply:
            raise fail(path, f"has no 'vertex' element (elements: {' '.join(e.name for e in ply.elements)})")
        vertex = ply["vertex"].data
        names = set(vertex.dtype.names or ())
        if not {"x", "y", "z"} <= names:
            raise fail(path, f"has no x y z vertex properties (properties: {' '.join(sorted(names))})")
        points = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1)
        normals = (np.stack([vertex["nx"], vertex["ny"], vertex["nz"]], axis=1)
                   if {"nx", "ny", "nz"} <= names else None)
        label_key = next((k for k in ("label", "labels") if k in names), None)
        labels = np.array(vertex[label_key]) if label_key else None
        faces = _ply_faces(path, ply)
        del ply, vertex
    except (PlyParseError, OSError, ValueError, IndexError, KeyError, TypeError, EOFError) as exc:
        raise wrap(path, "the PLY file", exc) from exc
    if faces is not None:
        if not points.shape[0]:
            raise fail(path, "the mesh has faces but no vertices")
        return Mesh(np.asarray(points, np.float64), faces,
                    None if labels is None else check_labels(path, labels, points.shape[0]))
    return finish_cloud(path, points, labels, normals)


_READERS = {".ply": _read_ply, ".pcd": _read_pcd, ".npy": _read_npy, ".npz": _read_npz,
            ".xyz": _read_text, ".txt": _read_text}
