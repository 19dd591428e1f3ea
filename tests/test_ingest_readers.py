"""Single-file point readers (``read_cloud``): every format, and every bad input a user can hand
them ending in a one-line PadError that names the file."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from _ingest_helpers import blob, lattice, write_pcd

from data_cache.errors import PadError
from data_cache.plyio import write_ply
from pipeline.ingest import Cloud, read_cloud


def _labels(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < 0.3).astype(np.uint8)


@pytest.mark.parametrize("encoding", ["ascii", "binary", "binary_compressed"])
@pytest.mark.parametrize("with_labels", [False, True])
def test_pcd_every_encoding_round_trips(tmp_path, encoding, with_labels):
    pts, labels = lattice(64, 1), _labels(64)
    path = write_pcd(tmp_path / "c.pcd", pts, labels if with_labels else None, encoding)
    cloud = read_cloud(path)
    assert isinstance(cloud, Cloud)
    assert cloud.points.dtype == np.float32 and cloud.points.shape == (64, 3)
    np.testing.assert_allclose(cloud.points, pts, atol=1e-6)
    if with_labels:
        assert cloud.labels.dtype == np.uint8
        np.testing.assert_array_equal(cloud.labels, labels)
    else:
        assert cloud.labels is None
    assert cloud.normals is None and cloud.n_dropped_nonfinite == 0


def test_pcd_pcl_normals_and_tolerant_ascii_spacing(tmp_path):
    pts = blob(5, 2)
    rows = "\n".join("  ".join(f"{v:.6f}" for v in (*p, *p)) + "  " for p in pts)
    header = ("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z normal_x normal_y normal_z\nSIZE 4 4 4 4 4 4\n"
              "TYPE F F F F F F\nCOUNT 1 1 1 1 1 1\nWIDTH 5\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 5\nDATA ascii\n")
    path = tmp_path / "n.pcd"
    path.write_text(header + rows + "\n")
    cloud = read_cloud(path)
    np.testing.assert_allclose(cloud.points, pts, atol=1e-6)
    np.testing.assert_allclose(cloud.normals, pts, atol=1e-6)


@pytest.mark.parametrize("with_labels", [False, True])
def test_ply_with_and_without_label_and_normals(tmp_path, with_labels):
    pts, labels = blob(50, 3), _labels(50, 1)
    path = tmp_path / "c.ply"
    write_ply(path, pts, normals=pts, labels=labels if with_labels else None)
    cloud = read_cloud(path)
    np.testing.assert_array_equal(cloud.points, pts)
    np.testing.assert_allclose(cloud.normals, pts)
    if with_labels:
        np.testing.assert_array_equal(cloud.labels, labels)
    else:
        assert cloud.labels is None


def test_ascii_ply_mesh_is_sampled_on_its_surface(tmp_path):
    path = tmp_path / "m.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                    "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
                    "0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    cloud = read_cloud(path, mesh_points=500)
    assert cloud.points.shape == (500, 3) and cloud.mesh.n_faces == 1 and cloud.mesh.n_vertices == 3
    x, y, z = cloud.points.T                                     # inside the triangle (0,0,0) (1,0,0) (0,1,0)
    assert (z == 0).all() and (x >= 0).all() and (y >= 0).all() and (x + y <= 1 + 1e-6).all()


@pytest.mark.parametrize("columns", [3, 4, 6, 7])
def test_npy_column_conventions(tmp_path, columns):
    pts, labels = blob(40, 4), _labels(40, 2)
    table = {3: pts, 4: np.c_[pts, labels], 6: np.c_[pts, pts], 7: np.c_[pts, pts, labels]}[columns]
    np.save(tmp_path / "c.npy", table.astype(np.float64))
    cloud = read_cloud(tmp_path / "c.npy")
    np.testing.assert_allclose(cloud.points, pts, atol=1e-7)
    assert (cloud.labels is not None) == (columns in (4, 7))
    if cloud.labels is not None:
        np.testing.assert_array_equal(cloud.labels, labels)
    assert (cloud.normals is not None) == (columns >= 6)


def test_six_columns_that_are_colours_are_not_normals(tmp_path):
    colours = np.random.default_rng(0).integers(0, 256, size=(30, 3))
    np.savetxt(tmp_path / "c.xyz", np.c_[blob(30, 5), colours])
    cloud = read_cloud(tmp_path / "c.xyz")
    assert cloud.normals is None and cloud.points.shape == (30, 3)


@pytest.mark.parametrize("keys", [("points", "label"), ("xyz", "labels"), ("points", None)])
def test_npz_keys(tmp_path, keys):
    pts, labels = blob(33, 6), _labels(33, 3)
    arrays = {keys[0]: pts}
    if keys[1]:
        arrays[keys[1]] = labels
    np.savez_compressed(tmp_path / "c.npz", **arrays, normals=pts)
    cloud = read_cloud(tmp_path / "c.npz")
    np.testing.assert_array_equal(cloud.points, pts)
    np.testing.assert_array_equal(cloud.normals, pts)
    if keys[1]:
        np.testing.assert_array_equal(cloud.labels, labels)
    else:
        assert cloud.labels is None


@pytest.mark.parametrize("sep", [" ", ",", ";", "\t"])
def test_text_tables_any_separator_with_header_and_comments(tmp_path, sep):
    pts, labels = blob(20, 7), _labels(20, 4)
    body = "\n".join(sep.join(f"{v:.7f}" for v in (*p, l)) for p, l in zip(pts, labels))
    path = tmp_path / "c.txt"
    path.write_text(f"# scanner output\n{sep.join(['x', 'y', 'z', 'label'])}\n{body}\n")
    cloud = read_cloud(path)
    np.testing.assert_allclose(cloud.points, pts, atol=1e-6)
    np.testing.assert_array_equal(cloud.labels, labels)


def test_xyz_three_columns(tmp_path):
    pts = blob(12, 8)
    np.savetxt(tmp_path / "c.xyz", pts)
    cloud = read_cloud(tmp_path / "c.xyz")
    np.testing.assert_allclose(cloud.points, pts, atol=1e-6)
    assert cloud.labels is None


def test_nonfinite_points_are_dropped_and_counted_with_their_labels(tmp_path):
    pts, labels = blob(10, 9).astype(np.float64), np.arange(10) % 2
    pts[2, 1] = np.nan
    pts[5, 0] = np.inf
    np.save(tmp_path / "c.npy", np.c_[pts, labels])
    cloud = read_cloud(tmp_path / "c.npy")
    assert cloud.n_dropped_nonfinite == 2 and cloud.points.shape == (8, 3)
    keep = np.ones(10, bool)
    keep[[2, 5]] = False
    np.testing.assert_array_equal(cloud.labels, labels[keep])
    assert np.isfinite(cloud.points).all()


# ----------------------------------------------------------------------------- bad inputs

def _raises(path, *fragments):
    with pytest.raises(PadError) as info:
        read_cloud(path)
    message = str(info.value)
    assert path.name in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_all_nonfinite_is_an_error(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((4, 3), np.nan))
    _raises(tmp_path / "nan.npy", "NaN")


@pytest.mark.parametrize("ext", [".npy", ".txt", ".ply", ".pcd"])
def test_empty_cloud(tmp_path, ext):
    path = tmp_path / f"empty{ext}"
    if ext == ".npy":
        np.save(path, np.zeros((0, 3), np.float32))
    elif ext == ".txt":
        path.write_text("# nothing\n")
    elif ext == ".ply":
        write_ply(path, np.zeros((0, 3)))
    else:
        path.write_text("VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 0\nHEIGHT 1\n"
                        "POINTS 0\nDATA ascii\n")
    _raises(path, "empty")


@pytest.mark.parametrize("ext", [".npy", ".npz", ".txt", ".xyz", ".ply", ".pcd"])
def test_zero_byte_file_says_empty_file(tmp_path, ext):
    path = tmp_path / f"nothing{ext}"
    path.write_bytes(b"")
    with pytest.raises(PadError) as info:
        read_cloud(path)
    assert str(info.value) == f"{path}: empty file"


def test_label_count_differs_from_point_count(tmp_path):
    np.savez(tmp_path / "c.npz", points=blob(10, 1), labels=np.zeros(9, np.uint8))
    _raises(tmp_path / "c.npz", "9 labels for 10 points")


@pytest.mark.parametrize("ext", [".ply", ".npy", ".pcd"])
def test_labels_outside_0_1(tmp_path, ext):
    pts, labels = blob(10, 1), np.array([0, 1, 2, 0, 0, 0, 0, 255, 0, 0], np.uint8)
    path = tmp_path / f"c{ext}"
    if ext == ".ply":
        write_ply(path, pts, labels=labels)
    elif ext == ".npy":
        np.save(path, np.c_[pts, labels])
    else:
        write_pcd(path, pts, labels)
    _raises(path, "outside {0, 1}")


@pytest.mark.parametrize("encoding", ["binary", "binary_compressed", "ascii"])
def test_truncated_pcd(tmp_path, encoding):
    path = write_pcd(tmp_path / "t.pcd", lattice(500, 1), encoding=encoding)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - len(data) // 3])
    _raises(path, "truncated" if encoding != "ascii" else "")


def test_pcd_header_declaring_huge_count_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.pcd"
    path.write_bytes(b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 4000000000\n"
                     b"HEIGHT 1\nPOINTS 4000000000\nDATA binary\n" + b"\0" * 48)
    _raises(path, "truncated", "4000000000")
    compressed = tmp_path / "huge_c.pcd"
    compressed.write_bytes(b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 1000000000\n"
                           b"HEIGHT 1\nPOINTS 1000000000\nDATA binary_compressed\n"
                           + struct.pack("<II", 10, 12_000_000_000 % 2**32) + b"\0" * 10)
    _raises(compressed)


def test_ply_header_declaring_huge_count_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.ply"
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 3000000000\nproperty float x\n"
                     b"property float y\nproperty float z\nend_header\n" + b"\0" * 24)
    _raises(path, "truncated")
    ascii_path = tmp_path / "huge_ascii.ply"
    ascii_path.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3000000000\nproperty float x\n"
                           b"property float y\nproperty float z\nend_header\n0 0 0\n")
    _raises(ascii_path, "truncated")


def test_npy_header_declaring_huge_shape_is_refused(tmp_path):
    path = tmp_path / "huge.npy"
    np.save(path, np.zeros((4, 3), np.float32))
    data = bytearray(path.read_bytes())
    header_end = data.index(b"\n") + 1
    header = data[:header_end].replace(b"(4, 3)", b"(9999999999, 3)")
    path.write_bytes(bytes(header) + data[header_end:])
    _raises(path, "truncated")


def test_truncated_ply_and_npz(tmp_path):
    write_ply(tmp_path / "t.ply", blob(100, 1))
    data = (tmp_path / "t.ply").read_bytes()
    (tmp_path / "t.ply").write_bytes(data[:-200])
    _raises(tmp_path / "t.ply", "truncated")
    np.savez(tmp_path / "t.npz", points=blob(100, 1))
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    _raises(tmp_path / "t.npz")


@pytest.mark.parametrize("ext", [".ply", ".pcd", ".npy", ".npz", ".txt", ".xyz"])
def test_garbage_bytes_give_a_pad_error(tmp_path, ext):
    path = tmp_path / f"garbage{ext}"
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, size=300, dtype=np.uint8)))
    _raises(path)


def test_wrong_shapes_unknown_extension_and_missing_file(tmp_path):
    np.save(tmp_path / "five.npy", np.zeros((4, 5)))
    _raises(tmp_path / "five.npy", "shape (4, 5)")
    np.savez(tmp_path / "nokey.npz", coords=np.zeros((4, 3)))
    _raises(tmp_path / "nokey.npz", "'points' or 'xyz'", "coords")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _raises(tmp_path / "obj.npy", "objects")
    (tmp_path / "c.fbx").write_text("v 0 0 0\n")
    _raises(tmp_path / "c.fbx", "unsupported file type '.fbx'")
    _raises(tmp_path / "missing.ply", "no such file")
    (tmp_path / "bad.txt").write_text("1 2 3\n4 5 oops\n")
    _raises(tmp_path / "bad.txt")
    (tmp_path / "ragged.txt").write_text("1 2 3\n4 5 6 7\n")
    _raises(tmp_path / "ragged.txt")
