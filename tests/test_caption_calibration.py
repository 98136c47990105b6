"""The calibration's AUROC pieces against scikit-learn, with ties and weights drawn by hypothesis."""
import numpy as np
import torch
from hypothesis import given, strategies as st
from sklearn.metrics import roc_auc_score

from caption_evaluator.captions.edits import _corrected_auroc
from caption_evaluator.ranking import auroc

scores = st.lists(st.integers(-3, 3), min_size=1, max_size=30)          # few distinct values: many ties


@given(scores, st.lists(st.tuples(st.integers(-3, 3), st.integers(1, 4)), min_size=1, max_size=30))
def test_weighted_auroc_matches_sklearn(negatives, weighted_positives):
    pos, w = zip(*weighted_positives)
    y = np.r_[np.zeros(len(negatives)), np.ones(len(pos))]
    weights = np.r_[np.ones(len(negatives)), 1 / np.array(w)]
    got = auroc(np.r_[negatives, pos], y.astype(bool), weights)
    want = roc_auc_score(y, np.r_[negatives, pos], sample_weight=weights)
    assert abs(got - want) < 1e-12


@given(scores, scores)
def test_corrected_auroc_is_a_share_and_never_below_the_observed(negatives, positives):
    neg, pos = torch.tensor(negatives, dtype=torch.float64), torch.tensor(positives, dtype=torch.float64)
    ones = torch.ones(len(pos), dtype=torch.float64)
    observed = auroc(np.r_[negatives, positives], np.r_[np.zeros(len(negatives)), np.ones(len(positives))].astype(bool))
    corrected = _corrected_auroc(neg, pos, ones)
    assert 0 <= corrected <= 1
    assert corrected >= observed - 1e-12 if observed > 0.5 else abs(corrected - observed) < 1e-12   # the correction only undoes the pull towards ½


def test_empty_sides_give_nan():
    empty, some = torch.zeros(0, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    assert np.isnan(_corrected_auroc(empty, some, some)) and np.isnan(_corrected_auroc(some, empty, empty))
