"""Property-based fuzzing of every ingest reader: damaged PLY/PCD/NPY/NPZ/XYZ/TXT files through
``read_cloud``, damaged MVTec 3D-AD (tiff/png) and Real3D-AD/Anomaly-ShapeNet (pcd + gt txt) samples
through ``load_sample``. Every case ends in a one-line PadError naming the file or a valid
Cloud/Sample, with a small peak allocation. The generators live in ``_fuzz_cases.py`` (shared with
``benchmarks/fuzz_readers.py``, which runs 10,000+ cases); the regression tests at the end pin the
bugs the fuzzer found."""
from __future__ import annotations

import struct
import time
import tracemalloc

import numpy as np
import pytest
from _fuzz_cases import (Case, RandomDraw, check_cloud, measure, mvtec_tree, npy_case, pcd_case, pcd_gt_tree,
                         ply_case, point_file_case, run_mvtec_case, run_pcd_gt_case, run_point_case, strategy,
                         text_case)
from hypothesis import HealthCheck, given, settings

from data_cache.errors import PadError
from pipeline.ingest import read_cloud

FUZZ = settings(deadline=None, database=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz"))


pytestmark = pytest.mark.filterwarnings("ignore")  # numpy/tifffile warnings about the damaged inputs


@pytest.fixture(scope="module", autouse=True)
def traced():
    """tracemalloc on for the module (peak allocation of each read)."""
    import trimesh  # noqa: F401  the mesh reader imports it lazily: once, here, not inside a measured case
    tracemalloc.start()
    yield
    tracemalloc.stop()


@settings(FUZZ, max_examples=200)
@given(case=strategy(point_file_case))
def test_read_cloud_on_damaged_files_gives_pad_error_or_valid_cloud(workdir, case):
    run_point_case(workdir, case)


@settings(FUZZ, max_examples=50)
@given(tree=strategy(mvtec_tree))
def test_load_sample_on_damaged_mvtec_samples(workdir, tree):
    run_mvtec_case(workdir, tree)


@settings(FUZZ, max_examples=50)
@given(tree=strategy(pcd_gt_tree))
def test_load_sample_on_damaged_real3d_and_shapenet_samples(workdir, tree):
    run_pcd_gt_case(workdir, tree)


# ---------------------------------------------------------------------------- huge declared sizes
SMALL = 4 << 20  # a 10^12-point header must not cost more than this


def _pcd(header_extra: str, points: int, data: str, body: bytes) -> bytes:
    return (f"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {points}\nHEIGHT 1\n"
            f"{header_extra}VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {points}\nDATA {data}\n").encode() + body


def _npy(shape, descr: str = "<f4", body: bytes = b"\0" * 48) -> bytes:
    text = repr({"descr": descr, "fortran_order": False, "shape": shape})
    text += " " * (64 - (11 + len(text)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + body


HUGE = 10 ** 12
HUGE_HEADERS = {
    "ply_binary": (".ply", b"ply\nformat binary_little_endian 1.0\nelement vertex %d\nproperty float x\n"
                           b"property float y\nproperty float z\nend_header\n" % HUGE + b"\0" * 48),
    "ply_ascii": (".ply", b"ply\nformat ascii 1.0\nelement vertex %d\nproperty float x\nproperty float y\n"
                          b"property float z\nend_header\n0 0 0\n" % HUGE),
    "ply_faces": (".ply", b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n"
                          b"property float y\nproperty float z\nelement face %d\n"
                          b"property list uchar int vertex_indices\nend_header\n" % HUGE + b"\0" * 40),
    "pcd_binary": (".pcd", _pcd("", HUGE, "binary", b"\0" * 48)),
    "pcd_ascii": (".pcd", _pcd("", HUGE, "ascii", b"0 0 0\n")),
    "pcd_compressed": (".pcd", _pcd("", HUGE, "binary_compressed", struct.pack("<II", 8, 12 * HUGE % 2 ** 32)
                                    + b"\0" * 8)),
    "npy": (".npy", _npy((HUGE, 3))),
    "npy_header_length": (".npy", b"\x93NUMPY\x02\x00" + struct.pack("<I", 2 ** 31) + b"{'descr'"),
}


@pytest.mark.parametrize("name", sorted(HUGE_HEADERS))
def test_header_declaring_a_trillion_points_is_refused_without_allocating(tmp_path, name):
    ext, data = HUGE_HEADERS[name]
    path = tmp_path / f"huge{ext}"
    path.write_bytes(data)
    out, peak = measure(read_cloud, str(path))
    assert isinstance(out, PadError), out
    assert path.name in str(out)
    assert peak < SMALL, f"{peak / 2 ** 20:.1f} MB"


def test_npz_member_declaring_a_trillion_points_is_refused_without_allocating(tmp_path):
    import zipfile
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("points.npy", _npy((HUGE, 3)))
    out, peak = measure(read_cloud, str(path))
    assert isinstance(out, PadError) and "huge.npz" in str(out)
    assert peak < SMALL


# ---------------------------------------------------------------------------- regressions found by fuzzing
def test_pcd_header_with_more_than_ten_lines_does_not_trigger_a_huge_decompression(tmp_path):
    """pypcd4 stops after 10 header lines and then takes the file as binary_compressed, reading
    the block sizes from the next line's bytes (here about 1 GB). The reader hands it the checked header."""
    body = np.arange(12, dtype=np.float32).reshape(4, 3)
    data = _pcd("COMMENTLESS extra line\n", 4, "binary", body.tobytes())
    path = tmp_path / "eleven.pcd"
    path.write_bytes(data)
    out, peak = measure(read_cloud, str(path))
    check_cloud(out)
    np.testing.assert_array_equal(out.points, body)
    assert peak < SMALL


def test_pcd_count_of_a_trillion_values_per_point_is_refused_quickly(tmp_path):
    path = tmp_path / "count.pcd"
    path.write_bytes(_pcd("", 2, "binary", b"\0" * 24).replace(b"COUNT 1 1 1", b"COUNT %d 1 1" % HUGE))
    t0 = time.perf_counter()
    out, peak = measure(read_cloud, str(path))
    assert isinstance(out, PadError) and "values per point" in str(out)
    assert time.perf_counter() - t0 < 5 and peak < SMALL


def test_npy_with_unknown_version_and_huge_header_length_is_refused(tmp_path):
    path = tmp_path / "version.npy"
    path.write_bytes(b"\x93NUMPY=\x00" + b"v\x00{'descr': '<f8'}" + b"\0" * 64)
    out, peak = measure(read_cloud, str(path))
    assert isinstance(out, PadError) and peak < SMALL


def test_binary_ply_list_claiming_four_billion_values_reads_only_the_file(tmp_path):
    path = tmp_path / "list.ply"
    path.write_bytes(b"ply\nformat binary_big_endian 1.0\nelement vertex 2\nproperty list uint float x\n"
                     b"property float y\nproperty float z\nend_header\n" + struct.pack(">I", 0xF0000000) + b"\0" * 40)
    out, peak = measure(read_cloud, str(path))
    assert isinstance(out, PadError) and peak < SMALL


def test_ply_element_without_properties_and_a_trillion_rows_is_refused_quickly(tmp_path):
    path = tmp_path / "empty_element.ply"
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                     b"property float z\nelement junk %d\nend_header\n" % HUGE + b"\0" * 12)
    t0 = time.perf_counter()
    out, _ = measure(read_cloud, str(path))
    assert isinstance(out, PadError) and time.perf_counter() - t0 < 5


def test_tiff_whose_data_cannot_be_decoded_is_a_pad_error(tmp_path):
    """A TIFF whose strip offsets point past the data decodes to an empty array (tifffile logs and
    returns nothing): a PadError, not numpy's reshape ValueError."""
    import io

    import tifffile

    from pipeline.ingest.organized import read_xyz_tiff
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ones((4, 5, 3), np.float32), photometric="rgb")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):  # StripOffsets -> past the end
        entry = ifd + 2 + 12 * k
        if struct.unpack_from("<H", data, entry)[0] == 273:
            struct.pack_into("<I", data, entry + 8, 10 ** 9)
    path = tmp_path / "xyz.tiff"
    path.write_bytes(bytes(data))
    with pytest.raises(PadError, match="xyz.tiff"):
        read_xyz_tiff(str(path))


def test_the_case_generators_make_valid_files_too(workdir):
    """The fuzzer is not only noise: undamaged cases of every format read as valid clouds."""
    valid = {}
    for gen in (ply_case, pcd_case, npy_case, text_case):
        valid[gen.__name__] = 0
        for seed in range(60):
            case = gen(RandomDraw(seed))
            assert isinstance(case, Case)
            outcome, _ = run_point_case(workdir, case)
            valid[gen.__name__] += outcome == "valid"
    assert all(v > 0 for v in valid.values()), valid
