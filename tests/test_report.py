"""Results table (Markdown/CSV/JSON), gains in points, plots (server/report.py)."""

from __future__ import annotations

import csv
import json

import pytest

from server.report import (
    COLUMNS,
    ReportInputError,
    build_results_table,
    load_jsonl,
    write_report,
    write_results,
)

STANDARD = ("mrr", "hits@1", "hits@3", "hits@10")
FEDE = ("mrr", "hits@1", "hits@5", "hits@10")


def metrics(base: float, n: int) -> dict[str, dict[str, float]]:
    """Distinct values per metric so a mixed-up column would show."""
    return {
        "standard": {**{m: base + 0.01 * i for i, m in enumerate(STANDARD)}, "num_triples": n},
        "fede": {**{m: base + 0.1 + 0.01 * i for i, m in enumerate(FEDE)}, "num_triples": n},
    }


def downstream() -> dict:
    return {
        "fede-as-trained": {"0": metrics(0.20, 30), "1": metrics(0.40, 10)},
        "unrefined": {"0": metrics(0.25, 30), "1": metrics(0.45, 10)},
        "refined": {"0": metrics(0.30, 30), "1": metrics(0.44, 10)},
        "refined-gated": {"0": metrics(0.28, 30), "1": metrics(0.45, 10)},
        "refined-no-skip": {"0": metrics(0.10, 30), "1": metrics(0.12, 10)},
    }


def test_table_overall_is_weighted_by_test_size_and_gains_are_points() -> None:
    table = build_results_table(downstream())
    assert table["clients"] == ["0", "1", "overall"]
    assert list(table["rows"]) == ["fede-as-trained", "unrefined", "refined", "refined-gated", "refined-no-skip"]
    # overall = (30 * client0 + 10 * client1) / 40, computed by hand
    assert table["rows"]["refined"]["overall"]["standard.mrr"] == pytest.approx((30 * 0.30 + 10 * 0.44) / 40)
    assert table["rows"]["unrefined"]["overall"]["fede.hits@5"] == pytest.approx((30 * 0.37 + 10 * 0.57) / 40)
    assert table["num_test"] == {"0": 30, "1": 10, "overall": 40}
    assert table["gain_points"]["refined"]["0"]["standard.mrr"] == pytest.approx(5.0)
    assert table["gain_points"]["refined"]["1"]["fede.mrr"] == pytest.approx(-1.0)
    assert table["gain_points"]["refined-gated"]["0"]["standard.mrr"] == pytest.approx(3.0)
    assert table["gain_points"]["refined-gated"]["1"]["standard.mrr"] == pytest.approx(0.0)
    assert table["gain_points"]["refined-no-skip"]["overall"]["standard.hits@10"] == pytest.approx(
        100 * ((30 * 0.13 + 10 * 0.15) / 40 - (30 * 0.28 + 10 * 0.48) / 40))


def test_rows_not_run_are_absent_and_gain_needs_the_baseline() -> None:
    data = downstream()
    del data["refined-no-skip"]
    table = build_results_table(data)
    assert "refined-no-skip" not in table["rows"] and list(table["gain_points"]) == ["refined", "refined-gated"]
    assert build_results_table({"fede-as-trained": data["fede-as-trained"]})["gain_points"] == {}


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(other=d["refined"]), "unknown result row"),
        (lambda d: d["refined"].pop("1"), "clients"),
        (lambda d: d["refined"]["0"]["fede"].pop("hits@5"), "protocol .fede.*hits@5"),
        (lambda d: [m["fede"].pop("hits@5") for m in d["refined"].values()], "fede hits@5"),
        (lambda d: d["refined"]["0"].pop("fede"), "protocol 'fede'"),
    ],
)
def test_bad_input_is_named(mutate, match) -> None:
    data = downstream()
    mutate(data)
    with pytest.raises(ReportInputError, match=match):
        build_results_table(data)


def test_files_hold_every_field(tmp_path) -> None:
    paths = write_results(tmp_path, downstream(), title="T", notes=["budget: 1 epoch"], extra={"dataset": "X"})
    payload = json.loads(paths["json"].read_text())
    assert payload["run"] == {"dataset": "X"} and payload["notes"] == ["budget: 1 epoch"]
    with paths["csv"].open() as handle:
        records = list(csv.DictReader(handle))
    columns = [f"{p}.{m}" for p, m in COLUMNS]
    assert list(records[0]) == ["client", "row", "num_test", *columns]
    # 3 clients (0, 1, overall) x (5 rows + 3 gain rows)
    assert len(records) == 24
    kinds = {(r["client"], r["row"]) for r in records}
    for client in ("0", "1", "overall"):
        for row in ("fede-as-trained", "unrefined", "refined", "refined-gated", "refined-no-skip", "gain:refined:points",
                    "gain:refined-gated:points", "gain:refined-no-skip:points"):
            assert (client, row) in kinds
    assert all(r[c] not in ("", None) for r in records for c in columns)
    refined0 = next(r for r in records if (r["client"], r["row"]) == ("0", "refined"))
    assert float(refined0["standard.hits@3"]) == pytest.approx(0.32)
    md = paths["md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| client"))
    assert header.split(" | ")[2:] == columns[:-1] + [columns[-1] + " |"]
    assert md.count("| 0 (n=30) |") == 8 and md.count("| overall (n=40) |") == 8
    assert "gate" not in payload and "Skip-strength gate" not in md  # no gate records given
    assert "| 0 (n=30) | gain refined (pts) | +5.00 |" in md


def gate(alpha: float, protocol: str = "standard") -> dict:
    return {"alpha": alpha, "valid_mrr": {"0": 0.3, "0.25": 0.31, "0.5": 0.29, "1": 0.2}, "protocol": protocol,
            "split": "valid", "selection": "as-trained", "variant": "refined", "seconds": 0.1}


def test_gate_records_go_to_json_and_under_the_markdown_table(tmp_path) -> None:
    paths = write_results(tmp_path, downstream(), gate={"1": gate(0.0), "0": gate(0.25)})
    payload = json.loads(paths["json"].read_text())
    assert list(payload["gate"]) == ["0", "1"] and payload["gate"]["0"]["alpha"] == 0.25
    md = paths["md"].read_text().splitlines()
    last_table_line = max(i for i, line in enumerate(md) if line.startswith("|"))
    below = md[last_table_line + 1:]
    assert any("Skip-strength gate" in line and "standard protocol" in line for line in below)
    assert "- client 0: alpha = 0.25 (valid MRR 0: 0.3000, 0.25: 0.3100, 0.5: 0.2900, 1: 0.2000)" in below
    assert any(line.startswith("- client 1: alpha = 0 ") for line in below)


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ({"7": gate(0.0)}, r"client\(s\) \['7'\]"),
        ({"0": {"alpha": 0.5}}, "client 0: expected 'alpha' and a 'valid_mrr'"),
        ({"0": gate(0.75)}, "alpha 0.75 is not among the scored"),
    ],
)
def test_bad_gate_records_are_named(tmp_path, records, match) -> None:
    with pytest.raises(ReportInputError, match=match):
        write_results(tmp_path, downstream(), gate=records)
    assert not (tmp_path / "results.json").exists()  # nothing half-written


def test_write_report_from_a_run_folder_writes_tables_and_plots(tmp_path) -> None:
    (tmp_path / "downstream.json").write_text(json.dumps({"rows": downstream(), "refit_epochs": 3,
                                                          "gate": {"0": gate(0.25), "1": gate(0.0)}}))
    kge = [
        {"round": 1, "train": {}},
        {"round": 2, "valid": {"0": {"mrr": 0.2}, "1": {"mrr": 0.3}}, "valid_overall": {"mrr": 0.22}},
        {"round": 4, "valid": {"0": {"mrr": 0.3}, "1": {"mrr": 0.35}}, "valid_overall": {"mrr": 0.31}},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kge))
    simskip = [
        {"round": r, "simskip_loss": {"0": {"refined": 3.0 / r}, "1": {"refined": 2.9 / r}}, "simskip_loss_overall": {"refined": 2.95 / r}}
        for r in (1, 2, 3)
    ]
    (tmp_path / "simskip_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in simskip))
    written = write_report(tmp_path)
    assert set(written) == {"json", "csv", "md", "valid_mrr", "simskip_loss", "refined_vs_unrefined"}
    for name in ("valid_mrr", "simskip_loss", "refined_vs_unrefined"):
        assert written[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads(written["json"].read_text())
    assert results["run"] == {"refit_epochs": 3} and results["gate"]["1"]["alpha"] == 0.0


def test_missing_or_malformed_inputs_name_the_file(tmp_path) -> None:
    with pytest.raises(ReportInputError, match="downstream.json"):
        write_report(tmp_path)
    (tmp_path / "downstream.json").write_text("{")
    with pytest.raises(ReportInputError, match="downstream.json: malformed"):
        write_report(tmp_path)
    bad = tmp_path / "simskip_metrics.jsonl"
    bad.write_text('{"round": 1}\nnot json\n')
    with pytest.raises(ReportInputError, match=r"simskip_metrics.jsonl:2"):
        load_jsonl(bad)
