"""Tied logits: every count follows one rule, the lower class index wins (numpy's stable argsort and argmax
are the reference), whatever other k are requested, for float32 and low-precision logits."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from caption_evaluator.evaluation.metrics import ClassificationMetric, compute_topk_accuracy, label_ranks


@st.composite
def tied_batches(draw):
    c = draw(st.integers(2, 7))
    b = draw(st.integers(1, 24))
    levels = draw(st.integers(1, 3))                                       # few distinct values: many ties
    logits = np.array(draw(st.lists(st.lists(st.integers(0, levels - 1), min_size=c, max_size=c), min_size=b, max_size=b)), float)
    labels = np.array(draw(st.lists(st.integers(0, c - 1), min_size=b, max_size=b)))
    return logits, labels


def ref_ranks(logits, labels):
    order = np.argsort(-logits, axis=1, kind="stable")                     # equal values keep index order
    return np.array([int(np.nonzero(order[i] == labels[i])[0][0]) for i in range(len(labels))])


@settings(max_examples=150, deadline=None)
@given(tied_batches(), st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_every_count_follows_lowest_index_wins(batch, dtype):
    logits, labels = batch
    c = logits.shape[1]
    x, y = torch.tensor(logits, dtype=dtype), torch.tensor(labels)
    ranks = ref_ranks(logits, labels)
    assert label_ranks(x, y).tolist() == ranks.tolist()
    for k in range(1, c + 1):
        assert compute_topk_accuracy(x, y, k) == pytest.approx(float(np.mean(ranks < k)))
    pred = logits.argmax(1)                                                # numpy: the first maximal index
    for ks in [(1,), (1, 2), tuple(range(1, c + 1))]:
        m = ClassificationMetric(c, topk=ks, calibration_bins=4)
        m.update(x, y)
        r = m.compute()
        assert r["accuracy"] == pytest.approx(float(np.mean(pred == labels)))
        for k in ks[1:]: assert r[f"top{k}_accuracy"] == pytest.approx(float(np.mean(ranks < k)))
        conf = np.zeros((c, c), int)
        np.add.at(conf, (labels, pred), 1)
        assert r["confusion_matrix"] == conf.tolist()
        for cls in range(c):
            sel = labels == cls
            assert r["per_class"][cls]["correct"] == int((pred[sel] == cls).sum())
        p = torch.softmax(x.float(), 1).max(1).values.numpy()
        bins = np.clip((p * 4).astype(int), 0, 3)
        ece = sum(abs((pred[bins == b] == labels[bins == b]).sum() - p[bins == b].sum()) for b in range(4)) / len(labels)
        assert r["ece"] == pytest.approx(float(ece), abs=1e-6)


def test_the_quoted_cases():
    assert compute_topk_accuracy(torch.tensor([[1., 1., 1., 0.]]), torch.tensor([0]), 1) == 1.0
    m = ClassificationMetric(10, topk=(1,))
    m.update(torch.zeros(5, 10), torch.zeros(5, dtype=torch.long))          # a dead model predicts class 0
    assert m.compute()["confusion_matrix"][0][0] == 5
