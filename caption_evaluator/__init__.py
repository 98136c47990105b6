"""Find the dataset items your model finds hard, evaluate with modality-aware metrics, save every result with its metadata, and compare runs."""

__version__ = "0.1.0"

# The names a user reaches for first are importable from the package root. Each is imported from its module on
# first use (`__getattr__` below), so `import caption_evaluator` and the `caption-eval` CLI stay fast: torch,
# matplotlib and ipywidgets load only when something needs them. Editors and type checkers read these imports.
from typing import TYPE_CHECKING as _TYPE_CHECKING

if _TYPE_CHECKING:
    from .losses import compute_per_example_loss, loss_and_per_example
    from .aggregator import StreamingAggregator
    from .snapshots import load_item_stats, diff_item_stats, rank_items
    from .evaluate import evaluate_dataset
    from .training import ItemLossTracker
    from .tasks import TaskSpec, EvalConfig, build_eval_config, register_task, get_task, list_tasks
    from .core import wilson_interval
    from .metrics import compute_topk_accuracy, accuracy_stats, ClassificationMetric, TokenLMMetric, PairMetric, PositionLossMetric
    from .router import ModelAdapter, TextLMAdapter, VisionClassificationAdapter, PairwiseLikelihoodAdapter, LongContextAdapter, run_eval
    from .results import save_results, load_run, discover_runs, RunRecord
    from .loggers import ConsoleLogger, TensorBoardLogger, WandbLogger
    from .plotting import plot_run, plot_comparison, plot_confusion_matrix, plot_item_loss_histogram, plot_worst_items, plot_item_diff
    from .widgets import EvalView, CompareView, ItemLossExplorer
    from .demo import run_demo
    from .probe import probe_captions
    from .caption_edits import probe_caption_edits, word_swaps
    from .caption_data import captioned_digits, captioned_shapes
    from .denoiser import train_caption_denoiser

from importlib import import_module as _import_module

_ROOT_NAMES = {
    "losses": ["compute_per_example_loss", "loss_and_per_example"],
    "aggregator": ["StreamingAggregator"],
    "snapshots": ["load_item_stats", "diff_item_stats", "rank_items"],
    "evaluate": ["evaluate_dataset"],
    "training": ["ItemLossTracker"],
    "tasks": ["TaskSpec", "EvalConfig", "build_eval_config", "register_task", "get_task", "list_tasks"],
    "core": ["wilson_interval"],
    "metrics": ["compute_topk_accuracy", "accuracy_stats", "ClassificationMetric",
                "TokenLMMetric", "PairMetric", "PositionLossMetric"],
    "router": ["ModelAdapter", "TextLMAdapter", "VisionClassificationAdapter", "PairwiseLikelihoodAdapter",
               "LongContextAdapter", "run_eval"],
    "results": ["save_results", "load_run", "discover_runs", "RunRecord"],
    "loggers": ["ConsoleLogger", "TensorBoardLogger", "WandbLogger"],
    "plotting": ["plot_run", "plot_comparison", "plot_confusion_matrix", "plot_item_loss_histogram", "plot_worst_items",
                 "plot_item_diff"],
    "widgets": ["EvalView", "CompareView", "ItemLossExplorer"],
    "demo": ["run_demo"],
    "probe": ["probe_captions"],
    "caption_edits": ["probe_caption_edits", "word_swaps"],
    "caption_data": ["captioned_digits", "captioned_shapes"],
    "denoiser": ["train_caption_denoiser"],
}
_MODULE_OF = {name: module for module, names in _ROOT_NAMES.items() for name in names}
__all__ = list(_MODULE_OF)

def __getattr__(name):
    "Import a root name from its module on first use."
    if name not in _MODULE_OF: raise AttributeError(f"module 'caption_evaluator' has no attribute {name!r}")
    value = getattr(_import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value

def __dir__(): return sorted(set(globals()) | set(_MODULE_OF))
