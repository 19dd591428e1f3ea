"""Meshes as input: OBJ, STL, OFF, GLB and PLY with faces are sampled on their surface (area-weighted,
seeded, ``--mesh-points``) wherever a cloud is read; a PLY without faces stays a point cloud; the
sampling is part of a rendered mesh sample's identity.

References are written out by hand: a 1 × 2 × 3 box (its six faces' areas known), two triangles of
areas 1 and 3, files written byte by byte (OBJ, OFF, binary STL) or by plyfile; only GLB, a binary
container, is written with trimesh."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # before anything imports OpenGL

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from plyfile import PlyData, PlyElement  # noqa: E402

import cli  # noqa: E402
from _render_job_helpers import blob  # noqa: E402
from data_cache.errors import PadError  # noqa: E402
from data_cache.plyio import write_ply  # noqa: E402
from pipeline.ingest import MESH_POINTS, discover, is_mesh_file, load_sample, read_cloud  # noqa: E402
from pipeline.ingest.meshes import sample_surface  # noqa: E402

HALF = np.array([0.5, 1.0, 1.5])                         # the box spans [-HALF, HALF]: sides 1, 2, 3
CORNERS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float) * HALF
# two triangles per side, corners indexed as above (bit 2: x, bit 1: y, bit 0: z)
FACES = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5],     # x = -0.5, x = +0.5
                  [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],     # y = -1,   y = +1
                  [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])    # z = -1.5, z = +1.5
AREA = {0: 2 * 3, 1: 1 * 3, 2: 1 * 2}                    # area of a side facing axis k


def _obj(path):
    lines = [f"v {x} {y} {z}" for x, y, z in CORNERS] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in FACES]
    path.write_text("mtllib materials.mtl\n" + "\n".join(lines) + "\n")


def _off(path):
    lines = ["OFF", f"{len(CORNERS)} {len(FACES)} 0"] + [f"{x} {y} {z}" for x, y, z in CORNERS]
    path.write_text("\n".join(lines + [f"3 {a} {b} {c}" for a, b, c in FACES]) + "\n")


def _stl(path):
    body = b"".join(struct.pack("<12fH", 0, 0, 0, *CORNERS[a], *CORNERS[b], *CORNERS[c], 0) for a, b, c in FACES)
    path.write_bytes(b"\0" * 80 + struct.pack("<I", len(FACES)) + body)


def _glb(path):
    import trimesh
    trimesh.Trimesh(CORNERS, FACES, process=False).export(path)


def _ply(path, vertices=CORNERS, faces=FACES, labels=None):
    dtype = [("x", "f4"), ("y", "f4"), ("z", "f4")] + ([("label", "u1")] if labels is not None else [])
    v = np.empty(len(vertices), dtype)
    v["x"], v["y"], v["z"] = np.asarray(vertices).T
    if labels is not None:
        v["label"] = labels
    elements = [PlyElement.describe(v, "vertex")]
    if faces is not None:
        f = np.empty(len(faces), [("vertex_indices", "i4", (3,))])
        f["vertex_indices"] = faces
        elements.append(PlyElement.describe(f, "face"))
    PlyData(elements).write(str(path))


WRITERS = {".obj": _obj, ".off": _off, ".stl": _stl, ".glb": _glb, ".ply": _ply}


def _on_box(points: np.ndarray) -> np.ndarray:
    """(n,) int: the axis whose side each point lies on (-1 where it is on none)."""
    on = np.isclose(np.abs(points), HALF, atol=1e-5) & (np.abs(points) <= HALF + 1e-5).all(axis=1, keepdims=True)
    return np.where(on.any(axis=1), on.argmax(axis=1), -1)


@pytest.mark.parametrize("ext", sorted(WRITERS))
def test_each_mesh_type_is_sampled_on_its_surface_by_area(tmp_path, ext):
    path = tmp_path / f"box{ext}"
    WRITERS[ext](path)
    assert is_mesh_file(path)
    n = 12000
    cloud = read_cloud(path, mesh_points=n)
    assert cloud.points.shape == (n, 3) and cloud.points.dtype == np.float32
    assert (cloud.mesh.n_faces, cloud.mesh.n_points) == (12, n) and cloud.kept is None
    side = _on_box(cloud.points)
    assert (side >= 0).all(), "every point lies on the box's surface"
    total = 2 * sum(AREA.values())
    for k, area in AREA.items():                        # each side's share is its area's share (binomial, 5 sigma)
        p = 2 * area / total
        assert abs((side == k).mean() - p) < 5 * np.sqrt(p * (1 - p) / n), k
    normals = cloud.normals.astype(np.float64)
    assert np.allclose(np.abs(normals[np.arange(n), side]), 1.0, atol=1e-6)   # the face's own normal
    again = read_cloud(path, mesh_points=n)
    assert np.array_equal(again.points, cloud.points)   # seeded: the same cloud every time
    assert not np.array_equal(read_cloud(path, mesh_points=n, seed=1).points, cloud.points)


def test_area_weighting_and_uniformity_against_two_triangles():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [10, 0, 0], [13, 0, 0], [10, 2, 0]], float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])           # areas 1 and 3
    n = 40000
    points, normals, face, bary = sample_surface(vertices, faces, n, seed=0)
    big = points[:, 0] >= 10
    assert np.array_equal(big, face == 1)
    assert abs(big.mean() - 0.75) < 5 * np.sqrt(0.75 * 0.25 / n)
    # uniform inside a triangle: the mean point is its centroid (std of a coordinate < 1, so 5 sigma < 0.025)
    for f in (0, 1):
        centroid = vertices[faces[f]].mean(axis=0)
        assert np.abs(points[face == f].mean(axis=0) - centroid).max() < 0.025
    # inside: x >= x0, y >= 0 and x/w + y/2 <= 1 for each triangle (w = 1 and 3)
    for f, (x0, w) in enumerate(((0, 1), (10, 3))):
        p = points[face == f]
        assert (p[:, 0] >= x0 - 1e-9).all() and (p[:, 1] >= -1e-9).all()
        assert ((p[:, 0] - x0) / w + p[:, 1] / 2 <= 1 + 1e-9).all()
    assert np.allclose(np.abs(normals[:, 2]), 1) and np.allclose(bary.sum(axis=1), 1)


def test_a_ply_without_faces_stays_a_point_cloud_and_vertex_labels_carry_over(tmp_path):
    _ply(tmp_path / "points.ply", faces=None)
    assert not is_mesh_file(tmp_path / "points.ply")
    cloud = read_cloud(tmp_path / "points.ply")
    assert cloud.mesh is None and np.allclose(cloud.points, CORNERS)
    # two separate triangles, the second one's corners labelled: exactly the points drawn on it are anomalous
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 0, 0], [6, 0, 0], [5, 1, 0]], float)
    _ply(tmp_path / "labelled.ply", vertices, [[0, 1, 2], [3, 4, 5]], labels=[0, 0, 0, 1, 1, 1])
    cloud = read_cloud(tmp_path / "labelled.ply", mesh_points=500)
    assert np.array_equal(cloud.labels, (cloud.points[:, 0] >= 5).astype(np.uint8)) and cloud.labels.any()


def test_an_obj_of_vertices_only_is_its_points_and_bad_meshes_are_one_line(tmp_path):
    (tmp_path / "v.obj").write_text("".join(f"v {x} {y} {z}\n" for x, y, z in CORNERS))
    cloud = read_cloud(tmp_path / "v.obj")
    assert cloud.mesh is None and cloud.points.shape == (8, 3)
    (tmp_path / "flat.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    with pytest.raises(PadError, match="every face has zero area"):
        read_cloud(tmp_path / "flat.obj")
    _ply(tmp_path / "outside.ply", faces=[[0, 1, 9]])
    with pytest.raises(PadError, match="outside 0..7"):
        read_cloud(tmp_path / "outside.ply")
    (tmp_path / "short.stl").write_bytes(b"\0" * 80 + struct.pack("<I", 10 ** 9) + b"\0" * 100)
    with pytest.raises(PadError, match="truncated: its header declares 1000000000 triangles"):
        read_cloud(tmp_path / "short.stl")
    with pytest.raises(PadError, match="--mesh-points must be between 64 and"):
        read_cloud(tmp_path / "outside.ply", mesh_points=10)


def test_nan_vertices_leave_their_faces_out_with_one_line(tmp_path):
    from pipeline.ingest import dropped_line
    vertices = CORNERS.copy()
    vertices[7] = np.nan                                 # corner 7 is used by 6 of the 12 faces
    _ply(tmp_path / "nan.ply", vertices)
    cloud = read_cloud(tmp_path / "nan.ply", mesh_points=2000)
    assert np.isfinite(cloud.points).all() and cloud.mesh.n_faces == 6 and cloud.mesh.n_faces_dropped == 6
    assert dropped_line(cloud) == "left out 1 of 8 vertices with NaN/Inf coordinates and the 6 faces using them"


def test_meshes_in_the_generic_layout_are_listed_inspected_and_rendered_as_their_sampled_surface(tmp_path):
    from distributed import Client

    from data_cache.render_store import RenderStore
    from pipeline.options import RenderConfig
    from pipeline.render_job import identify, plan_render, render_dataset

    data, cache = tmp_path / "data", tmp_path / "cache"
    for split in ("train", "test"):
        (data / "box" / split).mkdir(parents=True)
    _obj(data / "box" / "train" / "a.obj")
    _stl(data / "box" / "test" / "b.stl")
    pts, labels = blob(300, 1, anomalous=True)
    write_ply(data / "box" / "test" / "c.ply", pts, labels=labels)
    fmt, refs = discover(str(data), mesh_points=500)
    assert fmt == "generic" and [r.id for r in refs] == ["box/test/b", "box/test/c", "box/train/a"]
    assert load_sample(refs[0]).n_points == 500 and load_sample(refs[1]).mesh is None

    result = CliRunner().invoke(cli.main, ["inspect", str(data), "--json", "--mesh-points", "500"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["meshes"] == {"box/test/b": {"vertices": 36, "faces": 12, "points": 500},
                             "box/train/a": {"vertices": 8, "faces": 12, "points": 500}}
    assert doc["classes"]["box"]["points"] == {"min": 300, "mean": pytest.approx(1300 / 3), "max": 500}

    def cfg(n):
        return RenderConfig(dataset=str(data), cache=str(cache), image_size=48, supersample=1, knn=4, views="3",
                            mesh_points=n)

    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        run = render_dataset(cfg(500), progress=False, client=client)
        assert run.rendered == 3 and sorted(run.meshes) == ["box/test/b", "box/train/a"]
        assert "pad render: 2 sample(s) are meshes, sampled with 500 points on their surface" in " ".join(run.notes())
        store = RenderStore.open(str(cache))
        attrs = store.sample_attrs(store.index_of("box/train/a"))
        assert attrs["n_points"] == 500 and attrs["mesh"] == {"vertices": 8, "faces": 12, "points": 500}
        keys = dict(zip(store.sample_ids, store.sample_keys().tolist()))
        # the sampling is part of a mesh sample's identity: another --mesh-points renders only the meshes again
        again = render_dataset(cfg(700), progress=False, client=client)
        assert (again.rendered, again.skipped) == (2, 1) and sorted(again.changed) == ["box/test/b", "box/train/a"]
        store = RenderStore.open(str(cache))
        after = dict(zip(store.sample_ids, store.sample_keys().tolist()))
        assert after["box/test/c"] == keys["box/test/c"] and after["box/test/b"] != keys["box/test/b"]
        assert store.sample_attrs(store.index_of("box/test/b"))["n_points"] == 700
        assert render_dataset(cfg(700), progress=False, client=client).skipped == 3
    assert identify(plan_render(cfg(700)).refs) == [after[i] for i in ("box/test/b", "box/test/c", "box/train/a")]


def test_default_mesh_points_is_the_documented_one():
    from pipeline.options import MESH_POINTS as OPTION
    from workflows.options import PredictConfig
    assert MESH_POINTS == OPTION == PredictConfig(files=(), checkpoint="r").mesh_points == 20000


def test_what_fuzzing_found_a_float32_overflow_and_trimesh_talking(tmp_path):
    """A vertex finite in float64 but not in float32 (1e300) counts as non-finite (no Inf point is
    drawn), and trimesh's own log (a traceback about a damaged facet normal) stays off stderr."""
    lines = [f"v {x} {y} {z}" for x, y, z in CORNERS] + ["v 1e300 0 0"]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in FACES] + ["f 1 2 9"]
    (tmp_path / "far.obj").write_text("\n".join(lines) + "\n")
    cloud = read_cloud(tmp_path / "far.obj", mesh_points=3000)
    assert np.isfinite(cloud.points).all() and (_on_box(cloud.points) >= 0).all()
    assert (cloud.n_dropped_nonfinite, cloud.mesh.n_faces_dropped) == (1, 1)
    facet = "facet normal 0 {} 0\nouter loop\nvertex 0 0 0\nvertex 1 0 0\nvertex 0 1 0\nendloop\nendfacet\n"
    (tmp_path / "bad.stl").write_text("solid x\n" + facet.format(0) + facet.format("x") + "endsolid x\n")
    assert read_cloud(tmp_path / "bad.stl", mesh_points=100).mesh.n_faces == 2   # trimesh skips the bad normal ...
    code = f"from pipeline.ingest import read_cloud; read_cloud({str(tmp_path / 'bad.stl')!r}, mesh_points=100)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode == 0 and run.stderr == "", run.stderr[-500:]       # ... and, outside pytest's log capture,
                                                                             # nothing of trimesh's reaches stderr
