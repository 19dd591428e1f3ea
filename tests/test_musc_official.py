"""pad's MuSc-V2 against outputs recorded from the official code (HUST-SLOW/MuSc-V2), stage by stage.

``tests/fixtures/musc`` holds what the official modules computed on a small synthetic class (7
organized scans, 32 groups each, random Point-MAE and DINO weights from a seed, eval mode); its
README has the command (``benchmarks/official_musc_parity.py --write-fixture``). Each stage of
pad is fed the official inputs of that stage and must give the official outputs: 1e-4 for float32
results (the issue's target for patch distances, the 3D map and the object scores after RsCon),
one float16 unit in the last place where the official code rounds to float16 (SNAMD, the MSM
distances: see the benchmark's docstring and docs/fidelity.md). Then pad runs end to end from the
raw scans and must give the official maps and scores within 1e-4. The full-size comparison (1024
groups, 7 images, pad's own FPS) is the benchmark itself.

FPS: the official code calls the CUDA kernel of ``pointnet2_ops``, which cannot run here, so no
official FPS output is recorded. The kernel's rules, from its definition (first centre index 0,
float32 squared distances, a running minimum, points with |p|² ≤ 1e-3 skipped and never chosen),
are written out in ``benchmarks/_musc_parity_common.reference_fps``; pad's FPS must pick the same
centres on the fixture's tie-free scans (stage ``fps``) and obey the two rules a plain FPS would
not (``test_fps_kernel_rules``). Tie-breaking between equal distances (the kernel's block
reduction) is pad's own reproduction, tested in ``tests/test_point_groups.py``.
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import official_musc_parity as parity  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "musc"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    rec, meta = parity.load_fixture(str(FIXTURE))
    ctx = parity.write_checkpoints(meta, str(tmp_path_factory.mktemp("musc-checkpoints")))
    ctx["dino_layers"] = (3,)        # block 3 only: a ViT-B/8 forward to block 11 costs seconds here
    return rec, ctx


def test_fixture_is_small_and_complete():
    size = sum(p.stat().st_size for p in FIXTURE.iterdir())
    assert size <= 3 * 2 ** 20, size
    rec, meta = parity.load_fixture(str(FIXTURE))
    assert meta["n_scans"] >= 7 and len(parity.scan_ids(rec)) == meta["n_scans"]   # RsCon needs N >= 7
    assert rec["rscon3d"].shape == (meta["n_scans"],) and np.isfinite(rec["rscon3d"]).all()
    # both kinds of centre occur (flat ones get SNAMD's pooled feature, curved ones keep their own)
    curv = np.concatenate([rec[f"curvature_{i}"] for i in parity.scan_ids(rec)])
    assert (curv < 0.01).any() and (curv >= 0.01).any()


@pytest.mark.parametrize("stage", list(parity.STAGES))
def test_stage_matches_official(recorded, stage):
    rec, ctx = recorded
    diff, tol, info = parity.STAGES[stage](rec, ctx)
    assert diff <= tol, f"{stage}: max |pad - official| {diff:.3e} > {tol:.1e} ({info})"


def test_end_to_end_matches_official(recorded):
    """pad from the raw scans alone (reader, FPS, grouping, Point-MAE, SNAMD, MSM, maps, RsCon), as
    ``pad mutual --modality 3d`` computes it, against the official run: patch distances, maps and
    object scores within 1e-4 (the official code's float16 casts make any other float32 summation
    order show up here at ~1e-2, see docs/fidelity.md)."""
    rec, ctx = recorded
    for name, diff, tol, info in parity.chain_rows(rec, ctx):
        assert diff <= tol, f"{name}: max |pad - official| {diff:.3e} > {tol:.1e} ({info})"


def test_fps_kernel_rules():
    from pipeline.point_groups import farthest_point_sample
    pts = torch.tensor([[1.0, 0.0, 0.0],     # index 0: always the first centre
                        [0.02, 0.0, 0.0],    # |p|^2 = 4e-4 <= 1e-3: the farthest from 0, never chosen
                        [0.9, 0.1, 0.0],
                        [0.7, 0.3, 0.0],
                        [0.95, 0.0, 0.05]])
    assert farthest_point_sample(pts, 3).tolist() == [0, 3, 2]
    # a first point inside the skipped ball is still the first centre (the kernel writes index 0 first)
    pts[0] = torch.tensor([0.0, 0.01, 0.0])
    assert farthest_point_sample(pts, 2).tolist()[0] == 0
    # float32 squared distances from the last centre, as the kernel: pad equals the written-out rule
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(2000, 3)).astype(np.float32)
    from _musc_parity_common import reference_fps
    assert farthest_point_sample(torch.from_numpy(cloud), 64).numpy().tolist() == reference_fps(cloud, 64).tolist()
