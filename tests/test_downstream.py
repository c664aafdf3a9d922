"""Refine-only on a finished run folder (server/downstream.py), without Flower.

The run folder is made by the in-process FedE reference (client.kge.centralized) on Nations
split over 2 clients, 2 rounds, tiny dims: the whole test takes well under a minute.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from client.kge.config import KGEConfig
from server.downstream import RunFolderError, load_client_inputs, main, refine_run_folder

SIMSKIP = {
    "simskip-rounds": 2, "simskip-local-epochs": 1, "simskip-batch-size": 16, "simskip-hidden-dim": 8,
    "simskip-projection-dim": 4, "simskip-no-skip-ablation": True, "refit-epochs": 2,
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
    run_config = {"setting": "fede", "client-data-root": str(folder / "data"), "client-output-root": str(folder / "clients"), **SIMSKIP}
    (folder / "config.json").write_text(json.dumps({"run_config": run_config, "kge": config.to_run_config()}))
    return folder, result


def test_refine_only_writes_every_row_and_file(run_dir) -> None:
    folder, fede = run_dir
    written = refine_run_folder(folder, device="cpu", log=lambda line: None)
    assert {"json", "csv", "md", "simskip_loss", "refined_vs_unrefined"} <= set(written)
    results = json.loads((folder / "results.json").read_text())
    assert list(results["rows"]) == ["fede-as-trained", "unrefined", "refined", "refined-gated", "refined-no-skip"]
    assert results["clients"] == ["0", "1", "overall"]
    assert set(results["gain_points"]) == {"refined", "refined-gated", "refined-no-skip"}
    # the as-trained row re-evaluates the FedE model: it matches FedE's own best-round test
    for client, metrics in fede["test"]["clients"].items():
        assert results["rows"]["fede-as-trained"][str(client)]["standard.mrr"] == pytest.approx(metrics["mrr"], abs=1e-6)
    simskip = [json.loads(line) for line in (folder / "simskip_metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in simskip] == [1, 2]
    assert (folder / "refined" / "0" / "refined.npy").is_file()
    with (folder / "results.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3 * 8
    _check_gate(folder, results)


def _check_gate(folder, results) -> None:
    """Every client's gate is recorded (downstream.json, results.json, results.md) and its row and
    refined-gated.npy are those of the chosen alpha."""
    downstream = json.loads((folder / "downstream.json").read_text())
    inputs = load_client_inputs(folder, json.loads((folder / "config.json").read_text())["run_config"])
    assert set(downstream["gate"]) == {"0", "1"} and results["gate"] == downstream["gate"]
    md = (folder / "results.md").read_text()
    assert "Skip-strength gate" in md
    for client, gate in downstream["gate"].items():
        assert list(gate["valid_mrr"]) == ["0", "0.25", "0.5", "1"] and all(0 < v <= 1 for v in gate["valid_mrr"].values())
        assert gate["alpha"] in (0.0, 0.25, 0.5, 1.0) and gate["selection"] == "as-trained" and gate["protocol"] == "standard"
        best = max(gate["valid_mrr"].values())
        assert gate["alpha"] == min(float(a) for a, v in gate["valid_mrr"].items() if v == best)
        assert f"- client {client}: alpha = {gate['alpha']:g} " in md
        rows = results["rows"]
        if gate["alpha"] in (0.0, 1.0):
            same = "unrefined" if gate["alpha"] == 0.0 else "refined"
            assert rows["refined-gated"][client] == rows[same][client]
        gated = np.load(folder / "refined" / client / "refined-gated.npy")
        refined = np.load(folder / "refined" / client / "refined.npy")
        fede = inputs[client]["rows"]
        np.testing.assert_allclose(gated, fede + gate["alpha"] * (refined - fede), rtol=1e-5, atol=1e-6)


def test_refine_only_errors_name_the_problem(tmp_path, run_dir, capsys) -> None:
    with pytest.raises(RunFolderError, match="config.json: missing"):
        refine_run_folder(tmp_path)
    folder, _ = run_dir
    with pytest.raises(RunFolderError, match="simskip-rounds is 0"):
        refine_run_folder(folder, {"simskip-rounds": 0})
    assert main([str(tmp_path)]) == 1
    assert "config.json" in capsys.readouterr().err


def test_simskip_sim_refine_only_runs_the_phase_on_the_folder(run_dir, capsys) -> None:
    from server.simulation import main as sim_main

    folder, _ = run_dir
    assert sim_main(["--refine-only", str(folder), "--set", "simskip-rounds=1", "--set", "simskip-no-skip-ablation=false"]) == 0
    results = json.loads((folder / "results.json").read_text())
    assert list(results["rows"]) == ["fede-as-trained", "unrefined", "refined", "refined-gated"]
    assert results["run"]["refinement"]["simskip-rounds"] == 1
    assert len((folder / "simskip_metrics.jsonl").read_text().splitlines()) == 1
    assert sim_main(["--refine-only", str(folder), "--set", "simskip-bogus=1"]) == 1
    assert "simskip-bogus" in capsys.readouterr().err
    # the gate is off with an empty grid: no gated row, no gate records
    assert sim_main(["--refine-only", str(folder), "--set", "simskip-rounds=1", "--set", "simskip-no-skip-ablation=false",
                     "--set", "simskip-gate-grid=none", "--set", "refit-epochs=1"]) == 0
    results = json.loads((folder / "results.json").read_text())
    assert list(results["rows"]) == ["fede-as-trained", "unrefined", "refined"] and "gate" not in results
    assert sim_main(["--refine-only", str(folder), "--set", "simskip-gate-grid=0.5,1"]) == 1
    assert "lacks 0" in capsys.readouterr().err
