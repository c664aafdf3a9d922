"""Refine-only on a finished run folder (server/downstream.py), without Flower.

The run folder is made by the in-process FedE reference (client.kge.centralized) on Nations
split over 2 clients, 2 rounds, tiny dims: the whole test takes well under a minute.
"""

from __future__ import annotations

import csv
import json

import pytest

from client.kge.config import KGEConfig
from server.downstream import RunFolderError, main, refine_run_folder

SIMSKIP = {
    "simskip-rounds": 2,
    "simskip-local-epochs": 1,
    "simskip-batch-size": 16,
    "simskip-hidden-dim": 8,
    "simskip-projection-dim": 4,
    "simskip-no-skip-ablation": True,
    "refit-epochs": 2,
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from client.kge.centralized import run_fede_in_process
    from kg_datasets import load_federated

    folder = tmp_path_factory.mktemp("run")
    kg = load_federated("Nations", num_clients=2, seed=0)
    kg.write(folder / "data")
    config = KGEConfig(embedding_dim=8, batch_size=128, num_negs_per_pos=4, learning_rate=1e-2, eval_every=1)
    result = run_fede_in_process(kg, config, 2, device="cpu", out_dir=folder, progress=lambda line: None)
    run_config = {
        "setting": "fede",
        "client-data-root": str(folder / "data"),
        "client-output-root": str(folder / "clients"),
        **SIMSKIP,
    }
    (folder / "config.json").write_text(json.dumps({"run_config": run_config, "kge": config.to_run_config()}))
    return folder, result


@pytest.fixture(scope="module")
def refined(run_dir):
    """The SimSkip phase and the downstream protocols run once on ``run_dir`` (every test that reads
    their files asks for this: under pytest-xdist the tests of a module may run on different workers,
    so none may rely on another test having run first)."""
    folder, _ = run_dir
    lines: list[str] = []
    written = refine_run_folder(folder, device="cpu", log=lines.append)
    return lines, written


def test_refine_only_writes_every_row_and_file(run_dir, refined) -> None:
    folder, fede = run_dir
    lines, written = refined
    assert {"json", "csv", "md", "simskip_loss", "refined_vs_unrefined"} <= set(written)
    results = json.loads((folder / "results.json").read_text())
    labels = ["as-trained", "relation-refit:trained", "adapter", "finetune"]
    assert list(results["protocols"]) == labels
    assert results["clients"] == ["0", "1", "overall"]
    for label in labels:
        entry = results["protocols"][label]
        assert list(entry["rows"]) == ["unrefined", "refined", "perturbed", "refined-no-skip"]
        assert set(entry["gain_points"]) == {"refined", "perturbed", "refined-no-skip"}
        for client in results["clients"]:
            assert set(entry["intervals"][client]) == {
                f"{p}.mrr:{c}"
                for p in ("standard", "fede")
                for c in ("refined-unrefined", "refined-perturbed", "perturbed-unrefined", "refined-no-skip-unrefined")
            }
            assert entry["verdict"][client]["standard.mrr"] in ("gain", "loss", "none")
        for client in ("0", "1"):
            refined = entry["displacement"]["refined"][client]["mean"]
            # equal up to float32 rounding of x + delta (the displacement here is ~4e-4 of a row)
            assert entry["displacement"]["perturbed"][client]["mean"] == pytest.approx(refined, rel=1e-3)
    # the as-trained protocol's unrefined row is the FedE model itself: FedE's own best-round test
    for client, metrics in fede["test"]["clients"].items():
        cell = results["protocols"]["as-trained"]["rows"]["unrefined"][str(client)]["standard.mrr"]
        assert cell["mean"] == pytest.approx(metrics["mrr"], abs=1e-6)
    # one progress line per tested (client, protocol, seed, row), one per trained run as it ends
    # (unrefined, 2 candidates, perturbed, no-skip, for the 3 trained protocols), and the report
    # names the displacement
    assert sum("[downstream] client" in line and "test MRR" in line for line in lines) == 2 * 4 * 4
    assert (
        sum("[downstream] client" in line and "after" in line and "epochs (best" in line for line in lines) == 2 * 3 * 5
    )
    md = (folder / "results.md").read_text()
    assert "SimSkip displacement" in md and "## Downstream protocol `finetune`" in md
    simskip = [json.loads(line) for line in (folder / "simskip_metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in simskip] == [1, 2]
    assert (folder / "refined" / "0" / "refined.npy").is_file()
    with (folder / "results.csv").open() as handle:
        # protocols x clients x (4 rows + 3 gains) x (mean, std)
        assert len(list(csv.DictReader(handle))) == 4 * 3 * 7 * 2
    downstream = json.loads((folder / "downstream.json").read_text())
    assert set(downstream["clients"]) == {"0", "1"}
    assert (folder / "downstream_rr.npz").is_file()


def test_report_regenerates_from_the_run_folder_files(run_dir, refined) -> None:
    from server.report import write_report

    folder, _ = run_dir
    before = json.loads((folder / "results.json").read_text())
    write_report(folder, title=before["title"], notes=before["notes"])
    assert json.loads((folder / "results.json").read_text())["protocols"] == before["protocols"]


def test_refine_only_errors_name_the_problem(tmp_path, run_dir, capsys) -> None:
    with pytest.raises(RunFolderError, match="config.json: missing"):
        refine_run_folder(tmp_path)
    folder, _ = run_dir
    with pytest.raises(RunFolderError, match="simskip-rounds is 0"):
        refine_run_folder(folder, {"simskip-rounds": 0})
    assert main([str(tmp_path)]) == 1
    assert "config.json" in capsys.readouterr().err


def test_simskip_sim_refine_only_runs_the_phase_on_the_folder(run_dir, tmp_path, capsys) -> None:
    import shutil

    from server.simulation import main as sim_main

    # a copy: this run rewrites results.json with other protocols, which the shared folder's
    # readers must not see
    folder = tmp_path / "run"
    shutil.copytree(run_dir[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config["run_config"]["client-data-root"] = str(folder / "data")
    config["run_config"]["client-output-root"] = str(folder / "clients")
    (folder / "config.json").write_text(json.dumps(config))
    assert (
        sim_main(
            [
                "--refine-only",
                str(folder),
                "--set",
                "simskip-rounds=1",
                "--set",
                "simskip-no-skip-ablation=false",
                "--set",
                'downstream-protocols="as-trained,relation-refit"',
                "--set",
                'refit-init="trained,fresh"',
                "--set",
                "downstream-seeds=2",
            ]
        )
        == 0
    )
    results = json.loads((folder / "results.json").read_text())
    assert list(results["protocols"]) == ["as-trained", "relation-refit:trained", "relation-refit:fresh"]
    assert list(results["protocols"]["as-trained"]["rows"]) == ["unrefined", "refined", "perturbed"]
    assert results["protocols"]["as-trained"]["seeds"] == [0, 1]
    assert results["run"]["refinement"]["simskip-rounds"] == 1
    assert len((folder / "simskip_metrics.jsonl").read_text().splitlines()) == 1
    assert sim_main(["--refine-only", str(folder), "--set", "simskip-bogus=1"]) == 2
    assert "simskip-bogus" in capsys.readouterr().err
    assert sim_main(["--refine-only", str(folder), "--set", 'downstream-protocols="as-trained,bogus"']) == 2
    assert "unknown protocol 'bogus'" in capsys.readouterr().err


def test_bench_downstream_times_each_protocol_on_the_folder(run_dir, tmp_path) -> None:
    from conftest import load_script

    folder, _ = run_dir
    bench = load_script("bench_downstream")
    out = tmp_path / "bench.json"
    assert (
        bench.main(
            [str(folder), "--protocols", "as-trained", "relation-refit", "--set", "refit-epochs=1", "--out", str(out)]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert list(report["protocols"]) == ["as-trained", "relation-refit:trained"]
    for entry in report["protocols"].values():
        assert entry["seconds"] > 0 and set(entry["clients"]) == {"0", "1"}
        assert set(entry["clients"]["0"]["rows"]) >= {"unrefined", "refined", "perturbed"}


def _without_seconds(value):
    """``value`` with every ``seconds`` key dropped (wall-clock figures differ between two runs)."""
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def test_an_interrupted_refine_resumes_after_its_last_finished_unit(run_dir, refined, tmp_path, monkeypatch) -> None:
    import shutil

    import server.downstream as downstream
    from server.checkpoint import REFINE_CHECKPOINT_DIR

    source, _ = run_dir
    folder = tmp_path / "run"
    outputs = {"refined", "results.json", "results.md", "results.csv", "downstream.json", "downstream_rr.npz"}
    shutil.copytree(source, folder, ignore=lambda _d, names: [n for n in names if n in outputs or n.endswith(".png")])
    config = json.loads((folder / "config.json").read_text())
    config["run_config"]["client-output-root"] = str(folder / "clients")
    (folder / "config.json").write_text(json.dumps(config))
    evaluate = downstream.evaluate_client_rows
    evaluated: list[int] = []

    def dies_on_the_second_client(graph, *args, **kwargs):
        evaluated.append(graph.num_entities)
        if len(evaluated) == 2:
            raise KeyboardInterrupt("killed")  # what a SIGINT does mid-client
        return evaluate(graph, *args, **kwargs)

    monkeypatch.setattr(downstream, "evaluate_client_rows", dies_on_the_second_client)
    with pytest.raises(KeyboardInterrupt):
        refine_run_folder(folder, device="cpu", log=lambda line: None)
    checkpoint = folder / REFINE_CHECKPOINT_DIR
    assert sorted(p.name for p in checkpoint.iterdir()) == ["client-0.json", "client-0.npz", "simskip.json"]
    assert not (folder / "downstream.json").exists()

    # the rerun trains no encoder and evaluates only client 1
    def no_simskip(*args, **kwargs):
        raise AssertionError("the SimSkip phase ran again")

    def counted(graph, *args, **kwargs):
        evaluated.append(graph.num_entities)
        return evaluate(graph, *args, **kwargs)

    monkeypatch.setattr(downstream, "run_refinement", no_simskip)
    monkeypatch.setattr(downstream, "evaluate_client_rows", counted)
    evaluated.clear()
    lines: list[str] = []
    refine_run_folder(folder, device="cpu", log=lines.append)
    assert len(evaluated) == 1
    assert any("SimSkip phase restored" in line for line in lines)
    assert any("client 0: downstream record restored" in line for line in lines)
    assert not checkpoint.exists()
    resumed = json.loads((folder / "downstream.json").read_text())
    whole = json.loads((source / "downstream.json").read_text())
    assert resumed["restored_from_checkpoint"]["simskip"] is True
    assert resumed["restored_from_checkpoint"]["clients"] == ["0"]
    assert resumed["restored_from_checkpoint"]["seconds"] > 0
    # the same records as the uninterrupted run of the same folder
    assert _without_seconds(resumed["clients"]) == _without_seconds(whole["clients"])
    tables = [json.loads((f / "results.json").read_text())["protocols"] for f in (folder, source)]
    assert _without_seconds(tables[0]) == _without_seconds(tables[1])


def test_a_refine_checkpoint_of_another_config_is_discarded(tmp_path) -> None:
    import numpy as np

    from server.downstream import _RefineCheckpoint

    folder = tmp_path / "run"
    rows = {"0": {"refined": np.ones((3, 2), dtype="float32")}}
    written = _RefineCheckpoint(folder, {"run_config": {"refit-epochs": 2}}, log=lambda line: None)
    written.save_refined(rows, 1.5)
    written.save_client("0", {"protocols": {}}, {"x": np.zeros(2)}, 2.0)
    lines: list[str] = []
    same = _RefineCheckpoint(folder, {"run_config": {"refit-epochs": 2}}, log=lines.append)
    assert same.load_refined({"0": (3, 2)})["0"]["refined"].shape == (3, 2)
    assert same.load_client("0")[2] == 2.0 and same.restored["seconds"] == 3.5
    assert same.load_refined({"0": (4, 2)}) is None  # rows of another shape: SimSkip runs again
    assert "do not match" in lines[-1]
    other = _RefineCheckpoint(folder, {"run_config": {"refit-epochs": 3}}, log=lines.append)
    assert other.load_refined({"0": (3, 2)}) is None and other.load_client("0") is None
    assert "written under another config" in lines[-1] and other.restored == {}
    (folder / "refine_checkpoint" / "client-0.json").write_text("{not json")
    assert same.load_client("0") is None and "unreadable" in lines[-1]


def test_the_refine_checkpoint_key_names_the_inputs() -> None:
    """Same config, rows trained again: another key, so nothing of the earlier call is restored."""
    import numpy as np

    from server.downstream import _input_digests

    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    relations = {"model/relation": np.ones((2, 2), dtype=np.float32)}
    first = _input_digests({"0": {"rows": rows, "relation_state": relations}})
    assert first == _input_digests({"0": {"rows": rows.copy(), "relation_state": dict(relations)}})
    assert first != _input_digests({"0": {"rows": rows + 1e-6, "relation_state": relations}})
    assert first != _input_digests({"0": {"rows": rows, "relation_state": {"model/relation": np.zeros((2, 2))}}})
    assert first != _input_digests({"0": {"rows": rows, "relation_state": None}})
