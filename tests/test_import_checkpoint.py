"""``pad import-checkpoint``: an official PointAD checkpoint (torch.save({"prompt_learner": ...}))
becomes a pad run; its text embeddings, view probabilities, point maps and object scores are those
of the official test.py, transcribed plainly here; bad files are refused without being executed."""
from __future__ import annotations

import json
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from _cache_fixtures import make_cache
from cli import main
from data_cache.backbones import create_clip
from data_cache.feature_store import FeatureStore
from data_cache.render_store import RenderStore
from trainer.model import load_model
from scoring.options import ScoreConfig
from trainer.options import ImportCheckpointConfig
from trainer.import_checkpoint import import_checkpoint
from scoring.score import score_cache

pytestmark = pytest.mark.usefixtures("one_thread")
E, N_DEEP, DL, W = 6, 3, 2, 128          # context tokens, deep prompts, deep length, pad-tiny's text width


def _official_state(width: int = W, seed: int = 0) -> OrderedDict:
    """What the official AnomalyCLIP_PromptLearner.state_dict() holds (learnable + unused parts)."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    state["ctx_pos"] = torch.randn(1, 1, E, width, generator=g) * 0.02
    state["ctx_neg"] = torch.randn(1, 1, E, width, generator=g) * 0.02
    for i in range(N_DEEP):
        state[f"compound_prompts_text.{i}"] = torch.randn(DL, width, generator=g) * 0.02
    for i in range(N_DEEP):
        state[f"compound_prompt_projections.{i}.weight"] = torch.randn(896, width, generator=g)
        state[f"compound_prompt_projections.{i}.bias"] = torch.zeros(896)
    state["token_prefix_pos"] = torch.zeros(1, 1, 1, width)
    state["tokenized_prompts_pos"] = torch.zeros(1, 1, 77, dtype=torch.long)
    return state


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("import")
    return make_cache(str(root / "cache"), {"carrot": (1, 2), "cookie": (2, 3)}, points=(150, 250))


@pytest.fixture(scope="module")
def imported(cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    (root / "carrot").mkdir()
    path = root / "carrot" / "epoch_15.pth"
    torch.save({"prompt_learner": _official_state()}, path)
    run = str(root / "run")
    config = import_checkpoint(ImportCheckpointConfig(file=str(path), cache=cache.cache, out=run))
    return {"path": str(path), "run": run, "config": config}


def _official_text(parts, state) -> torch.Tensor:
    """prompt_ensemble.py forward + AnomalyCLIP.encode_text_learn, transcribed: (2, D) normalized
    embeddings of '[V1..VE] object.' / '[W1..WE] damaged object.' with the compound prompts
    replacing tokens 1..dl before text layers 2..n+1."""
    m = parts.model
    texts = [" ".join(["X"] * E) + " object.", " ".join(["X"] * E) + " damaged object."]
    ids = parts.tokenizer(texts)
    emb = m.token_embedding(ids)
    ctx = torch.cat([state["ctx_pos"][0], state["ctx_neg"][0]])                 # (2, E, W)
    x = torch.cat([emb[:, :1], ctx, emb[:, 1 + E:]], dim=1) + m.positional_embedding
    deep = [state[f"compound_prompts_text.{i}"] for i in range(N_DEEP)]
    for layer, block in enumerate(m.transformer.resblocks):
        if 1 <= layer <= len(deep):
            x = torch.cat([x[:, :1], deep[layer - 1].expand(2, -1, -1), x[:, 1 + DL:]], dim=1)
        x = block(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    x = x[torch.arange(2), ids.argmax(dim=-1)] @ m.text_projection
    return F.normalize(x, dim=-1)


def test_imported_run_has_the_official_text_embeddings(cache, imported):
    cfg = imported["config"]
    assert (cfg["model"], cfg["prompt_style"], cfg["prompt_length"], cfg["n_deep"], cfg["deep_length"]) == \
        ("pointad", "agnostic", E, N_DEEP, DL)
    assert cfg["training_classes"] == ["carrot"]          # the official <class>/epoch_N.pth layout
    model = load_model(imported["run"], device="cpu")
    parts = create_clip("pad-tiny", "random", seed=0, need_visual=False)
    with torch.no_grad():
        official = _official_text(parts, _official_state())
        ours = model.inference_text()["render"]
    assert (ours - official).abs().max() <= 1e-5


def test_score_sigma_0_gives_the_official_test_py_outputs(cache, imported, tmp_path):
    """test.py with batch 1: text_probs = softmax(cos(g, t) / 0.07)[anomalous], mean over views;
    the point map = back_to_3d of the similarity map (mean over seen views at each point's pixel);
    pr_sp = 0.5 * max(map) + 0.5 * text_probs."""
    out = tmp_path / "res"
    score_cache(ScoreConfig(cache=cache.cache, checkpoint=imported["run"], out=str(out), sigma=0, device="cpu",
                            splits="test,train",
                            report_samples=0), progress=False)
    rows = {r.split(",")[0]: r.split(",") for r in (out / "scores.csv").read_text().splitlines()[1:]}
    assert not any(k.startswith("carrot/") for k in rows)   # the official run's class is left out
    parts = create_clip("pad-tiny", "random", seed=0, need_visual=False)
    with torch.no_grad():
        text = _official_text(parts, _official_state())                         # (2, D)
    store, features = RenderStore.open(cache.cache), FeatureStore.open(cache.cache)
    checked = 0
    for i, sid in enumerate(store.sample_ids):
        if not sid.startswith("cookie/"):
            continue
        sample = store.read_sample(i, ("pixel", "visible"))
        g = F.normalize(torch.from_numpy(features.global_(i).astype(np.float32)), dim=-1)
        probs = ((g @ text.T) / 0.07).softmax(-1)[:, 1]
        view_prob = float(probs.mean())
        patch = F.normalize(torch.from_numpy(features.patch(i)[:, 0].astype(np.float32)), dim=-1)   # (V, P, D)
        sim = ((patch @ text.T) / 0.07).softmax(-1)                                                 # (V, P, 2)
        side = int(round(sim.shape[1] ** 0.5))
        size = store.image_size
        maps = F.interpolate(sim.reshape(-1, side, side, 2).permute(0, 3, 1, 2), (size, size), mode="bilinear")
        pixel, seen = sample["pixel"].astype(np.int64), sample["visible"]
        values = maps[np.arange(maps.shape[0])[None, :], 1, pixel[..., 0], pixel[..., 1]].numpy()   # (N, V)
        counted = seen.sum(axis=1)
        point_map = (values * seen).sum(axis=1)[counted > 0] / counted[counted > 0]
        ours = np.load(out / "points" / "cookie" / (sid.split("/", 1)[1].replace("/", "__") + ".npz"))["scores"]
        np.testing.assert_allclose(ours[counted > 0], point_map, atol=2e-3)
        score = 0.5 * float(np.max(ours)) + 0.5 * view_prob
        assert abs(float(rows[sid][4]) - score) <= 2e-3
        checked += 1
    assert checked == 5


def _invoke(*args):
    return CliRunner().invoke(main, ["import-checkpoint", *map(str, args)], terminal_width=200)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pad-import-pwned",))


@pytest.mark.parametrize("make, message", [
    (lambda p: torch.save({"prompt_learner": _official_state(), "x": _Evil()}, p), "needs code to unpickle"),
    (lambda p: p.write_bytes(b"not a checkpoint"), "not a readable torch checkpoint"),
    (lambda p: torch.save({"state_dict": {}}, p), "no 'prompt_learner'"),
    (lambda p: torch.save({"prompt_learner": OrderedDict((k, v) for k, v in _official_state().items()
                                                         if k != "ctx_neg")}, p), "no 'ctx_neg'"),
    (lambda p: torch.save({"prompt_learner": dict(_official_state(), ctx_neg=torch.zeros(1, 1, E + 1, W))}, p),
     "are not both (1, 1, E, W)"),
    (lambda p: torch.save({"prompt_learner": dict(_official_state(), **{"compound_prompts_text.1": torch.zeros(3, W)})},
                          p), "compound_prompts_text shapes"),
    (lambda p: torch.save({"prompt_learner": _official_state(width=768)}, p), "text width of 128"),
])
def test_bad_checkpoints_are_one_line_errors_and_write_nothing(cache, tmp_path, make, message):
    if os.path.exists("/tmp/pad-import-pwned"):
        os.remove("/tmp/pad-import-pwned")
    path = tmp_path / "ckpt.pth"
    make(path)
    run = tmp_path / "run"
    result = _invoke(path, "--cache", cache.cache, "--out", run)
    assert result.exit_code == 2, result.output
    assert message in result.output and str(path) in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not run.exists() and not os.path.exists("/tmp/pad-import-pwned")


def test_an_existing_run_is_not_overwritten(cache, imported):
    before = json.loads(open(os.path.join(imported["run"], "config.json")).read())
    result = _invoke(imported["path"], "--cache", cache.cache, "--out", imported["run"])
    assert result.exit_code == 2 and "already holds a checkpoint" in result.output
    assert json.loads(open(os.path.join(imported["run"], "config.json")).read()) == before
