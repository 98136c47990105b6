"""Definitions a careful user would question, checked against hand computations: +inf NLL tokens make the
perplexity infinite, NaN tokens are left out, loss_<N> exists only for positions a token reached."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from caption_evaluator.evaluation.metrics import PositionLossMetric, TokenLMMetric


def nll_numpy(logits, labels):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, labels[..., None], -1)[..., 0]


def test_a_ruled_out_true_token_makes_perplexity_infinite():
    logits = torch.randn(1, 4, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1, 2, 3, 4]])
    logits[0, 2, 3] = -math.inf                                              # the true token of position 2 is ruled out
    m = TokenLMMetric(); m.update(logits, labels); r = m.compute()
    assert r["loss"] == math.inf and r["perplexity"] == math.inf
    assert r["tokens"] == 4 and r["nonfinite_tokens"] == 1
    finite = nll_numpy(logits.numpy()[0, [0, 1, 3]], labels.numpy()[0, [0, 1, 3]])
    assert np.isfinite(finite).all()                                        # the others alone would look fine


def test_nan_tokens_are_left_out_and_counted():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(2, 3, 6, generator=g), torch.randint(0, 6, (2, 3), generator=g)
    logits[1, 1] = math.nan
    m = TokenLMMetric(); m.update(logits, labels); r = m.compute()
    keep = np.ones((2, 3), bool); keep[1, 1] = False
    ref = nll_numpy(logits.numpy(), labels.numpy())[keep].mean()
    assert r["tokens"] == 5 and r["nonfinite_tokens"] == 1
    assert r["loss"] == pytest.approx(ref, rel=1e-6) and r["perplexity"] == pytest.approx(math.exp(ref), rel=1e-6)


def test_huge_finite_loss_gives_infinite_perplexity_not_an_error():
    logits = torch.tensor([[[0.0, 800.0]]])
    m = TokenLMMetric(); m.update(logits, torch.tensor([[0]])); r = m.compute()
    assert r["loss"] == pytest.approx(800.0) and r["perplexity"] == math.inf


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.lists(st.integers(0, 40), min_size=1, max_size=4), st.integers(1, 40))
def test_loss_at_n_only_for_reached_positions(batch, bucket, positions, seq):
    g = torch.Generator().manual_seed(seq * 7 + batch)
    losses = torch.rand(batch, seq, generator=g)
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    mask = torch.arange(seq)[None] < lengths[:, None]
    m = PositionLossMetric(bucket_size=bucket, positions=tuple(positions))
    m.update(losses, mask); r = m.compute()
    for p in positions:
        key = f"loss_{p // 1024}k" if p and p % 1024 == 0 else f"loss_{p}"
        if not bool(mask[:, p].any()) if p < seq else True:
            assert r[key] is None, (p, lengths)
        else:
            b = p // bucket
            sel = mask.clone(); sel[:, :b * bucket] = False; sel[:, (b + 1) * bucket:] = False
            assert r[key] == pytest.approx(float(losses[sel].double().mean()))
