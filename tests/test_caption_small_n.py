"""The probe's calibration at the sizes of LoRA datasets (n = 20, 40, 100) against the labels.

A denoiser is trained from scratch on 1,200 captioned shapes (one attribute wrong in 20 %); the probe then runs on
random subsets of n items, as a user with n images would, with word edits over the attributes. Expected values
come from the labels: each tag's AUROC measured on all 1,200 items. The calibration must never call a tag
"likely" that is found at a measured AUROC below 0.9, and its intervals must narrow as n grows."""
import numpy as np
import pytest
import torch

from caption_evaluator.captions.data import captioned_shapes
from caption_evaluator.captions.denoiser import ddpm_alphas_cumprod, train_caption_denoiser
from caption_evaluator.captions.edits import other_captions, probe_caption_edits, word_swaps
from caption_evaluator.ranking import auroc

SIZES, SUBSETS = (20, 40, 100), 6


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = captioned_shapes(1200, noise=0.2, seed=0)
    model = train_caption_denoiser(data, steps=1000, hidden=256, seed=0, progress=False)
    return data, model


def probe(model, images, captions, strategy):
    return probe_caption_edits(model, model.encode_captions, images, captions, strategy, ddpm_alphas_cumprod(), n_timesteps=2, progress=False)


def measured_by_tag(data, model):
    "Each attribute tag's AUROC on all items, from the labels: its own margin, items wrong in it against the clean ones."
    full = probe(model, data.images, data.captions, word_swaps(data.vocabulary))
    attr, bad = np.array([a or "" for a in data.corrupted_attribute]), data.corrupted.numpy()
    out = {}
    for tag, m in full.tag_margins.items():
        sel = ((attr == "") | (attr == tag)) & np.isfinite(m.numpy())
        out[tag] = auroc(m.numpy()[sel], bad[sel])
    return out


def test_no_tag_is_likely_that_the_labels_refute_and_intervals_narrow_with_n(trained):
    data, model = trained
    truth = measured_by_tag(data, model)
    rng, widths, undecided = np.random.default_rng(0), {}, {}
    for n in SIZES:
        widths[n], undecided[n] = [], []
        for _ in range(SUBSETS):
            idx = np.sort(rng.choice(len(data), n, replace=False))
            caps = [data.captions[i] for i in idx]
            cal = probe(model, data.images[idx], caps, word_swaps(data.vocabulary)).calibration
            for tag, c in cal.items():
                assert not (c["verdict"] == "likely" and truth[tag] < 0.9), (n, tag, c, truth[tag])
                lo, hi = c["expected_interval"]
                if hi == hi: widths[n].append(hi - lo)
                undecided[n].append(c["verdict"].startswith("cannot tell"))
    assert np.mean(widths[20]) > np.mean(widths[40]) > np.mean(widths[100]), {n: np.mean(w) for n, w in widths.items()}
    assert np.mean(undecided[20]) >= np.mean(undecided[100]), undecided


def test_whole_captions_get_no_label_free_estimate(trained):
    "Other items' captions differ in several words: they stand in for no real error, so no 'likely' from them, at any n."
    data, model = trained
    idx = np.arange(40)
    caps = [data.captions[i] for i in idx]
    cal = probe(model, data.images[idx], caps, other_captions(caps)).calibration
    assert [c["verdict"] for c in cal.values()] == ["no label-free estimate: its alternatives are not word edits (plant wrong words to measure it)"]
