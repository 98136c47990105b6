"""Per-item tracking: per-example losses, the streaming aggregator, snapshots, the training tracker and `evaluate_dataset`."""
