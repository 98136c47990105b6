"""`run_eval` under torch.distributed: 2 gloo ranks, each evaluating half of every tiny task, must
reproduce the single-process numbers (counts exactly, float sums to rounding)."""
import json
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from caption_evaluator.evaluation.models import CharLM, DigitsMLP, train_char_lm, train_classifier
from caption_evaluator.evaluation.router import (LongContextAdapter, PairwiseLikelihoodAdapter, TextLMAdapter,
                                      VisionClassificationAdapter, run_eval)
from caption_evaluator.evaluation.tasks import build_eval_config, digits_splits, text_splits
from helpers import free_port as _free_port

WORLD = 2
CASES = {  # task -> (adapter factory, which model, EvalConfig overrides)
    "vision_tiny": (VisionClassificationAdapter, "mlp", {"batch_size": 16}),
    "text_tiny": (TextLMAdapter, "lm", {"batch_size": 8}),
    "pairs_tiny": (PairwiseLikelihoodAdapter, "lm", {"batch_size": 16}),
    "long_context_tiny": (LongContextAdapter, "lm", {"batch_size": 1, "max_samples": 4}),
}


def _models(state_path):
    mlp, lm = DigitsMLP(), CharLM()
    states = torch.load(state_path)
    mlp.load_state_dict(states["mlp"]); lm.load_state_dict(states["lm"])
    return {"mlp": mlp, "lm": lm}


def _evaluate_all(models) -> dict:
    out = {}
    for task, (adapter, which, overrides) in CASES.items():
        cfg = build_eval_config(task, **overrides)
        res = run_eval(models[which], adapter(), cfg, progress=False)
        out[task] = {"metrics": res["metrics"], "detailed": res["detailed"],
                     "local_samples": len(cfg.dataloader().dataset)}
    return out


def _worker(rank, port, state_path, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        res = _evaluate_all(_models(state_path))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f: json.dump(res, f)
    finally:
        dist.destroy_process_group()


def _assert_same(a, b, path=""):
    "Equal structure; ints and strings exactly; floats to 1e-6 relative (float sums in another order)."
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys differ {set(a) ^ set(b)}"
        for k in a: _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)): _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), f"{path}: {a} != {b}"
    else:
        assert a == b and type(a) is type(b), f"{path}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    mlp, lm = DigitsMLP(), CharLM()
    train_classifier(mlp, digits_splits()[0], epochs=2)
    train_char_lm(lm, text_splits()[0], steps=10)
    state_path = str(tmp / "models.pt")
    torch.save({"mlp": mlp.state_dict(), "lm": lm.state_dict()}, state_path)
    single = json.loads(json.dumps(_evaluate_all(_models(state_path))))
    mp.spawn(_worker, args=(_free_port(), state_path, str(tmp)), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return single, ranks


@pytest.mark.parametrize("task", list(CASES))
def test_each_rank_sees_half(runs, task):
    single, ranks = runs
    n = single[task]["local_samples"]
    sizes = [r[task]["local_samples"] for r in ranks]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("task", list(CASES))
def test_ranks_match_single_process(runs, task):
    single, ranks = runs
    for r in ranks:
        _assert_same(single[task]["metrics"], r[task]["metrics"], task)
        _assert_same(single[task]["detailed"], r[task]["detailed"], task)


def test_exact_counts(runs):
    single, ranks = runs
    v, t = single["vision_tiny"]["metrics"], single["text_tiny"]["metrics"]
    assert v["samples"] == 359 and t["tokens"] > 0
    for r in ranks:
        assert r["vision_tiny"]["metrics"]["correct"] == v["correct"]
        assert r["vision_tiny"]["metrics"]["per_class"] == v["per_class"]
        assert r["vision_tiny"]["detailed"]["confusion_matrix"] == single["vision_tiny"]["detailed"]["confusion_matrix"]
        assert r["text_tiny"]["metrics"]["tokens"] == t["tokens"]
        assert r["pairs_tiny"]["metrics"]["correct"] == single["pairs_tiny"]["metrics"]["correct"]
