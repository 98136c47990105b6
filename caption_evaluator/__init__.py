"""Find the dataset items your model finds hard, evaluate with modality-aware metrics, save every result with its metadata, and compare runs."""

__version__ = "0.1.0"

# The names a user reaches for first are importable from the package root. Each is imported from its module on
# first use (`__getattr__` below), so `import caption_evaluator` and the `caption-eval` CLI stay fast: torch,
# matplotlib and ipywidgets load only when something needs them. Editors and type checkers read these imports.
from typing import TYPE_CHECKING as _TYPE_CHECKING

if _TYPE_CHECKING:
    from .tracking.losses import compute_per_example_loss, loss_and_per_example
    from .tracking.aggregator import StreamingAggregator
    from .tracking.snapshots import load_item_stats, diff_item_stats, rank_items
    from .tracking.evaluate import evaluate_dataset
    from .tracking.tracker import ItemLossTracker
    from .evaluation.tasks import TaskSpec, EvalConfig, build_eval_config, register_task, get_task, list_tasks
    from .core import wilson_interval
    from .evaluation.metrics import compute_topk_accuracy, accuracy_stats, ClassificationMetric, TokenLMMetric, PairMetric, PositionLossMetric
    from .evaluation.router import ModelAdapter, TextLMAdapter, VisionClassificationAdapter, PairwiseLikelihoodAdapter, LongContextAdapter, run_eval
    from .evaluation.results import save_results, load_run, discover_runs, RunRecord
    from .loggers import ConsoleLogger, TensorBoardLogger, WandbLogger
    from .views.run_plots import plot_run, plot_comparison, plot_confusion_matrix
    from .views.item_plots import plot_item_loss_histogram, plot_worst_items, plot_item_diff
    from .views.widgets import EvalView, CompareView, ItemLossExplorer
    from .demos.label_noise import run_demo
    from .captions.probe import probe_captions
    from .captions.edits import probe_caption_edits, word_swaps
    from .captions.data import captioned_digits, captioned_shapes
    from .captions.denoiser import train_caption_denoiser
    from .captions.schedules import as_schedule
    from .captions.pipelines import probe_pipeline
    from .captions.datasets import read_caption_dataset, CaptionDataset
    from .captions.slots import dataset_edits
    from .captions.check import check_captions
    from .captions.findings import CaptionCheck, check_from_probe
    from .demos.base_pipeline import load_base_pipeline
    from .demos.lora import train_flux_lora
    from .demos.lora_check import run_lora_demo

from importlib import import_module as _import_module

_ROOT_NAMES = {
    "tracking.losses": ["compute_per_example_loss", "loss_and_per_example"],
    "tracking.aggregator": ["StreamingAggregator"],
    "tracking.snapshots": ["load_item_stats", "diff_item_stats", "rank_items"],
    "tracking.evaluate": ["evaluate_dataset"],
    "tracking.tracker": ["ItemLossTracker"],
    "evaluation.tasks": ["TaskSpec", "EvalConfig", "build_eval_config", "register_task", "get_task", "list_tasks"],
    "core": ["wilson_interval"],
    "evaluation.metrics": ["compute_topk_accuracy", "accuracy_stats", "ClassificationMetric",
                "TokenLMMetric", "PairMetric", "PositionLossMetric"],
    "evaluation.router": ["ModelAdapter", "TextLMAdapter", "VisionClassificationAdapter", "PairwiseLikelihoodAdapter",
               "LongContextAdapter", "run_eval"],
    "evaluation.results": ["save_results", "load_run", "discover_runs", "RunRecord"],
    "loggers": ["ConsoleLogger", "TensorBoardLogger", "WandbLogger"],
    "views.run_plots": ["plot_run", "plot_comparison", "plot_confusion_matrix"],
    "views.item_plots": ["plot_item_loss_histogram", "plot_worst_items", "plot_item_diff"],
    "views.widgets": ["EvalView", "CompareView", "ItemLossExplorer"],
    "demos.label_noise": ["run_demo"],
    "captions.probe": ["probe_captions"],
    "captions.edits": ["probe_caption_edits", "word_swaps"],
    "captions.data": ["captioned_digits", "captioned_shapes"],
    "captions.denoiser": ["train_caption_denoiser"],
    "captions.schedules": ["as_schedule"],
    "captions.pipelines": ["probe_pipeline"],
    "captions.datasets": ["read_caption_dataset", "CaptionDataset"],
    "captions.slots": ["dataset_edits"],
    "captions.check": ["check_captions"],
    "captions.findings": ["CaptionCheck", "check_from_probe"],
    "demos.base_pipeline": ["load_base_pipeline"],
    "demos.lora": ["train_flux_lora"],
    "demos.lora_check": ["run_lora_demo"],
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
