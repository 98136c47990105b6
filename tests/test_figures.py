"""Every figure the demos, the CLI, the widgets and the tutorials write shows all its text: `clipped_text` is
empty for each. The figures are caught where they are saved (`Figure.savefig`), so a new figure anywhere
in these paths is checked without a list to keep up to date."""
import contextlib
import io
import warnings
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from caption_evaluator.views.run_plots import clipped_text

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def saved_figures():
    "Every Figure saved inside the block, in order."
    caught, original = [], Figure.savefig
    def record(self, *a, **kw):
        caught.append(self)
        return original(self, *a, **kw)
    Figure.savefig = record
    try: yield caught
    finally: Figure.savefig = original


def check(figures, what):
    assert figures, f"{what} saved no figure"
    bad = {f"{what} #{i} ({', '.join(ax.get_label() for ax in f.axes if ax.get_label())})": c
           for i, f in enumerate(figures) if (c := clipped_text(f))}
    assert not bad, f"clipped text: {bad}"


def test_demo_figures(tmp_path):
    from caption_evaluator.demos.caption import run_caption_demo
    from caption_evaluator.demos.label_noise import run_demo
    with saved_figures() as figs, contextlib.redirect_stdout(io.StringIO()):
        run_caption_demo(tmp_path / "captions", steps=200, verbose=False, progress=False)
        run_demo(tmp_path / "labels", epochs=3, verbose=False, tensorboard=False)
    check(figs, "demo")


def test_cli_and_widget_figures(tmp_path):
    import torch
    from caption_evaluator.cli import main
    from caption_evaluator.evaluation.models import DigitsMLP
    from caption_evaluator.evaluation.results import save_results
    from caption_evaluator.evaluation.router import TextLMAdapter, VisionClassificationAdapter, run_eval
    from caption_evaluator.evaluation.tasks import build_eval_config
    from caption_evaluator.views.widgets import CompareView, EvalView
    torch.manual_seed(0)
    mlp = DigitsMLP()
    vision = run_eval(mlp, VisionClassificationAdapter(), build_eval_config("vision_tiny"), progress=False)
    root = tmp_path / "runs"
    one = save_results(vision, results_dir=root, model_type="DigitsMLP")
    save_results({"sblimp": {"accuracy": 0.6, "samples": 100, "correct": 60}}, results_dir=root, model_type="baseline")
    save_results({"sblimp": {"accuracy": 0.55, "samples": 100, "correct": 55}, "swuggy": {"accuracy": 0.7, "samples": 100, "correct": 70},
                  "librilight": {"loss_4k": 2.6, "loss_8k": 2.5, "loss_16k": 2.45, "slope": -1.5e-5}},
                 results_dir=root, model_type="a rather long model type name · r=16")
    with saved_figures() as figs, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        assert main(["plot", "--run", str(one)]) == 0
        assert main(["plot", "--compare-all", str(root)]) == 0
        view = EvalView({"DigitsMLP": mlp}, {"vision": VisionClassificationAdapter(), "text": TextLMAdapter()}, results_dir=tmp_path / "ev")
        view.task.value = "vision_tiny"
        view.run()
        view.fig.savefig(io.BytesIO(), format="png")
        compare = CompareView(root)
        compare.fig.savefig(io.BytesIO(), format="png")
    check(figs, "cli/widgets")


def test_item_figures(tmp_path):
    "The per-item figures of the tutorials: long item keys, a log-scaled histogram, a diff between two saves."
    import torch
    from caption_evaluator.tracking.aggregator import StreamingAggregator
    from caption_evaluator.views.item_plots import plot_item_diff, plot_item_loss_histogram, plot_worst_items
    agg, g = StreamingAggregator(), torch.Generator().manual_seed(0)
    keys = [f"dataset/a_rather_deep/folder/structure/image_{i:05d}_with_a_long_name.png" for i in range(200)]
    agg.update("train", keys, torch.rand(200, generator=g) * 3)
    first = agg.save_json(tmp_path, "job", 1)
    agg.update("train", keys, torch.rand(200, generator=g) * 3)
    second = agg.save_json(tmp_path, "job", 2)
    with saved_figures() as figs:
        plot_item_loss_histogram(second, log=True, output=tmp_path / "hist.png")
        plot_worst_items(second, k=20, output=tmp_path / "worst.png")
        plot_item_diff(first, second, k=10, output=tmp_path / "diff.png")
    check(figs, "items")
