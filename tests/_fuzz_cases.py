"""Fuzz cases for the ingest readers (generators driven by hypothesis or a seeded RNG) and the checks
every outcome must pass.

A case is a small file (or a tiny dataset tree) that starts as a valid file of one format and is
then damaged in the ways real files are: random bytes, truncation, flipped and inserted bytes,
mutated PLY/PCD headers (element/point counts, property/field types, sizes and counts, encodings),
mutated NPY headers (shape, dtype), wrong column counts, NaN/Inf, labels outside {0, 1}, headers
declaring 10^12 points; meshes (OBJ, OFF, STL, GLB) with mutated counts and indices. Every case must end in a :class:`PadError` naming the file, or a valid
``Cloud``/``Sample``, with a small peak allocation (tracemalloc).

Shared by ``tests/test_fuzz_readers.py`` (a few hundred cases) and ``benchmarks/fuzz_readers.py``
(10,000+). Every file here is written by this module.
"""
from __future__ import annotations

import io
import os
import struct
import tracemalloc
import zipfile
from dataclasses import dataclass

import numpy as np

from data_cache.errors import PadError

#: Peak Python/numpy allocation allowed while reading one fuzz case (files are < 100 KB).
MAX_PEAK_BYTES = 48 << 20
HUGE_COUNTS = (10 ** 12, 2 ** 40, 2 ** 31, 2 ** 32 - 1, 2 ** 63 - 1)
PLY_TYPES = ("char", "uchar", "short", "ushort", "int", "uint", "float", "double", "int8", "uint8", "int16",
             "uint16", "int32", "uint32", "float32", "float64")
_PLY_NP = {"char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2", "int": "i4", "uint": "u4", "float": "f4",
           "double": "f8", "int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4",
           "uint32": "u4", "float32": "f4", "float64": "f8"}
_PCD_NP = {("F", 4): "f4", ("F", 8): "f8", ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("I", 1): "i1",
           ("I", 2): "i2", ("I", 4): "i4", ("F", 2): "f2", ("U", 8): "u8", ("I", 8): "i8"}


@dataclass
class Case:
    """One fuzz input: ``ext`` and the file's bytes; ``kind`` says how it was made;
    ``declared_bytes`` is what a reader trusting the header would allocate (0: unknown)."""
    ext: str
    data: bytes
    kind: str
    declared_bytes: int = 0


# ============================================================================ where choices come from
class Draw:
    """The choices a case generator makes. :class:`HypothesisDraw` (tests: hypothesis explores and
    shrinks) and :class:`RandomDraw` (benchmark: a seeded generator, thousands of cases a minute)."""

    def integers(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def choice(self, options):
        options = list(options)
        return options[self.integers(0, len(options) - 1)]

    def boolean(self) -> bool:
        return bool(self.integers(0, 1))

    def binary(self, lo: int, hi: int) -> bytes:
        raise NotImplementedError

    def text(self, max_size: int) -> str:
        return "".join(chr(self.integers(32, 0x2FF)) for _ in range(self.integers(0, max_size)))


class HypothesisDraw(Draw):
    def __init__(self, draw):
        from hypothesis import strategies as st
        self._draw, self._st = draw, st

    def integers(self, lo, hi):
        return self._draw(self._st.integers(lo, hi))

    def binary(self, lo, hi):
        return self._draw(self._st.binary(min_size=lo, max_size=hi))

    def text(self, max_size):
        return self._draw(self._st.text(max_size=max_size))


class RandomDraw(Draw):
    def __init__(self, seed: int):
        import random
        self._rng = random.Random(seed)

    def integers(self, lo, hi):
        return self._rng.randint(lo, hi)

    def binary(self, lo, hi):
        return self._rng.randbytes(self._rng.randint(lo, hi))


def strategy(generator):
    """A hypothesis strategy from a case generator ``generator(d: Draw)``."""
    from hypothesis import strategies as st
    return st.composite(lambda draw: generator(HypothesisDraw(draw)))()


# ============================================================================ base clouds
def base_cloud(d: Draw) -> dict:
    """A small cloud: ``points`` (n, 3) float64 with injected specials, ``labels`` (n,) float64 or
    None (sometimes outside {0, 1}), ``normals`` (n, 3) or None."""
    seed = d.integers(0, 2 ** 32 - 1)
    rng = np.random.default_rng(seed)
    n = d.choice((1, 2, 3, 5, 17, 64, 200))
    points = rng.normal(size=(n, 3)) * d.choice((1.0, 1e-3, 1e3, 1e30))
    special = d.choice(("none", "none", "nan", "inf", "all_nan", "zeros", "huge", "neg_zero"))
    if special == "nan":
        points[rng.integers(0, n, size=max(1, n // 4)), rng.integers(0, 3)] = np.nan
    elif special == "inf":
        points[rng.integers(0, n), rng.integers(0, 3)] = -np.inf
    elif special == "all_nan":
        points[:] = np.nan
    elif special == "zeros":
        points[:] = 0.0
    elif special == "huge":
        points[0, 0] = 1e300  # finite float64, inf as float32
    elif special == "neg_zero":
        points[:, 2] = -0.0
    label_kind = d.choice(("none", "binary", "binary", "bad", "nan"))
    labels = None
    if label_kind != "none":
        labels = (rng.random(n) < 0.3).astype(np.float64)
        if label_kind == "bad":
            labels[rng.integers(0, n)] = d.choice((2.0, -1.0, 0.5, 255.0, 1e9))
        elif label_kind == "nan":
            labels[rng.integers(0, n)] = np.nan
    normals = None
    if d.boolean():
        normals = rng.normal(size=(n, 3))
        if d.boolean():
            normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        if d.boolean():
            normals[0, 0] = np.nan
    return {"points": points, "labels": labels, "normals": normals, "n": n}


def _columns(cloud: dict) -> list[tuple[str, np.ndarray]]:
    cols = [("x", cloud["points"][:, 0]), ("y", cloud["points"][:, 1]), ("z", cloud["points"][:, 2])]
    if cloud["normals"] is not None:
        cols += [("nx", cloud["normals"][:, 0]), ("ny", cloud["normals"][:, 1]), ("nz", cloud["normals"][:, 2])]
    if cloud["labels"] is not None:
        cols.append(("label", cloud["labels"]))
    return cols


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    """Values as ``dtype`` without numpy's invalid-cast warnings (NaN -> 0 for integer types)."""
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        values = np.nan_to_num(values, nan=0.0, posinf=info.max, neginf=info.min)
        return np.clip(np.round(values), info.min, info.max).astype(dt)
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(dt)


def _fmt_value(v: float) -> str:
    return repr(float(v)) if np.isfinite(v) else ("nan" if np.isnan(v) else ("inf" if v > 0 else "-inf"))


# ============================================================================ byte-level damage
def damage(d: Draw, data: bytes) -> tuple[bytes, str]:
    """The bytes of a file, maybe damaged: truncated, bytes flipped/inserted/deleted, garbage."""
    how = d.choice(("none", "none", "truncate", "flip", "insert", "delete", "append", "random",
                    "empty", "zero_run"))
    n = len(data)
    if how == "none" or (n == 0 and how not in ("random", "append")):
        return data, "intact"
    if how == "truncate":
        k = d.integers(0, max(0, n - 1))
        return data[:k], "truncated"
    if how == "flip":
        out = bytearray(data)
        for _ in range(d.integers(1, 8)):
            out[d.integers(0, n - 1)] = d.integers(0, 255)
        return bytes(out), "flipped"
    if how == "insert":
        k = d.integers(0, n)
        return data[:k] + d.binary(1, 16) + data[k:], "inserted"
    if how == "delete":
        a = d.integers(0, n - 1)
        b = d.integers(a + 1, min(n, a + 64))
        return data[:a] + data[b:], "deleted"
    if how == "append":
        return data + d.binary(1, 64), "appended"
    if how == "zero_run":
        a = d.integers(0, n - 1)
        b = min(n, a + d.integers(1, 256))
        return data[:a] + bytes(b - a) + data[b:], "zeroed"
    if how == "empty":
        return b"", "empty"
    return d.binary(0, 512), "random"


# ============================================================================ PLY
def ply_case(d: Draw) -> Case:
    cloud = base_cloud(d)
    fmt = d.choice(("ascii", "binary_little_endian", "binary_big_endian"))
    cols = _columns(cloud)
    types = [d.choice(("float", "float", "double", "int", "uchar", "short")) if name != "label"
             else d.choice(("uchar", "int", "float", "char")) for name, _ in cols]
    n = cloud["n"]
    with_faces = d.boolean()
    faces = np.random.default_rng(n).integers(0, n, size=(min(n, 4), 3)) if with_faces else None
    header = ["ply", f"format {fmt} 1.0", "comment fuzz", f"element vertex {n}"]
    header += [f"property {t} {name}" for t, (name, _) in zip(types, cols)]
    if faces is not None:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    if fmt == "ascii":
        rows = [" ".join(_fmt_value(c[1][i]) if t in ("float", "double") else str(_cast(c[1][i:i + 1], _PLY_NP[t])[0])
                         for t, c in zip(types, cols)) for i in range(n)]
        body = ("\n".join(rows) + "\n").encode()
        if faces is not None:
            body += "".join(f"3 {a} {b} {c}\n" for a, b, c in faces).encode()
    else:
        order = "<" if fmt.endswith("little_endian") else ">"
        dtype = np.dtype([(name, order + _PLY_NP[t]) for t, (name, _) in zip(types, cols)])
        vertex = np.empty(n, dtype)
        for name, values in cols:
            vertex[name] = _cast(values, dtype[name].str)
        body = vertex.tobytes()
        if faces is not None:
            body += b"".join(struct.pack(order + "B3i", 3, *map(int, f)) for f in faces)
    # header mutations (the body stays as the original header describes it)
    declared = n * sum(np.dtype(_PLY_NP[t]).itemsize for t in types)
    for _ in range(d.integers(0, 3)):
        op = d.choice(("count", "type", "drop_prop", "dup_prop", "rename", "format", "no_end",
                       "huge_face", "list_prop", "crlf"))
        props = [k for k, line in enumerate(header) if line.startswith("property")]
        if op == "count":
            value = d.choice((0, -1, n + 1, max(0, n - 1), 2 * n, "abc", "1e3", "") + HUGE_COUNTS)
            header[3] = f"element vertex {value}"
            if isinstance(value, int) and value > 0:
                declared = max(declared, value * 12)
        elif op == "type" and props:
            k = d.choice(props)
            header[k] = f"property {d.choice(PLY_TYPES + ('bogus', 'float128'))} {header[k].split()[-1]}"
        elif op == "drop_prop" and props:
            del header[d.choice(props)]
        elif op == "dup_prop" and props:
            k = d.choice(props)
            header.insert(k, header[k])
        elif op == "rename" and props:
            k = d.choice(props)
            header[k] = " ".join(header[k].split()[:-1] + [d.choice(("q", "X", "label", "x", ""))])
        elif op == "format":
            fmt_word = d.choice(("ascii", "binary_little_endian", "binary_big_endian", "binary", "foo"))
            header[1] = f"format {fmt_word} 1.0"
        elif op == "no_end":
            header.append("comment no end")
        elif op == "huge_face":
            count = d.choice(HUGE_COUNTS)
            header += [f"element face {count}", "property list uchar int vertex_indices"]
            declared = max(declared, count * 13)
        elif op == "list_prop" and props:
            k = d.choice(props)
            header[k] = f"property list {d.choice(('uchar', 'int', 'float', 'uint'))} float {header[k].split()[-1]}"
        elif op == "crlf":
            header = [line + "\r" for line in header]
    sep = "\n"
    end = "" if header[-1].startswith("comment no end") else "end_header" + sep
    data = (sep.join(header) + sep + end).encode()
    data, how = damage(d, data + body)
    return Case(".ply", data, f"ply/{fmt}/{how}", declared)


# ============================================================================ PCD
def _lzf():
    import lzf  # pypcd4's dependency
    return lzf


def pcd_case(d: Draw) -> Case:
    cloud = base_cloud(d)
    encoding = d.choice(("ascii", "binary", "binary_compressed"))
    cols = _columns(cloud)
    names = {"nx": "normal_x", "ny": "normal_y", "nz": "normal_z"} if d.boolean() else {}
    fields = [names.get(name, name) for name, _ in cols]
    spec = [d.choice((("F", 4), ("F", 4), ("F", 8), ("I", 4), ("U", 1))) if name != "label"
            else d.choice((("U", 1), ("U", 4), ("F", 4), ("I", 4))) for name, _ in cols]
    n = cloud["n"]
    dtype = np.dtype([(f, "<" + _PCD_NP[s]) for f, s in zip(fields, spec)])
    table = np.empty(n, dtype)
    for f, (_, values) in zip(fields, cols):
        table[f] = _cast(values, dtype[f].str)
    if encoding == "ascii":
        body = ("\n".join(" ".join(_fmt_value(v) if s[0] == "F" else str(int(v)) for v, s in zip(row, spec))
                          for row in table.tolist()) + "\n").encode()
    elif encoding == "binary":
        body = table.tobytes()
    else:
        raw = b"".join(np.ascontiguousarray(table[f]).tobytes() for f in fields)
        comp = _lzf().compress(raw) or b""
        if not comp:
            encoding = "binary"
            body = table.tobytes()
        else:
            sizes = [len(comp), len(raw)]
            if d.integers(0, 4) == 0:  # a damaged block header
                sizes[d.integers(0, 1)] = d.choice((0, 1, 2 ** 31, 2 ** 32 - 1, len(raw) + 1))
            body = struct.pack("<II", *sizes) + comp
    header = {"VERSION": "0.7", "FIELDS": " ".join(fields), "SIZE": " ".join(str(s[1]) for s in spec),
              "TYPE": " ".join(s[0] for s in spec), "COUNT": " ".join("1" for _ in spec), "WIDTH": str(n),
              "HEIGHT": "1", "VIEWPOINT": "0 0 0 1 0 0 0", "POINTS": str(n), "DATA": encoding}
    declared = n * dtype.itemsize
    for _ in range(d.integers(0, 3)):
        key = d.choice(("FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "POINTS", "DATA",
                        "VERSION", "drop", "dup"))
        words = header.get(key, "").split()
        if key in ("WIDTH", "HEIGHT", "POINTS"):
            value = d.choice((0, -1, n + 1, max(0, n - 1), "x", "") + HUGE_COUNTS)
            header[key] = str(value)
            if key == "POINTS" and isinstance(value, int) and value > 0:
                declared = max(declared, value * dtype.itemsize)
        elif key == "DATA":
            header[key] = d.choice(("ascii", "binary", "binary_compressed", "binaryscompressed", "foo"))
        elif key == "VERSION":
            header[key] = d.choice(("0.7", ".7", "0.5", "x"))
        elif key == "drop":
            header.pop(d.choice(sorted(header)), None)
        elif key == "dup":
            k = d.choice(sorted(header))
            header[k] = header[k] + "\n" + k + " " + header[k]
        elif words:
            k = d.integers(0, len(words) - 1)
            op = d.choice(("replace", "drop", "add"))
            pool = {"FIELDS": ("x", "q", "label", "_", "normal_x", "rgb"),
                    "SIZE": ("0", "1", "2", "3", "4", "8", "16", "-1", "x"),
                    "TYPE": ("F", "U", "I", "X", "f", "?"),
                    "COUNT": ("0", "1", "2", "3", "-1", str(10 ** 12), "x")}[key]
            if op == "replace":
                words[k] = d.choice(pool)
            elif op == "drop":
                del words[k]
            else:
                words.insert(k, d.choice(pool))
            header[key] = " ".join(words)
            if key == "COUNT":
                try:
                    declared = max(declared, n * 4 * max(int(w) for w in words))
                except ValueError:
                    pass
    text = "# .PCD v0.7 - fuzz\n" + "".join(f"{k} {v}\n" for k, v in header.items())
    data, how = damage(d, text.encode() + body)
    return Case(".pcd", data, f"pcd/{encoding}/{how}", declared)


# ============================================================================ NPY / NPZ
def _npy_bytes(array: np.ndarray, descr: str | None = None, shape=None, fortran: bool = False) -> bytes:
    """An .npy file of ``array``'s bytes whose header may lie about ``descr`` and ``shape``."""
    header = {"descr": descr if descr is not None else np.lib.format.dtype_to_descr(array.dtype),
              "fortran_order": fortran, "shape": tuple(array.shape) if shape is None else shape}
    text = repr(header)
    pad = 64 - (10 + len(text) + 1) % 64
    text = (text + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + array.tobytes()


def npy_array(d: Draw, cloud: dict) -> tuple[bytes, int]:
    """(.npy bytes, declared bytes) of the cloud's table, maybe with a lying header."""
    cols = [c for _, c in _columns(cloud)]
    width = d.choice((len(cols), 3, 2, 5, 8))
    table = np.stack((cols + [c for _, c in _columns(cloud)] * 3)[:width], axis=1)
    dtype = d.choice(("<f4", "<f8", ">f8", "<f2", "<i4", "|u1", "|b1"))
    array = _cast(table, dtype)
    shape, descr = None, None
    declared = array.nbytes
    op = d.choice(("none", "none", "shape", "descr", "fortran", "1d", "3d"))
    if op == "shape":
        shape = (d.choice((0, 1, array.shape[0] + 1) + HUGE_COUNTS), array.shape[1])
        declared = max(declared, shape[0] * array.shape[1] * array.dtype.itemsize)
    elif op == "descr":
        descr = d.choice(("|O", "<U3", "<c8", "|V12", "<M8[s]", "[('x', '<f4'), ('y', '<f4')]",
                          "<f16", "|S4"))
    elif op == "1d":
        array = array.reshape(-1)
    elif op == "3d":
        shape = (array.shape[0], array.shape[1], 1)
    if descr is not None and descr.startswith("["):
        data = _npy_bytes(array, shape=shape).replace(repr(np.lib.format.dtype_to_descr(array.dtype)).encode(),
                                                      descr.encode(), 1)
    else:
        data = _npy_bytes(array, descr=descr, shape=shape, fortran=op == "fortran")
    return data, declared


def npy_case(d: Draw) -> Case:
    cloud = base_cloud(d)
    data, declared = npy_array(d, cloud)
    data, how = damage(d, data)
    return Case(".npy", data, f"npy/{how}", declared)


def npz_case(d: Draw) -> Case:
    cloud = base_cloud(d)
    members: dict[str, bytes] = {}
    declared = 0
    points_key = d.choice(("points", "xyz", "pts"))
    members[points_key], declared = npy_array(d, dict(cloud, labels=None, normals=None))
    if cloud["labels"] is not None:
        key = d.choice(("label", "labels"))
        labels = cloud["labels"]
        if d.boolean():
            labels = labels[: max(0, cloud["n"] - d.integers(0, 2))]
        members[key] = _npy_bytes(_cast(labels, d.choice(("|u1", "<i8", "<f4"))))
    if cloud["normals"] is not None:
        members["normals"] = _npy_bytes(_cast(cloud["normals"], "<f4"))
    if d.boolean():
        members["extra"] = d.binary(0, 64)
    buf = io.BytesIO()
    compression = d.choice((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED))
    with zipfile.ZipFile(buf, "w", compression=compression) as archive:
        for key, value in members.items():
            archive.writestr(f"{key}.npy", value)
    data, how = damage(d, buf.getvalue())
    return Case(".npz", data, f"npz/{how}", declared)


# ============================================================================ text tables
def text_case(d: Draw) -> Case:
    cloud = base_cloud(d)
    cols = _columns(cloud)
    sep = d.choice((" ", "\t", ",", ";", "  ", ", "))
    width = d.choice((len(cols), len(cols), 2, 5, 8))
    values = np.stack(([c for _, c in cols] * 3)[:width], axis=1)
    rows = [sep.join(_fmt_value(v) for v in row) for row in values]
    n = len(rows)
    for _ in range(d.integers(0, 3)):
        op = d.choice(("ragged", "token", "comment", "blank", "header", "bom", "crlf", "latin1", "nul"))
        k = d.integers(0, n - 1)
        if op == "ragged":
            rows[k] = sep.join(rows[k].split(sep)[: d.integers(0, width + 2)])
        elif op == "token":
            parts = rows[k].split(sep)
            parts[d.integers(0, len(parts) - 1)] = d.choice(
                ("nan", "NaN", "inf", "-Infinity", "1e400", "abc", "1,5", "0x10", "", "--1", "1e-400", "+.5"))
            rows[k] = sep.join(parts)
        elif op == "comment":
            rows.insert(k, "# " + d.text(20).replace("\n", " "))
        elif op == "blank":
            rows.insert(k, "")
        elif op == "header":
            rows.insert(0, sep.join(name for name, _ in cols))
        elif op == "bom":
            rows[0] = "\ufeff" + rows[0]
        elif op == "crlf":
            rows = [r + "\r" for r in rows]
        elif op == "latin1":
            rows[k] += "\xe9"
        elif op == "nul":
            rows[k] += "\x00"
    data = ("\n".join(rows) + "\n").encode("utf-8", "surrogatepass")
    data, how = damage(d, data)
    return Case(d.choice((".xyz", ".txt")), data, f"text/{how}", 0)


def random_file_case(d: Draw) -> Case:
    """Random bytes, sometimes behind a real magic, under any extension."""
    prefix = d.choice((b"", b"ply\n", b"ply\nformat ascii 1.0\n", b"# .PCD v0.7\n", b"\x93NUMPY\x01\x00",
                       b"PK\x03\x04", b"VERSION 0.7\nFIELDS x y z\n", b"OFF\n", b"solid x\n", b"glTF", b"v 0 0 0\n"))
    ext = d.choice((".ply", ".pcd", ".npy", ".npz", ".xyz", ".txt", ".obj", ".stl", ".off", ".glb"))
    return Case(ext, prefix + d.binary(0, 256), "random", 0)


# ============================================================================ meshes
def mesh_case(d: Draw) -> Case:
    """A small mesh (OBJ, OFF, ASCII or binary STL, GLB), its counts, indices or coordinates
    mutated (huge declared counts, indices out of range, NaN), then damaged like any file."""
    cloud = base_cloud(d)
    v = np.asarray(cloud["points"], np.float64)[:max(3, min(cloud["n"], 40))]
    if len(v) < 3:
        v = np.r_[v, np.eye(3)][:3]
    rng = np.random.default_rng(len(v))
    f = rng.integers(0, len(v), size=(d.integers(0, 12), 3))
    if d.boolean() and len(f):
        f[d.integers(0, len(f) - 1), d.integers(0, 2)] = d.choice((-1, len(v), 2 ** 31 - 1))
    ext = d.choice((".obj", ".off", ".stl", ".stl", ".glb"))
    declared = 0
    if ext == ".obj":
        text = "".join(f"v {_fmt_value(x)} {_fmt_value(y)} {_fmt_value(z)}\n" for x, y, z in v)
        text += "".join(f"f {' '.join(str(int(i) + 1) for i in face)}\n" for face in f)
        data = text.encode()
    elif ext == ".off":
        n_v, n_f = len(v), len(f)
        if d.boolean():
            n_v, n_f = d.choice(HUGE_COUNTS), d.choice((n_f, 2 ** 32 - 1))
        text = f"OFF\n{n_v} {n_f} 0\n" + "".join(f"{_fmt_value(x)} {_fmt_value(y)} {_fmt_value(z)}\n" for x, y, z in v)
        data = (text + "".join(f"3 {a} {b} {c}\n" for a, b, c in f)).encode()
    elif ext == ".stl":
        tri = v[np.clip(f, 0, len(v) - 1)] if len(f) else v[None, :3]
        if d.boolean():
            count = d.choice((len(tri), len(tri) + 1) + HUGE_COUNTS[2:4])
            declared = 50 * count if count > len(tri) else 0
            data = b"\0" * 80 + struct.pack("<I", count % 2 ** 32) + b"".join(
                struct.pack("<12fH", 0, 0, 0, *t.reshape(-1), 0) for t in tri.astype(np.float32))
        else:
            data = ("solid fuzz\n" + "".join(
                "facet normal 0 0 0\nouter loop\n" + "".join(f"vertex {_fmt_value(a)} {_fmt_value(b)} {_fmt_value(c)}\n"
                                                            for a, b, c in t) + "endloop\nendfacet\n"
                for t in tri) + "endsolid fuzz\n").encode()
    else:
        import trimesh
        faces = np.clip(f, 0, len(v) - 1) if len(f) else np.array([[0, 1, 2]])
        data = trimesh.Trimesh(np.nan_to_num(v), faces, process=False).export(file_type="glb")
    data, how = damage(d, data)
    return Case(ext, data, f"mesh{ext}/{how}", declared)


POINT_CASES = (ply_case, pcd_case, npy_case, npz_case, text_case, random_file_case, mesh_case)


def point_file_case(d: Draw) -> Case:
    """Any kind of point-file fuzz case."""
    return d.choice(POINT_CASES)(d)


# ============================================================================ checks
#: Seconds one case may take (a reader looping over a declared 10^12 elements is a bug too).
CASE_TIME_LIMIT = 20


class ReaderBug(AssertionError):
    """A case broke the reader contract; ``kind`` is ``exception`` (not a PadError), ``memory``
    (peak allocation), ``hang`` (time limit) or ``contract`` (invalid result or message)."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"[{kind}] {message}")
        self.kind = kind


class _Timeout(BaseException):
    pass


def measure(fn, *args):
    """(result or exception, peak traced bytes) of ``fn(*args)``; tracemalloc must be running.
    Runs under a SIGALRM time limit (:data:`CASE_TIME_LIMIT`) when called in the main thread."""
    import signal
    import threading

    def _alarm(signum, frame):
        raise _Timeout()

    use_alarm = threading.current_thread() is threading.main_thread()
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(CASE_TIME_LIMIT)
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        out = fn(*args)
    except _Timeout:
        out = ReaderBug("hang", f"still running after {CASE_TIME_LIMIT} s")
    except Exception as exc:  # classified by the caller
        out = exc
    finally:
        if use_alarm:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    return out, tracemalloc.get_traced_memory()[1] - base


def check_cloud(cloud) -> None:
    """A ``Cloud`` honours its contract (finite float32 points, labels in {0, 1} matching counts)."""
    from pipeline.ingest import Cloud
    assert isinstance(cloud, Cloud), type(cloud)
    p = cloud.points
    assert p.dtype == np.float32 and p.ndim == 2 and p.shape[1] == 3 and p.shape[0] >= 1, (p.dtype, p.shape)
    assert np.isfinite(p).all()
    n = p.shape[0]
    if cloud.labels is not None:
        assert cloud.labels.dtype == np.uint8 and cloud.labels.shape == (n,)
        assert set(np.unique(cloud.labels).tolist()) <= {0, 1}
    if cloud.normals is not None:
        assert cloud.normals.dtype == np.float32 and cloud.normals.shape == (n, 3)
        assert np.isfinite(cloud.normals).all()
    assert cloud.n_dropped_nonfinite >= 0


def check_sample(sample) -> None:
    """A ``Sample`` honours the ingest contract."""
    from pipeline.sample import Sample
    assert isinstance(sample, Sample), type(sample)
    p = sample.points
    assert p.dtype == np.float32 and p.ndim == 2 and p.shape[1] == 3 and p.shape[0] >= 1
    assert np.isfinite(p).all()
    n = p.shape[0]
    assert sample.point_labels.dtype == np.uint8 and sample.point_labels.shape == (n,)
    assert set(np.unique(sample.point_labels).tolist()) <= {0, 1}
    assert sample.label in (0, 1)
    if sample.normals is not None:
        assert sample.normals.dtype == np.float32 and sample.normals.shape == (n, 3)
        assert np.isfinite(sample.normals).all()
    if sample.grid_index is not None:
        h, w = sample.grid_shape
        gi = sample.grid_index
        assert gi.dtype == np.int32 and gi.shape == (n,)
        assert gi.min() >= 0 and gi.max() < h * w and np.unique(gi).size == n
    if sample.rgb is not None:
        assert sample.rgb.dtype == np.uint8 and sample.rgb.ndim == 3 and sample.rgb.shape[2] == 3


def classify(outcome, paths, peak: int, check) -> str:
    """"pad" or "valid" for an allowed outcome; :class:`ReaderBug` otherwise.
    ``paths``: the file (or files) the case is made of; a PadError must name one of them."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    path = os.fspath(paths[0])
    if isinstance(outcome, ReaderBug):
        raise ReaderBug(outcome.kind, f"{path}: {outcome}")
    if peak >= MAX_PEAK_BYTES:
        raise ReaderBug("memory", f"{path}: peak allocation {peak / 2 ** 20:.1f} MB")
    if isinstance(outcome, PadError):
        text = str(outcome)
        if "\n" in text:
            raise ReaderBug("contract", f"multi-line error: {text!r}")
        if not any(os.path.basename(os.fspath(p)) in text for p in paths):
            raise ReaderBug("contract", f"the error does not name the file: {text}")
        if "too large to read into memory" in text:
            raise ReaderBug("memory", f"a small file hit MemoryError: {text}")
        return "pad"
    if isinstance(outcome, BaseException):
        raise ReaderBug("exception", f"{path}: {type(outcome).__name__}: {outcome}") from outcome
    try:
        check(outcome)
    except AssertionError as exc:
        raise ReaderBug("contract", f"{path}: invalid result: {exc}") from exc
    return "valid"


# ============================================================================ dataset trees (load_sample)
GRID = 12


def _tiff_bytes(xyz: np.ndarray, compress: bool) -> bytes:
    import tifffile
    buf = io.BytesIO()
    tifffile.imwrite(buf, xyz, photometric="rgb" if xyz.ndim == 3 and xyz.shape[-1] == 3 else None,
                     compression="zlib" if compress else None)
    return buf.getvalue()


def _patch_tiff_dims(data: bytes, width: int, height: int) -> bytes:
    """Rewrite ImageWidth/ImageLength of the first IFD of a classic little-endian TIFF."""
    if data[:4] != b"II*\x00":
        return data
    out = bytearray(data)
    ifd = struct.unpack_from("<I", out, 4)[0]
    if ifd + 2 > len(out):
        return data
    for k in range(struct.unpack_from("<H", out, ifd)[0]):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(out):
            break
        tag, typ = struct.unpack_from("<HH", out, entry)
        if tag in (256, 257):
            value = width if tag == 256 else height
            if typ == 3:
                struct.pack_into("<H", out, entry + 8, min(value, 65535))
            elif typ == 4:
                struct.pack_into("<I", out, entry + 8, min(value, 2 ** 32 - 1))
    return bytes(out)


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def mvtec_tree(d: Draw) -> tuple[str, str, dict[str, bytes]]:
    """(split, defect, {relative path: bytes}) of one MVTec 3D-AD sample: ``xyz/000.tiff`` and maybe
    ``rgb/000.png``, ``gt/000.png`` (damaged, of the wrong size, shape or dtype, huge declared size)."""
    rng = np.random.default_rng(d.integers(0, 2 ** 32 - 1))
    h = d.choice((GRID, 1, 3))
    w = d.choice((GRID, 1, 5))
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    xyz = np.stack([cols * 0.01, rows * 0.01, 0.5 + 0.001 * rng.normal(size=(h, w))], axis=-1).astype(np.float32)
    xyz[h // 3: 2 * h // 3 + 1, w // 3: 2 * w // 3 + 1, 2] += 0.05
    special = d.choice(("none", "none", "zeros", "nan", "inf", "all_zero", "all_nan"))
    if special == "zeros":
        xyz[rng.random((h, w)) < 0.2] = 0
    elif special == "nan":
        xyz[rng.random((h, w)) < 0.2] = np.nan
    elif special == "inf":
        xyz[0, 0, 1] = np.inf
    elif special == "all_zero":
        xyz[:] = 0
    elif special == "all_nan":
        xyz[:] = np.nan
    shape_op = d.choice(("none", "none", "none", "gray", "rgba", "f64", "u8", "c64", "4d"))
    if shape_op == "gray":
        xyz = xyz[..., 2].copy()
    elif shape_op == "rgba":
        xyz = np.concatenate([xyz, xyz[..., :1]], axis=-1)
    elif shape_op == "f64":
        xyz = xyz.astype(np.float64)
    elif shape_op == "u8":
        xyz = _cast(xyz * 1000, "u1")
    elif shape_op == "c64":
        xyz = xyz.astype(np.complex64)
    elif shape_op == "4d":
        xyz = np.stack([xyz, xyz])
    try:
        tiff = _tiff_bytes(xyz, d.boolean())
    except Exception:  # tifffile refuses some of these; write the plain float32 grid then
        tiff = _tiff_bytes(np.zeros((h, w, 3), np.float32) + 0.5, False)
    if d.integers(0, 5) == 0:
        tiff = _patch_tiff_dims(tiff, d.choice((2 ** 31, 65535, w + 1, 0)), d.choice((2 ** 31, 65535, h + 1, 0)))
    tiff, _ = damage(d, tiff)
    split = d.choice(("train", "test"))
    defect = "good" if split == "train" else d.choice(("good", "hole"))
    files = {"xyz/000.tiff": tiff}
    if d.integers(0, 3):
        gh, gw = (h, w) if d.integers(0, 4) else (h + 1, w)
        mask = (rng.random((gh, gw)) < 0.3).astype(np.uint8) * d.choice((1, 255))
        if d.integers(0, 4) == 0:
            mask = np.stack([mask] * 3, axis=-1)
        gt, _ = damage(d, _png_bytes(mask))
        files["gt/000.png"] = gt
    if d.boolean():
        rh, rw = (h, w) if d.integers(0, 4) else (h, w + 2)
        rgb, _ = damage(d, _png_bytes(rng.integers(0, 255, size=(rh, rw, 3), dtype=np.uint8)))
        files["rgb/000.png"] = rgb
    return split, defect, files


def pcd_gt_tree(d: Draw) -> tuple[str, str, dict[str, bytes]]:
    """(format, stem, {relative path: bytes}) of one Real3D-AD / Anomaly-ShapeNet test sample: a
    ``.pcd`` (the gt's points, or a fuzzed PCD) and maybe a gt txt (rows x y z label), both maybe damaged."""
    fmt = d.choice(("real3d", "shapenet"))
    stem = d.choice(("bulge_1", "good_0", "positive_3"))
    rng = np.random.default_rng(d.integers(0, 2 ** 32 - 1))
    cloud = base_cloud(d)
    points = cloud["points"]
    n = points.shape[0]
    if d.integers(0, 3):
        arr = np.empty(n, np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4")]))
        for k, name in enumerate("xyz"):
            arr[name] = _cast(points[:, k], "<f4")
        header = (f"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {n}\nHEIGHT 1\n"
                  f"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA binary\n").encode()
        pcd, _ = damage(d, header + arr.tobytes())
    else:
        pcd = pcd_case(d).data
    files = {f"test/{stem}.pcd": pcd}
    if d.integers(0, 4):
        op = d.choice(("match", "match", "shuffle", "count", "labels", "perturb", "columns", "nan"))
        table = points.copy()
        labels = (rng.random(n) < 0.2).astype(np.float64)
        if op == "labels":
            labels[0] = d.choice((2.0, -1.0, 0.5))
        elif op == "nan":
            table[0, 0] = np.nan
        elif op == "shuffle":
            order = rng.permutation(n)
            table, labels = table[order], labels[order]
        elif op == "count":
            keep = d.integers(0, max(0, n - 1))
            table, labels = table[:keep], labels[:keep]
        elif op == "perturb":
            table = table + 1e-2
        body = np.c_[table, labels] if op != "columns" else table
        text = "\n".join(" ".join(_fmt_value(v) for v in row) for row in body) + "\n"
        data, _ = damage(d, text.encode())
        files[f"{'GT' if fmt == 'shapenet' else 'gt'}/{stem}.txt"] = data
    return fmt, stem, files


# ============================================================================ running one case
def _write_tree(root: str, files: dict[str, bytes]) -> None:
    import shutil
    if os.path.isdir(root):
        shutil.rmtree(root)
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)


def run_point_case(workdir: str, case: Case) -> tuple[str, int]:
    """Write ``case`` under ``workdir`` and read it with ``read_cloud``: ("pad"|"valid", peak bytes).
    AssertionError when the outcome breaks the contract. tracemalloc must be running."""
    from pipeline.ingest import read_cloud
    path = os.path.join(workdir, "case" + case.ext)
    with open(path, "wb") as fh:
        fh.write(case.data)
    outcome, peak = measure(read_cloud, path)
    return classify(outcome, path, peak, check_cloud), peak


def run_mvtec_case(workdir: str, tree) -> tuple[str, int]:
    """Write one MVTec sample tree and load it (``load_sample``); as :func:`run_point_case`."""
    from pipeline.ingest import discover, load_sample
    from pipeline.sample import SampleRef
    split, defect, files = tree
    root = os.path.join(workdir, "mvtec")
    group = os.path.join(root, "bagel", split, defect)
    _write_tree(root, {os.path.join("bagel", split, defect, rel): data for rel, data in files.items()})
    extra = tuple((role, os.path.join(group, rel)) for role, rel in (("gt", "gt/000.png"), ("rgb", "rgb/000.png"))
                  if rel in files)
    sid = f"{defect}_000" if split == "test" else "000"
    ref = SampleRef(id=f"bagel/{split}/{sid}", cls="bagel", split=split,
                    path=os.path.join(group, "xyz", "000.tiff"), format="mvtec3d", extra=extra)
    listed, _ = measure(discover, root)
    if not isinstance(listed, (tuple, PadError)):
        raise AssertionError(f"discover: {type(listed).__name__}: {listed}") from listed
    outcome, peak = measure(load_sample, ref)
    return classify(outcome, [ref.path] + [p for _, p in extra], peak, check_sample), peak


def run_pcd_gt_case(workdir: str, tree) -> tuple[str, int]:
    """Write one Real3D-AD / Anomaly-ShapeNet test sample and load it; as :func:`run_point_case`."""
    from pipeline.ingest import load_sample
    from pipeline.sample import SampleRef
    fmt, stem, files = tree
    root = os.path.join(workdir, fmt)
    _write_tree(root, {os.path.join("duck", rel): data for rel, data in files.items()})
    pcd = os.path.join(root, "duck", "test", stem + ".pcd")
    gt = [os.path.join(root, "duck", rel) for rel in files if rel.endswith(".txt")]
    ref = SampleRef(id=f"duck/test/{stem}", cls="duck", split="test", path=pcd, format=fmt,
                    extra=(("gt", gt[0]),) if gt else ())
    outcome, peak = measure(load_sample, ref)
    return classify(outcome, [pcd] + gt, peak, check_sample), peak
