"""The end of a run: the console summary (:func:`server.report.console_summary`), and the downstream
evaluation scoring the same rows as the KGE phase's test (:func:`client.refinement_app.scored_rows`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from client.protocol import ENTITY_ROWS_KEY, ROWS_ARRAY
from server.report import console_summary
from server.report_plots import PLOT_FILES


def _interval(mean, lo, hi):
    return {"mean": mean, "lo": lo, "hi": hi, "n": 655, "resamples": 10000, "confidence": 0.95}


def _protocol_entry(standard, fede, verdict):
    return {
        "intervals": {
            "overall": {
                "standard.mrr:refined-unrefined": _interval(*standard),
                "fede.mrr:refined-unrefined": _interval(*fede),
                "standard.mrr:refined-perturbed": _interval(9.0, 9.0, 9.0),  # another comparison: not shown
            }
        },
        "verdict": {"overall": {"standard.mrr": verdict[0], "fede.mrr": verdict[1]}, "0": {"standard.mrr": "gain"}},
    }


@pytest.fixture
def run_folder(tmp_path):
    final = {
        "setting": "fede",
        "best_round": 9,
        "rounds_run": 12,
        "clients": ["0", "1", "2"],
        "best_valid_overall": {"mrr": 0.71034},
        "test_overall": {"mrr": 0.72118},
        "test": {},
    }
    (tmp_path / "final_metrics.json").write_text(json.dumps(final))
    table = {
        "protocols": {
            "as-trained": _protocol_entry((-0.9306, -1.4365, -0.4858), (-1.0433, -1.6127, -0.5476), ("loss", "loss")),
            "adapter": _protocol_entry((0.584, 0.12, 1.05), (0.04, -1.27, 1.36), ("gain", "none")),
        }
    }
    (tmp_path / "results.json").write_text(json.dumps(table))
    for name in PLOT_FILES[:2]:
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def test_the_summary_gives_fedes_mrr_and_each_protocols_gain_interval_and_verdict(run_folder):
    lines = console_summary(run_folder).splitlines()
    assert lines[0] == f"Summary of {run_folder}"
    assert lines[1] == "  FedE (fede, 3 clients): test MRR 0.7212 at best round 9 of 12 (valid MRR 0.7103)"
    rows = {line.split()[0]: line.split(maxsplit=1)[1] for line in lines if line.startswith("    ") and "[" in line}
    assert rows["as-trained"].split() == [
        "-0.93",
        "[-1.44,",
        "-0.49]",
        "-1.04",
        "[-1.61,",
        "-0.55]",
        "loss",
        "/",
        "loss",
    ]
    assert rows["adapter"].split() == ["+0.58", "[+0.12,", "+1.05]", "+0.04", "[-1.27,", "+1.36]", "gain", "/", "none"]
    header = next(line for line in lines if "downstream protocol" in line)
    assert header.split() == ["downstream", "protocol", "standard", "fede", "verdict", "(standard", "/", "fede)"]
    # the table's columns line up
    assert len({line.index("[") for line in lines if line.startswith("    ") and "[" in line and "(" not in line}) == 1
    assert f"  results: {run_folder / 'results.md'}" in lines
    # the plots that exist, one per line, in reading order
    plots = lines[lines.index(f"  results: {run_folder / 'results.md'}") + 1 :]
    assert [p.split()[-1] for p in plots] == [str(run_folder / name) for name in PLOT_FILES[:2]]


def test_a_run_without_a_simskip_phase_or_final_metrics_says_so(tmp_path):
    text = console_summary(tmp_path)
    assert f"FedE: no readable {tmp_path / 'final_metrics.json'}" in text
    assert "SimSkip: no results.json" in text and "results:" not in text


def _rows_message(rows: np.ndarray) -> Message:
    content = RecordDict({ENTITY_ROWS_KEY: ArrayRecord({ROWS_ARRAY: Array(np.ascontiguousarray(rows))})})
    return Message(content=content, message_type="evaluate.downstream", dst_node_id=10)


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("transfer", ["float16", "float32"])
def test_the_simskip_phase_scores_the_rows_rounded_as_the_kge_phase_sent_them(transfer):
    from client.refinement_app import scored_rows

    rows = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    graph = type("Graph", (), {"num_entities": 5})()
    context = Context(run_id=1, node_id=10, node_config={}, state=RecordDict(), run_config={"transfer-dtype": transfer})
    got = scored_rows(_rows_message(rows), graph, context)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, rows.astype(transfer).astype(np.float32))
    if transfer == "float16":
        assert not np.array_equal(got, rows)  # the rounding is real: float32 rows are not float16 rows


KGE = {
    "embedding-dim": 32,
    "local-epochs": 1,
    "num-negs-per-pos": 4,
    "batch-size": 128,
    "eval-batch-size": 64,
    "learning-rate": 0.01,
    "eval-every": 1,
    "transfer-dtype": "float16",
}


@pytest.fixture(scope="module")
def nations(tmp_path_factory):
    from kg_datasets import load_federated

    out = tmp_path_factory.mktemp("nations") / "data"
    load_federated("Nations", num_clients=2, seed=0).write(out)
    return out


@pytest.mark.usefixtures("task_identity")
def test_the_downstream_unrefined_rows_score_exactly_as_the_kge_phases_test(nations, tmp_path):
    """Every metric of the as-trained protocol's unrefined row (both evaluation protocols' shared
    columns) equals the KGE phase's final test of the same client, the one ``final_metrics.json`` holds."""
    from tests.handler_grid import run_both_phases

    run_config = {
        **KGE,
        "client-data-root": str(nations),
        "client-output-root": str(tmp_path / "clients"),
        "simskip-rounds": 1,
        "simskip-local-epochs": 1,
        "downstream-protocols": "as-trained",
    }
    _, _, result, records, _ = run_both_phases(run_config, tmp_path, kge_rounds=2)
    assert set(result.test) == {"0", "1"}
    for client, metrics in result.test.items():
        unrefined = records[client]["protocols"]["as-trained"]["seeds"]["0"]["unrefined"]["test"]["standard"]
        assert {k: unrefined[k] for k in metrics if k in unrefined} == {
            k: v for k, v in metrics.items() if k in unrefined
        }, client
        assert unrefined["mrr"] == metrics["mrr"]


@pytest.mark.slow  # ~45-80 s on 2 cores: Ray and SuperLink start-up dominate
@pytest.mark.timeout(300)
def test_a_simulation_prints_plain_progress_then_the_summary_and_scores_the_same_rows(tmp_path, capfd):
    from server.simulation import main as sim_main

    run_dir = tmp_path / "run"
    args = ["--dataset", "UMLS", "--clients", "3", "--rounds", "2", "--run-dir", str(run_dir)]
    tiny = ["embedding-dim=8", "local-epochs=1", "num-negs-per-pos=4", "eval-every=1", "batch-size=256"]
    tiny += ["simskip-rounds=1", "simskip-local-epochs=1", "simskip-hidden-dim=16", 'downstream-protocols="as-trained"']
    for item in tiny:
        args += ["--set", item]
    assert sim_main(args) == 0
    out = capfd.readouterr().out
    assert "\x1b[" not in out and "pid=" not in out and "repeated" not in out
    lines = out.splitlines()
    last_progress = max(i for i, line in enumerate(lines) if "downstream: 3 of 3 clients done" in line)
    assert lines[last_progress + 1].startswith("[simskip-sim] done in ")
    assert lines[last_progress + 2 :] == console_summary(run_dir).splitlines()
    summary = lines[last_progress + 2 :]
    assert any(line.split()[:1] == ["as-trained"] for line in summary) and f"results: {run_dir / 'results.md'}" in out
    # the per-client lines went to each party's own log, not to the console
    assert "client 0: as-trained" not in out
    assert "as-trained seed 0 unrefined" in (run_dir / "clients" / "0" / "party.log").read_text()

    final = json.loads((run_dir / "final_metrics.json").read_text())
    downstream = json.loads((run_dir / "downstream.json").read_text())["clients"]
    for client, metrics in final["test"].items():
        unrefined = downstream[client]["protocols"]["as-trained"]["seeds"]["0"]["unrefined"]["test"]["standard"]
        assert unrefined["mrr"] == metrics["mrr"], client
