"""The shipped base pipeline (issue 22): it loads with diffusers' own `from_pretrained`, its weights are the ones the
pretraining script logged, it is small, and it draws what a caption says (colours measured on the pictures it
generates, against the world's own colour table)."""
import hashlib

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DiffusionPipeline, FluxPipeline  # noqa: E402

from caption_evaluator.demos.base_pipeline import BASE_PIPELINE, base_training_log  # noqa: E402


@pytest.fixture(scope="module")
def pipe():
    p = DiffusionPipeline.from_pretrained(BASE_PIPELINE)       # diffusers' own loader, on the folder inside the package
    p.set_progress_bar_config(disable=True)
    return p


def test_loads_as_a_flux_pipeline(pipe):
    "Every part a FLUX.1 pipeline has, of the classes diffusers and transformers name in model_index.json."
    assert isinstance(pipe, FluxPipeline)
    names = {k: type(v).__name__ for k, v in pipe.components.items()}
    assert names == {"scheduler": "FlowMatchEulerDiscreteScheduler", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel",
                     "tokenizer": "CLIPTokenizer", "text_encoder_2": "T5EncoderModel", "tokenizer_2": "T5Tokenizer",
                     "transformer": "FluxTransformer2DModel", "image_encoder": "NoneType", "feature_extractor": "NoneType"}, names


def test_weights_are_the_logged_ones():
    "Each weight file's SHA-256 equals the one the training script logged, no weight file is unlogged, and all of it is ≤ 25 MB."
    log = base_training_log()
    files = {p.relative_to(BASE_PIPELINE).as_posix(): p for p in BASE_PIPELINE.rglob("*.safetensors")}
    assert set(files) == set(log["sha256"]) and len(files) == 4, (sorted(files), sorted(log["sha256"]))
    for name, path in files.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == log["sha256"][name], name
    total = sum(p.stat().st_size for p in BASE_PIPELINE.rglob("*") if p.is_file())
    assert total <= 25 * 2**20, f"the shipped pipeline is {total / 2**20:.1f} MiB"


_RGB = {"red": (215, 45, 45), "blue": (45, 80, 220), "yellow": (235, 210, 40), "green": (40, 170, 60)}   # the world's colours, as drawn


def _object_colour(img: np.ndarray, background: float) -> np.ndarray:
    "The mean colour of the pixels far from the background's grey level."
    far = np.abs(img.astype(float) - background).max(-1) > 60
    return img[far].astype(float).mean(0) if far.sum() >= 4 else np.full(3, np.nan)


def test_draws_the_colour_a_caption_names(pipe):
    "Asked for a big circle of each colour on a white background, the object drawn is nearest to that colour (4 seeds each)."
    hits, asked = 0, 0
    for colour, rgb in _RGB.items():
        out = pipe(prompt=[f"a big {colour} circle in the middle on a white background"] * 4, negative_prompt=[""] * 4, true_cfg_scale=4.0,
                   height=32, width=32, num_inference_steps=16, max_sequence_length=32, output_type="np",
                   generator=[torch.Generator().manual_seed(s) for s in range(4)]).images
        assert out.shape == (4, 32, 32, 3) and np.isfinite(out).all()
        for img in (out * 255).round():
            got = _object_colour(img, 235)
            nearest = min(_RGB, key=lambda c: np.abs(np.array(_RGB[c]) - got).sum()) if np.isfinite(got).all() else None
            hits, asked = hits + (nearest == colour), asked + 1
    assert hits >= 0.8 * asked, f"{hits} of {asked} pictures drew the colour asked"
