"""A snapshot's `batches` counts the training batches recorded, whatever the tracker's handover size."""
import json

import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from caption_evaluator.tracking.tracker import ItemLossTracker


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 40), st.integers(1, 70), st.lists(st.sampled_from(["train", "val"]), min_size=1, max_size=70))
def test_batches_count_record_calls(tmp_path, flush_every, calls, datasets):
    tracker = ItemLossTracker(tmp_path, "job", flush_every=flush_every)
    sequence = [datasets[i % len(datasets)] for i in range(calls)]
    for step, ds in enumerate(sequence): tracker.record(ds, [f"k{step % 5}", "x"], torch.rand(2), step=step)
    doc = json.loads(tracker.on_save(calls).read_text())
    for ds in set(sequence):
        assert doc["datasets"][ds]["summary"]["batches"] == sequence.count(ds)
