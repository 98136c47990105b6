"""The caption_eval extension inside ai-toolkit's own trainer (ostris/ai-toolkit at the pinned commit in
../shared/vendor), run in ai-toolkit's own environment (`make aitk` builds it; the test skips without it).
Expected values are the losses ai-toolkit itself returns at each step."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

from caption_evaluator.tracking.snapshots import load_item_stats

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PYTHON = Path(os.environ.get("AITK_PYTHON", ROOT / ".aitk-venv" / "bin" / "python"))


def run_job(tmp_path_factory, *mode):
    if not (PYTHON.exists() and (SHARED / "vendor" / "ai-toolkit").is_dir()):
        pytest.skip("ai-toolkit's environment is not built (make aitk) or ../shared/vendor/ai-toolkit is missing")
    work = tmp_path_factory.mktemp("aitk")
    p = subprocess.run([str(PYTHON), str(ROOT / "tests" / "aitk_job.py"), str(SHARED / "vendor" / "ai-toolkit"), str(SHARED / "aitk-harness"),
                        str(work), *mode], capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    line = next(l for l in p.stdout.splitlines() if l.startswith("AITK_RESULT "))
    return json.loads(line[len("AITK_RESULT "):])


@pytest.fixture(scope="module")
def run(tmp_path_factory): return run_job(tmp_path_factory)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory): return run_job(tmp_path_factory, "resume")


def check_losses(run):
    folder = Path(run["folder"])
    assert (folder / "tiny_lora.safetensors").exists()                          # ai-toolkit's own run completed and saved
    snaps = sorted((folder / ".item_stats").glob("tiny_lora_*.json"))
    assert snaps, sorted(p.name for p in folder.rglob("*"))
    stats = load_item_stats(snaps[-1])["datasets"]["train"]["item_stats"]
    seen = {}
    for _, paths, *_ in run["returned"]:
        for path in paths: seen[path] = seen.get(path, 0) + 1
    assert {k: s["count"] for k, s in stats.items()} == seen                    # every image of every step, keyed by its path
    total = sum(s["count"] * s["average_loss"] for s in stats.values())
    expected = sum(len(paths) * loss for _, paths, loss, _ in run["returned"])  # each step's mean is ai-toolkit's loss
    assert abs(total - expected) <= 1e-5 * abs(expected), (total, expected)
    dropped = {path: d for _, paths, _, flags in run["returned"] for path, d in zip(paths, flags)}
    assert {k: s["values"]["caption_dropped"]["last"] for k, s in stats.items()} == {k: float(d) for k, d in dropped.items()}
    return snaps


def test_every_items_loss_is_what_ai_toolkit_reduced(run):
    snaps = check_losses(run)
    assert len(snaps) <= 2                                                      # pruned as max_step_saves_to_keep: 2 prunes checkpoints


def test_a_resumed_run_counts_as_one_uninterrupted_run(resumed):
    "Three steps, then a second run that ai-toolkit resumes from the step-3 checkpoint: the statistics cover both parts."
    steps = [s for s, *_ in resumed["returned"]]
    assert len(steps) == 6 and steps[:3] == [0, 1, 2], steps
    check_losses(resumed)


def test_the_uis_diffusion_trainer_is_tracked_the_same_way(tmp_path_factory):
    check_losses(run_job(tmp_path_factory, "diffusion"))


def test_a_flow_model_records_sigma(tmp_path_factory):
    "FLUX.1 through ai-toolkit's flow-matching training: the same loss checks, and each record's timestep is σ = t/1000 in (0, 1]."
    snaps = check_losses(run_job(tmp_path_factory, "flux"))
    table = load_item_stats(snaps[-1])["datasets"]["train"]["timesteps"]
    assert (table["edges"][0], table["edges"][-1]) == (0.0, 1.0) and sum(table["count"]) > 0 and table["unbucketed"] == 0


def test_the_captions_trained_on_are_kept(run):
    folder = Path(run["folder"])
    captions = json.loads((folder / ".item_stats" / "tiny_lora.captions.json").read_text())
    assert captions == {p: Path(p).with_suffix(".txt").read_text() for p in captions} and len(captions) == 4


def test_snapshots_are_not_taken_for_weights(run):
    folder = Path(run["folder"])
    assert not list(folder.glob("tiny_lora_*.json"))                            # nothing next to the checkpoints ai-toolkit globs
    assert {p.suffix for p in (folder / ".item_stats").iterdir()} == {".json", ".pt"}       # snapshots and the tracker's resume state


@pytest.fixture(scope="module")
def features(tmp_path_factory): return run_job(tmp_path_factory, "features")


def test_masks_loss_multipliers_dropout_and_accumulation_reduce_as_ai_toolkit_does(features):
    """One epoch (each image once) of two datasets, masks and caption dropout in one, `loss_multiplier: 2` in the other, two batches per step:
    every batch's recorded losses average to the loss ai-toolkit returned for that batch."""
    snaps = check_losses(features)
    stats = load_item_stats(snaps[-1])["datasets"]["train"]["item_stats"]
    assert len(stats) == 8 and all(s["count"] == 1 for s in stats.values())
    assert [s for s, *_ in features["returned"]] == [0, 0, 1, 1]                  # gradient_accumulation: 2 batches per step
    for _, paths, loss, _ in features["returned"]:
        mean = sum(stats[p]["average_loss"] for p in paths) / len(paths)
        assert abs(mean - loss) <= 1e-5 * abs(loss), (paths, mean, loss)
    assert any(d for *_, flags in features["returned"] for d in flags)          # caption_dropout_rate 0.5 dropped some


def test_the_captions_kept_are_those_trained_on_with_the_trigger(features):
    "ai-toolkit's rule: `[trigger]` replaced by the trigger word, the word prepended where absent; a dropped caption is empty."
    folder = Path(features["folder"])
    captions = json.loads((folder / ".item_stats" / "tiny_lora.captions.json").read_text())
    dropped = {p for _, paths, _, flags in features["returned"] for p, d in zip(paths, flags) if d}
    def trained_on(path):
        raw = Path(path).with_suffix(".txt").read_text()
        return "" if path in dropped else raw.replace("[trigger]", "sks") if "[trigger]" in raw else f"sks {raw}"
    assert captions == {p: trained_on(p) for p in captions} and len(captions) == 8
