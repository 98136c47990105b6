"""`caption-eval demo` as a new user runs it (issue 22): a 40-picture LoRA dataset with wrong captions, a LoRA on the
shipped base pipeline, the caption check on the base and LoRA'd pipeline, the story printed, and report.html opened in
headless Chromium (Debian's, driven by Playwright). The detection figures are recomputed here from the files the demo
wrote (captions.json, truth.json, the training snapshot) with scikit-learn's `roc_auc_score`."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
from sklearn.metrics import roc_auc_score  # noqa: E402

from caption_evaluator.cli import main  # noqa: E402

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium") if p and Path(p).exists()), None)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    "The default demo, run through the CLI's `main` as `caption-eval demo --output-dir DIR` runs it; its printed story and run folder."
    import contextlib, io
    out_dir, buf = tmp_path_factory.mktemp("demo") / "demo_output", io.StringIO()
    with contextlib.redirect_stdout(buf): code = main(["demo", "--output-dir", str(out_dir)])
    text = buf.getvalue()
    assert code == 0, text
    run_dir = Path(re.search(r"Run folder: (\S+)", text).group(1))
    assert run_dir.parent == out_dir
    return text, run_dir


def test_the_files_of_the_story(demo):
    "The dataset in ai-toolkit's layout, the truth beside it (not in it), the LoRA, the training snapshot and the check's files."
    _, run = demo
    assert len(list((run / "dataset").glob("*.png"))) == 40 and len(list((run / "dataset").glob("*.txt"))) == 40
    assert not (run / "dataset" / "truth.json").exists() and (run / "truth.json").is_file()
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert {"captions.json", "captions.csv", "report.html"} <= {p.name for p in run.iterdir()}
    assert list(run.glob("lora_training_*.json"))


def test_the_printed_story(demo):
    "The summary, the detection table with the four scores, and the commands to open the report and check one's own folder."
    text, run = demo
    for s in ("mean training loss", "timestep-normalised loss", "probe on base", "probe on LoRA", "python -m webbrowser", "check MY_DATASET --pipeline"):
        assert s in text, s
    assert "captions suspect" in text and "(the model prefers an edit" in text


def test_the_base_probe_finds_the_wrong_captions(demo):
    "From the files alone: 6 of 40 captions are wrong; the base model's score ranks them (AUROC ≥ 0.75), puts at least half of them first, more than the mean training loss does."
    _, run = demo
    truth = {r["file"]: r["wrong"] for r in json.loads((run / "truth.json").read_text())["items"]}
    items = json.loads((run / "captions.json").read_text())["items"]
    wrong = np.array([truth[it["key"]] for it in items])
    assert wrong.sum() == 6
    base = np.nan_to_num(np.array([np.nan if it["score"] is None else it["score"] for it in items], float), nan=-1e9)
    stats = json.loads(next(run.glob("lora_training_*.json")).read_text())["datasets"]["train"]["item_stats"]
    loss = np.array([stats[it["key"]]["average_loss"] for it in items])
    first = lambda score: wrong[np.argsort(-score, kind="stable")[:6]].mean()          # precision at k = the 6 wrong captions
    assert roc_auc_score(wrong, base) >= 0.75, roc_auc_score(wrong, base)
    assert first(base) >= 0.5 and first(base) > first(loss), (first(base), first(loss))


def test_the_report_opens_in_a_browser(demo, tmp_path):
    "Headless Chromium: no console or page error, no request leaves the file, 40 rows with their thumbnails; a screenshot is taken."
    if not CHROMIUM: pytest.skip("Chromium is not installed (`apt-get install chromium`; .ci/run does this)")
    from playwright.sync_api import sync_playwright
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
            page.goto((demo[1] / "report.html").as_uri(), wait_until="load")
            assert page.locator("#items tbody tr").count() == 40
            assert page.evaluate("Array.from(document.querySelectorAll('#items img')).every(i => i.complete && i.naturalWidth > 0)")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
        finally: browser.close()
    assert not errors and not requests, (errors, requests)
