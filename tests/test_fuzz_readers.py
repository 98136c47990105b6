"""Fuzzing the file readers with random mutations of real files: a results file from `save_results` and
item-stats snapshots (plain and gzip) from `StreamingAggregator.save_json`. Every reader either returns
something every listing can show, or raises an error that names the file; one bad file never hides the
good ones."""
import contextlib
import gzip
import io
import json
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from caption_evaluator.tracking.aggregator import StreamingAggregator
from caption_evaluator.cli import format_runs_table, items_table, main as cli_main
from caption_evaluator.evaluation.results import discover_runs, load_run, runs_table, save_results
from caption_evaluator.tracking.snapshots import available_scores, load_item_stats, rank_items

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("originals")
    res = {"digits": {"accuracy": 0.75, "samples": 40, "correct": 30, "ci_low": 0.6, "ci_high": 0.86,
                      "per_class": {"0": {"accuracy": 1.0, "support": 4}}}, "text": {"loss": 2.5, "perplexity": 12.2, "tokens": 99}}
    run_dir = save_results(res, results_dir=root / "runs", model_type="baseline")
    agg = StreamingAggregator(timestep_range=(0, 1000))
    g = torch.Generator().manual_seed(0)
    for s in range(5):
        agg.update("train", [f"img/{i}.png" for i in range(6)], torch.rand(6, generator=g), step=s,
                   timesteps=torch.randint(0, 1000, (6,), generator=g), values={"margin": torch.randn(6, generator=g)})
    snap = agg.save_json(root / "snaps", "job", 5)
    snap_gz = agg.save_json(root / "snaps", "jobgz", 5, gzip=True)
    return {"results": (run_dir / "results.json").read_bytes(), "snapshot": snap.read_bytes(), "snapshot_gz": snap_gz.read_bytes()}


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.integers(-10**400, 10**400) | st.floats() | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=8)


def paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items(): yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj): yield from paths(v, prefix + (i,))


def replaced(doc, path, value):
    if not path: return value
    cur = doc
    for k in path[:-1]: cur = cur[k]
    cur[path[-1]] = value
    return doc


@st.composite
def mutations(draw, raw: bytes):
    "A mutated file: a JSON value swapped somewhere, a hostile literal, deep nesting, or flipped/cut bytes."
    kind = draw(st.sampled_from(["value", "literal", "deep", "bytes", "cut"]))
    gz = raw[:2] == b"\x1f\x8b"
    text = (gzip.decompress(raw) if gz else raw).decode()
    if kind in ("value", "literal", "deep"):
        doc = json.loads(text)
        where = draw(st.sampled_from(list(paths(doc))))
        if kind == "value": new = json.dumps(replaced(doc, where, draw(json_values)))
        else:
            token = "@@HOSTILE@@"
            hostile = draw(st.sampled_from(["1e999", "-1e999", "9" * 500, "NaN", "Infinity"])) if kind == "literal" else "[" * 50_000 + "]" * 50_000
            new = json.dumps(replaced(doc, where, token)).replace(f'"{token}"', hostile)
        data = new.encode()
        return gzip.compress(data) if gz else data
    data = bytearray(raw)
    if kind == "cut": return bytes(data[:draw(st.integers(0, len(data) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1)); data[i] = draw(st.integers(0, 255))
    return bytes(data)


def names_the_file(err, path):
    return str(path) in str(err) or path.name in str(err)


@FUZZ
@given(st.data())
def test_results_reader(originals, tmp_path_factory, data):
    root = tmp_path_factory.mktemp("runs")
    good = root / "run_20250101_000000_good" / "results.json"
    good.parent.mkdir(); good.write_bytes(originals["results"])
    bad = root / "run_20250102_000000_bad" / "results.json"
    bad.parent.mkdir(); bad.write_bytes(data.draw(mutations(originals["results"])))
    try:
        run = load_run(bad)
        runs_table([run]); format_runs_table([run]); repr(run); run.time; run.tasks; run.interval("digits")
    except (ValueError, FileNotFoundError) as e:
        assert names_the_file(e, bad), e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        listed = discover_runs(root)
        assert good.parent.name in [r.name for r in listed]
        runs_table(listed)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(["runs", str(root)])
    assert code == 0 and good.parent.name in out.getvalue(), err.getvalue()


@FUZZ
@given(st.data(), st.sampled_from(["snapshot", "snapshot_gz"]))
def test_snapshot_reader(originals, tmp_path_factory, data, which):
    root = tmp_path_factory.mktemp("snaps")
    bad = root / ("job_000000005.json.gz" if which.endswith("gz") else "job_000000005.json")
    bad.write_bytes(data.draw(mutations(originals[which])))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["items", str(bad), "-k", "3"])
    assert code == 0 or (code == 1 and bad.name in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1), err.getvalue()
    try: doc = load_item_stats(bad)
    except (ValueError, FileNotFoundError) as e:
        assert names_the_file(e, bad), e
        return
    for name, block in doc["datasets"].items():
        stats = block["item_stats"]
        for by in [None, *available_scores(stats)]:
            rank_items(stats, by=by, k=3)
            items_table(doc, name, 3, by)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_comparison_plot_survives_a_bad_file(originals, tmp_path_factory, data):
    root = tmp_path_factory.mktemp("plot")
    for name, raw in (("run_20250101_000000_good", originals["results"]), ("run_20250102_000000_bad", data.draw(mutations(originals["results"])))):
        (root / name).mkdir(); (root / name / "results.json").write_bytes(raw)
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("ignore")
        code = cli_main(["plot", "--compare-all", str(root), "--output", str(root / "cmp.png")])
    assert code == 0 and (root / "cmp.png").is_file(), err.getvalue()
