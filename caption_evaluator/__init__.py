__version__ = "0.1.0"

"""caption_evaluator: per-item loss tracking, modality-aware evaluation, saved results and run comparison.

The names a user reaches for first are importable from the package root. Plotting and widgets are loaded on
first use, so `import caption_evaluator` stays light (no matplotlib or ipywidgets import)."""

from importlib import import_module as _import_module

from .losses import compute_per_example_loss
from .aggregator import StreamingAggregator, load_item_stats, diff_item_stats
from .evaluate import evaluate_dataset
from .training import ItemLossTracker
from .tasks import TaskSpec, EvalConfig, build_eval_config, register_task, get_task, list_tasks
from .metrics import (compute_topk_accuracy, accuracy_stats, wilson_interval, ClassificationMetric, TokenLMMetric,
                      PairMetric, PositionLossMetric)
from .router import (ModelAdapter, TextLMAdapter, VisionClassificationAdapter, PairwiseLikelihoodAdapter,
                     LongContextAdapter, run_eval)
from .results import save_results, load_run, discover_runs, RunRecord
from .loggers import ConsoleLogger, TensorBoardLogger, WandbLogger

_LAZY = {"plot_run": "plotting", "plot_comparison": "plotting", "plot_item_loss_histogram": "plotting",
         "plot_worst_items": "plotting", "plot_item_diff": "plotting",
         "EvalView": "widgets", "CompareView": "widgets", "ItemLossExplorer": "widgets", "run_demo": "demo"}

__all__ = ["compute_per_example_loss", "StreamingAggregator", "load_item_stats", "diff_item_stats",
           "evaluate_dataset", "ItemLossTracker", "TaskSpec", "EvalConfig", "build_eval_config", "register_task",
           "get_task", "list_tasks", "compute_topk_accuracy", "accuracy_stats", "wilson_interval",
           "ClassificationMetric", "TokenLMMetric", "PairMetric", "PositionLossMetric", "ModelAdapter",
           "TextLMAdapter", "VisionClassificationAdapter", "PairwiseLikelihoodAdapter", "LongContextAdapter",
           "run_eval", "save_results", "load_run", "discover_runs", "RunRecord", "ConsoleLogger",
           "TensorBoardLogger", "WandbLogger", *_LAZY]

def __getattr__(name):
    "Import plotting, widgets and the demo on first use of one of their names."
    if name not in _LAZY: raise AttributeError(f"module 'caption_evaluator' has no attribute {name!r}")
    return getattr(_import_module(f"{__name__}.{_LAZY[name]}"), name)

def __dir__(): return sorted(set(globals()) | set(_LAZY))
