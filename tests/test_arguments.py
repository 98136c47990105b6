"""Public entry points validate their arguments: a wrong type or value is refused with an error that names the
argument, never truncated or passed on to fail somewhere else. Property-based where inputs are open-ended."""
import math
import os
import unicodedata

import pytest
import torch
from hypothesis import given, settings, strategies as st

from caption_evaluator.core import wilson_interval
from caption_evaluator.evaluation.metrics import ClassificationMetric, PairMetric, PositionLossMetric, TokenLMMetric, compute_topk_accuracy
from caption_evaluator.evaluation.results import model_type_slug, save_results

not_ints = st.one_of(st.floats(allow_nan=True).filter(lambda v: not float(v).is_integer() if math.isfinite(v) else True),
                     st.booleans(), st.text(max_size=3), st.none())


@settings(max_examples=60, deadline=None)
@given(not_ints, st.sampled_from(["num_classes", "topk", "calibration_bins"]))
def test_classification_metric_refuses_non_ints(bad, arg):
    kwargs = {"num_classes": 5, "topk": (1, 3), "calibration_bins": 4}
    kwargs[arg] = (bad,) if arg == "topk" else bad
    with pytest.raises((TypeError, ValueError), match=arg):
        ClassificationMetric(**kwargs)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_any_integer_label_dtype_scores_the_same(dtype):
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(64, 6, generator=g), torch.randint(0, 6, (64,), generator=g)
    ref, got = ClassificationMetric(6), ClassificationMetric(6)
    ref.update(logits, labels); got.update(logits, labels.to(dtype))
    assert got.compute() == ref.compute()
    assert compute_topk_accuracy(logits, labels.to(dtype), 3) == compute_topk_accuracy(logits, labels, 3)


def test_bool_labels_are_refused():
    with pytest.raises(TypeError, match="labels"):
        ClassificationMetric(2).update(torch.randn(3, 2), torch.tensor([True, False, True]))
    with pytest.raises(TypeError, match="labels"):
        TokenLMMetric().update(torch.randn(1, 3, 4), torch.tensor([[True, False, True]]))


@pytest.mark.parametrize("arg", ["good_scores", "bad_scores"])
def test_pair_metric_names_the_bad_scores(arg):
    kw = {"good_scores": [1.0, 2.0], "bad_scores": [0.5, 0.1]}
    kw[arg] = ["x", 1.0]
    with pytest.raises(TypeError, match=arg):
        PairMetric().update(["a", "b"], **kw)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10_000), st.floats(0, 1), st.floats(-5, 5))
def test_wilson_interval_is_ordered_or_refused(n, share, z):
    correct = share * n
    if z <= 0:
        with pytest.raises(ValueError, match="z"): wilson_interval(correct, n, z)
        return
    lo, hi = wilson_interval(correct, n, z)
    assert 0 <= lo <= correct / n + 1e-12 and correct / n - 1e-12 <= hi <= 1


def test_wilson_interval_refuses_non_numbers():
    for bad in (math.nan, math.inf, "3", None, True):
        with pytest.raises(TypeError, match="must be a finite number"): wilson_interval(bad, 10)


def test_position_metric_refuses_non_ints():
    with pytest.raises(TypeError, match="bucket_size"): PositionLossMetric(bucket_size=2.5)
    with pytest.raises(TypeError, match="positions"): PositionLossMetric(positions=(1.5,))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_model_type_slug_is_one_safe_path_component(name):
    try: slug = model_type_slug(name)
    except ValueError:
        assert not any(unicodedata.category(ch)[0] in "LN" for ch in unicodedata.normalize("NFKC", name)), name
        return
    assert slug and slug not in (".", "..") and not set(slug) & {"/", "\\", "\x00", os.sep}
    assert os.path.dirname(os.path.normpath(os.path.join("/runs", f"run_x_{slug}"))) == "/runs"


def test_non_latin_model_type_is_kept():
    assert model_type_slug("模型") == "模型"
    assert model_type_slug("Модель v2") == "модель_v2"


def test_bad_model_type_and_empty_results_are_refused(tmp_path):
    with pytest.raises(TypeError, match="model_type"):
        save_results({"t": {"accuracy": 0.5}}, results_dir=tmp_path, model_type=5)
    with pytest.raises(ValueError, match="results is empty"):
        save_results({}, results_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_run_eval_takes_a_torch_device():
    "A `torch.device` in the config is run on and recorded by name."
    import json
    from caption_evaluator.evaluation.models import DigitsMLP
    from caption_evaluator.evaluation.router import VisionClassificationAdapter, run_eval
    from caption_evaluator.evaluation.tasks import build_eval_config
    res = run_eval(DigitsMLP(), VisionClassificationAdapter(), build_eval_config("vision_tiny", device=torch.device("cpu")), progress=False)
    assert res["eval_config"]["device"] == "cpu"
    json.dumps(res)                                           # the full record is plain JSON
