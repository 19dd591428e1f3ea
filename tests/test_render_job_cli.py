"""``pad render`` end to end through the console script: a LocalCluster of 2 workers on a
tiny generic dataset, re-runs, a killed run, corrupt files and option mismatches."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from _render_job_helpers import FAST, PAD, pad_env, run_pad, summary_counts, write_dataset
from data_cache.errors import PadError
from data_cache.render_store import RenderStore, store_path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A dataset rendered once with 2 workers: (dataset dir, cache dir, ids, first run)."""
    root = tmp_path_factory.mktemp("render_cli")
    data, cache = root / "data", root / "cache"
    ids = write_dataset(data)
    first = run_pad("render", data, "--cache", cache, "--workers", 2, *FAST)
    return data, cache, ids, first


def test_every_sample_rendered_once_then_all_skipped(rendered):
    data, cache, ids, first = rendered
    assert first.returncode == 0, first.stderr
    assert summary_counts(first.stdout) == {"rendered": len(ids), "skipped": 0, "failed": 0,
                                            "done": len(ids), "total": len(ids)}
    assert "dashboard" in first.stderr.lower()
    store = RenderStore.open(str(cache))
    assert sorted(store.sample_ids) == ids
    assert store.done().all()
    assert store.failures() == []
    for i, sid in enumerate(store.sample_ids):
        attrs = store.sample_attrs(i)
        assert attrs["id"] == sid and attrs["class"] == sid.split("/")[0]
        assert attrs["label"] == int(sid.split("/")[2].startswith("bad"))
        assert store.read_sample(i, ("points",))["points"].shape == (attrs["n_points"], 3)
    second = run_pad("render", data, "--cache", cache, "--workers", 2, *FAST)
    assert second.returncode == 0, second.stderr
    assert summary_counts(second.stdout) == {"rendered": 0, "skipped": len(ids), "failed": 0,
                                             "done": len(ids), "total": len(ids)}


def test_store_made_with_other_options_is_refused(rendered):
    data, cache, _, first = rendered
    assert first.returncode == 0, first.stderr
    before = os.path.getmtime(os.path.join(store_path(str(cache)), "zarr.json"))
    args = ["--image-size", "80", "--supersample", "1", "--knn", "4"]
    result = run_pad("render", data, "--cache", cache, "--workers", 1, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "image_size" in lines[0] and "80" in lines[0], result.stderr
    assert os.path.getmtime(os.path.join(store_path(str(cache)), "zarr.json")) == before
    assert RenderStore.open(str(cache)).image_size == 64


def test_workers_and_scheduler_together_is_an_error(tmp_path):
    write_dataset(tmp_path / "data", classes=("cup",), n_test=1, n_train=0, points=100)
    result = run_pad("render", tmp_path / "data", "--cache", tmp_path / "cache", "--workers", 2,
                     "--scheduler", "tcp://127.0.0.1:1", *FAST)
    assert result.returncode == 2
    assert "--workers and --scheduler" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_file_fail_then_skip(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    ids = write_dataset(data, classes=("cup",), n_test=3, n_train=1)
    bad = data / "cup" / "test" / "aa_broken.ply"  # sorted first: submitted first
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 2000\n"
                    b"property float x\nproperty float y\nproperty float z\nend_header\n" + b"\0" * 100)
    failed = run_pad("render", data, "--cache", cache, "--workers", 1, "--on-error", "fail", *FAST)
    assert failed.returncode == 2
    errors = [line for line in failed.stderr.splitlines() if line.startswith("pad: error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "truncated" in errors[0], failed.stderr
    assert "Traceback" not in failed.stderr
    store = RenderStore.open(str(cache))  # still a valid store
    assert store.n_samples == len(ids) + 1
    i_bad = store.index_of("cup/test/aa_broken")
    done = store.done()
    assert not done[i_bad] and done.sum() < len(ids)  # outstanding samples were cancelled

    skipped = run_pad("render", data, "--cache", cache, "--workers", 1, "--on-error", "skip", *FAST)
    assert skipped.returncode == 0, skipped.stderr
    counts = summary_counts(skipped.stdout)
    assert counts == {"rendered": len(ids) - int(done.sum()), "skipped": int(done.sum()), "failed": 1,
                      "done": len(ids), "total": len(ids) + 1}
    listed = [line for line in skipped.stdout.splitlines() if "cup/test/aa_broken" in line]
    assert len(listed) == 1 and str(bad) in listed[0] and "truncated" in listed[0]
    store = RenderStore.open(str(cache))
    done = store.done()
    assert done.sum() == len(ids) and not done[i_bad]
    (failure,) = store.failures()
    assert failure["id"] == "cup/test/aa_broken" and failure["source_path"] == str(bad)
    assert "truncated" in failure["error"] and "\n" not in failure["error"]


def _n_done(cache) -> int:
    """Samples done so far; 0 while the store is still being created (attributes come last)."""
    try:
        return int(RenderStore.open(str(cache)).done().sum())
    except PadError:
        return 0


def _interrupt_after(cmd: list[str], cache, n: int, sig: int) -> tuple[subprocess.Popen, str]:
    """Start ``cmd`` in its own process group, wait until ``n`` samples are done, then send
    ``sig`` to the whole group (as a terminal's Ctrl-C does, or a crash of everything)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=pad_env(),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if _n_done(cache) >= n:
                break
            time.sleep(0.05)
    finally:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        output, _ = proc.communicate(timeout=60)
    return proc, output


def test_interrupted_and_killed_runs_resume(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    # 18 samples: enough left after the Ctrl-C (in-flight samples finish while the cluster closes)
    # for the SIGKILL to land mid-run
    ids = write_dataset(data, classes=("cup", "ring", "vase"), n_test=4, n_train=2)
    cmd = [str(PAD), "render", str(data), "--cache", str(cache), "--workers", "1", *FAST]

    # Ctrl-C: the client closes the cluster, says how many samples are done, exit code 130
    proc, output = _interrupt_after(cmd, cache, 2, signal.SIGINT)
    n_done = int(RenderStore.open(str(cache)).done().sum())
    assert proc.returncode == 130, output
    assert f"interrupted; {n_done}/{len(ids)} samples done" in output and "Traceback" not in output, output
    assert sum("interrupted" in line for line in output.splitlines()) == 1, output   # one line
    assert 2 <= n_done < len(ids), "the run was not interrupted mid-way"

    # SIGKILL of everything (client, scheduler, workers) mid-run
    store = RenderStore.open(str(cache))
    first = store.done().nonzero()[0][0]
    group = os.path.join(store.path, "samples", f"{first:06d}")
    stamps = {name: os.path.getmtime(os.path.join(group, name, "c", "0", "0")) for name in ("points", "pixel")}
    proc, _ = _interrupt_after(cmd, cache, n_done + 2, signal.SIGKILL)
    killed_done = int(RenderStore.open(str(cache)).done().sum())
    assert n_done + 2 <= killed_done < len(ids), "the run was not killed mid-way"

    rerun = run_pad(*cmd[1:])
    assert rerun.returncode == 0, rerun.stderr
    assert summary_counts(rerun.stdout) == {"rendered": len(ids) - killed_done, "skipped": killed_done,
                                            "failed": 0, "done": len(ids), "total": len(ids)}
    assert RenderStore.open(str(cache)).done().all()
    # samples done before were not rewritten
    assert {name: os.path.getmtime(os.path.join(group, name, "c", "0", "0")) for name in stamps} == stamps


def test_pointad_on_a_generic_dataset_names_the_command_that_renders_it(rendered, tmp_path):
    """The refusal points to the same command without --style pointad, which is the one the
    module's fixture ran (exit 0) on this very dataset."""
    data, _, _, first = rendered
    assert first.returncode == 0, first.stderr
    result = run_pad("render", data, "--cache", tmp_path / "c", "--workers", 1, "--style", "pointad")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "the 'generic' layout has none" in lines[0] and "without --style pointad" in lines[0]
    assert "--format" not in lines[0]
