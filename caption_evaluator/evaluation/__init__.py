"""Modality-aware evaluation: tasks, small models, streaming metrics, the router (`run_eval`), results on disk and paper metrics."""
