"""Reference sets of good parts (issue 25, item 5): the saved file (roundtrip, refusals), the score
of a scan against a fixed reference (MSM written out by hand, leave-self-out, one k for all), and
calibration on those scores (the conformal threshold, tied to the set's digest)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
from data_cache.errors import PadError
from scoring import conformal
from scoring.calibration import calibration_document, check_applies, read_calibration, write_calibration
from scoring.mutual.reference import (FEATURE_KEYS, center_scores, check_features, class_reference, kept_count,
                                      load_reference, make_reference, save_reference)
from scoring.mutual.reference_calibrate import (check_reference_applies, reference_identity,
                                                reference_signature)

FEATURES = {"tag": "point-mae_random_L4-8-12_g1024x128", "backbone": "point-mae", "pretrained": "random",
            "seed": 0, "layers": [4, 8, 12], "n_groups": 16, "group_size": 8, "dim": 6, "mode": "eval", "grid": 0}


def random_z(rng, layers=2, scans=5, patches=7, channels=6) -> torch.Tensor:
    """(L, N, M, C) float16, each patch L2-normalized (as MSM receives aggregated features)."""
    z = torch.from_numpy(rng.normal(size=(layers, scans, patches, channels)).astype(np.float32))
    return (z / z.norm(dim=-1, keepdim=True)).half()


def make(tmp_path, rng, classes=("ring",), scans=5, **features) -> tuple[str, object]:
    z_by_class = {c: ([f"{c}/train/good/{k:03d}" for k in range(scans)], random_z(rng, scans=scans),
                      [2 ** 63 + 7 * k for k in range(scans)]) for c in classes}
    ref = make_reference(z_by_class, features=dict(FEATURES, **features), modality="3d", r_list=(1, 3, 5),
                         topmin=0.3, render_fingerprint="f" * 16, cache=str(tmp_path / "cache"), split="train")
    path = str(tmp_path / "good.musc.safetensors")
    save_reference(path, ref)
    return path, ref


# ---------------------------------------------------------------------------- the file
def test_save_then_load_gives_back_every_feature_id_and_setting(tmp_path):
    path, ref = make(tmp_path, np.random.default_rng(0), classes=("ring", "tyre"))
    back = load_reference(path)
    assert back.digest == ref.digest and len(back.digest) == 64
    assert back.meta == ref.meta and back.features == FEATURES and back.topmin == 0.3
    for cls in ("ring", "tyre"):
        assert back.classes[cls].ids == ref.classes[cls].ids and back.classes[cls].keys == ref.classes[cls].keys
        assert back.classes[cls].z.dtype == torch.float16
        assert torch.equal(back.classes[cls].z, ref.classes[cls].z)
    # "itself" is the same id with the same content: a scan of another cache under that id is not left out
    tyre = back.classes["tyre"]
    assert tyre.index_of("tyre/train/good/003", 2 ** 63 + 21) == 3 and tyre.index_of("tyre/train/good/003") == 3
    assert tyre.index_of("tyre/train/good/003", 12345) == -1 and tyre.index_of("tyre/test/x") == -1
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))          # written atomically
    with open(path, "rb") as fh:                                                     # no pickle anywhere
        assert b"\x80\x04" not in fh.read(16)


@pytest.mark.parametrize("damage, needle", [
    ("truncate", "truncated or damaged"),
    ("flip", "digest does not match"),
    ("ids", "digest does not match"),
    ("empty", "truncated or damaged"),
    ("missing", "no such reference set"),
])
def test_a_damaged_or_edited_reference_set_is_refused_in_one_line_naming_it(tmp_path, damage, needle):
    path, _ = make(tmp_path, np.random.default_rng(1))
    data = open(path, "rb").read()
    if damage == "truncate":
        open(path, "wb").write(data[: len(data) * 2 // 3])
    elif damage == "flip":                                   # one byte of the tensors, at the end of the file
        open(path, "wb").write(data[:-3] + bytes([data[-3] ^ 0x5A]) + data[-2:])
    elif damage == "ids":                                    # the header edited by hand: another sample id
        n = int.from_bytes(data[:8], "little")
        header = data[8:8 + n].replace(b"good/001", b"good/009")
        open(path, "wb").write(data[:8] + header + data[8 + n:])
    elif damage == "empty":
        open(path, "wb").close()
    else:
        os.unlink(path)
    with pytest.raises(PadError) as info:
        load_reference(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(path) and needle in text, text


def test_a_reference_set_made_with_other_features_is_refused_naming_what_differs(tmp_path):
    _, ref = make(tmp_path, np.random.default_rng(2))
    check_features(ref, dict(FEATURES, render_fingerprint="anything"), "cache")        # same features: fine
    for key, other in (("tag", "point-mae_ckpt_L4-8-12_g1024x128"), ("pretrained", "/w/pointmae.pth"),
                       ("mode", "train"), ("layers", [3, 7, 11])):
        with pytest.raises(PadError) as info:
            check_features(ref, dict(FEATURES, **{key: other}), "cache")
        text = str(info.value)
        assert text.startswith("cache:") and f"{key} " in text and repr(other) in text and "\n" not in text
    assert set(FEATURES) <= set(FEATURE_KEYS)


def test_a_class_without_good_scans_and_an_unknown_class_are_refused(tmp_path):
    with pytest.raises(PadError, match="no normal scan in split 'train'"):
        make_reference({"ring": ([], torch.zeros((2, 0, 7, 6), dtype=torch.float16))}, features=FEATURES,
                       modality="3d", r_list=(1,), topmin=0.3, render_fingerprint="f", cache="c", split="train")
    _, ref = make(tmp_path, np.random.default_rng(3), classes=("ring", "tyre"))
    with pytest.raises(PadError, match="--class NAME"):
        class_reference(ref, None)
    with pytest.raises(PadError, match="no class 'bolt'"):
        class_reference(ref, "bolt")
    assert class_reference(ref, "tyre")[0] == "tyre"


# ---------------------------------------------------------------------------- the score
def msm_by_hand(query: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """query (L, M, C), reference (L, R, M, C) -> (M,): per layer, each patch's distance to the
    closest patch of each reference scan, the mean of the k smallest over the scans, then the
    mean over layers; written out with loops over scans and layers."""
    layers, r = reference.shape[0], reference.shape[1]
    total = np.zeros(query.shape[1])
    for layer in range(layers):
        per_scan = []
        for j in range(r):
            d = np.linalg.norm(query[layer][:, None, :] - reference[layer, j][None, :, :], axis=-1)
            per_scan.append(d.min(axis=1))
        per_scan = np.sort(np.stack(per_scan, axis=1), axis=1)
        total += per_scan[:, :k].mean(axis=1)
    return total / layers


def test_a_scan_against_the_reference_equals_msm_by_hand_with_itself_left_out():
    rng = np.random.default_rng(4)
    ref = random_z(rng, layers=3, scans=11, patches=9)                 # R = 11: k = int(0.3 * 10) = 3
    new = random_z(rng, layers=3, scans=2, patches=9)
    k = kept_count(11)
    assert k == 3 and kept_count(2) == 1 and kept_count(4, 0.5) == 1
    r32 = ref.float().numpy()
    # two new scans (all 11 reference scans) and reference scans 0 and 6 (each against the 10 others)
    z = torch.cat([new, ref[:, [0, 6]]], dim=1)
    got = center_scores(z, ref, leave_out=[-1, -1, 0, 6]).numpy()
    want = [msm_by_hand(new[:, 0].float().numpy(), r32, k), msm_by_hand(new[:, 1].float().numpy(), r32, k),
            msm_by_hand(r32[:, 0], np.delete(r32, 0, axis=1), k), msm_by_hand(r32[:, 6], np.delete(r32, 6, axis=1), k)]
    np.testing.assert_allclose(got, np.stack(want), rtol=2e-3, atol=2e-3)   # float16 distances, as the official
    # scored alone or in a batch, with or without reference scans beside it: the same numbers
    alone = center_scores(new[:, 1:2], ref).numpy()
    np.testing.assert_array_equal(alone[0], got[1])
    # without leaving itself out a reference scan finds itself at distance 0: the scores drop
    assert (center_scores(ref[:, [0]], ref).numpy()[0] < got[2] - 1e-3).all()


# ---------------------------------------------------------------------------- calibration
def test_calibration_on_leave_self_out_scores_is_the_conformal_threshold_tied_to_the_set(tmp_path):
    rng = np.random.default_rng(5)
    path, ref = make(tmp_path, rng, scans=19)                          # 19 scans: alpha 0.05 possible
    ref = load_reference(path)
    cls_ref = ref.classes["ring"]
    # every reference scan scored against the others (the object score here: the max over its patches)
    scores_by_patch = center_scores(cls_ref.z, cls_ref.z, leave_out=np.arange(19)).numpy()
    scores = scores_by_patch.max(axis=1)
    doc = calibration_document({"ring": (scores.tolist(), scores.tolist(), cls_ref.ids)}, 0.05, 3, run=path,
                               prompts_sha256="", feature_tag=ref.features["tag"], scoring=reference_signature(),
                               cache=str(tmp_path), splits=["train"], reference=reference_identity(ref))
    out = tmp_path / "calibration.json"
    write_calibration(str(out), doc)
    cal = read_calibration(str(out))
    k = math.floor(20 * 0.05)                                          # (n + 1) alpha = 1: the largest score
    assert cal.classes["ring"].object_threshold == sorted(scores.tolist())[19 - k] == scores.max()
    assert cal.classes["ring"].object_threshold == conformal.threshold(np.sort(scores), 0.05)
    assert cal.reference_sha256 == ref.digest and json.loads(out.read_text())["checkpoint"] is None
    check_reference_applies(cal, ref)                                  # the same set: applies
    (tmp_path / "other").mkdir()
    _, other = make(tmp_path / "other", rng, scans=19)
    with pytest.raises(PadError, match="another reference set"):
        check_reference_applies(cal, other)
    with pytest.raises(PadError, match="not for a checkpoint"):      # and never a checkpoint's
        check_applies(cal, prompts_sha256="0" * 64, feature_tag=ref.features["tag"], scoring=reference_signature())


# ---------------------------------------------------------------------------- the commands
def test_predict_and_calibrate_say_in_one_line_what_is_missing_or_broken(tmp_path):
    cloud = tmp_path / "part.npy"
    np.save(cloud, np.random.default_rng(6).normal(size=(300, 3)).astype(np.float32))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    cases = [(["predict", str(cloud)], "give --checkpoint RUN"),
             (["predict", str(cloud), "--reference", str(broken)], str(broken)),
             (["predict", str(cloud), "--reference", str(broken), "--checkpoint", "run"], "give one"),
             (["calibrate", "--cache", str(tmp_path), "--classes", "a"], "give --checkpoint RUN"),
             (["calibrate", "--cache", str(tmp_path), "--classes", "a", "--reference", str(broken)], str(broken))]
    for argv, needle in cases:
        result = CliRunner().invoke(cli.main, argv, terminal_width=200)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], (argv, result.output)
