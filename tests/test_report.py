"""Results table (Markdown/CSV/JSON) per downstream protocol: seeds, gains, intervals, plots (server/report.py).

The per-client records are written here by hand (the shape of
:func:`client.kge.comparison.evaluate_client_rows`), with reciprocal ranks whose means are the
records' MRRs, so every figure of the table can be checked against a computation in the test.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from client.kge.comparison import rr_key
from server.report import (
    COLUMNS,
    ReportInputError,
    build_results_table,
    load_jsonl,
    save_ranks,
    write_report,
    write_results,
)

STANDARD = ("mrr", "hits@1", "hits@3", "hits@10")
FEDE = ("mrr", "hits@1", "hits@5", "hits@10")
N = {"0": 30, "1": 10}
#: per (client, row): a base value; seed s adds 0.01 * s
BASE = {
    ("0", "unrefined"): 0.25,
    ("0", "refined"): 0.30,
    ("0", "perturbed"): 0.26,
    ("1", "unrefined"): 0.45,
    ("1", "refined"): 0.44,
    ("1", "perturbed"): 0.45,
}


def _ranks(mean: float, n: int, seed: int) -> np.ndarray:
    """Reciprocal ranks with exactly this mean (so MRR and the ranks agree); the same seed gives the
    same spread, so rows drawn with one seed differ by a constant (a clear paired difference)."""
    values = mean + 0.05 * np.random.default_rng(seed).standard_normal(n)
    return values + (mean - values.mean())


def fixture(seeds=(0, 1), label="relation-refit:trained"):
    clients, ranks = {}, {}
    for client, n in N.items():
        per_seed = {}
        for seed in seeds:
            rows = {}
            for row in ("unrefined", "refined", "perturbed"):
                base = BASE[(client, row)] + 0.01 * seed
                rows[row] = {
                    "test": {
                        "standard": {**{m: base + 0.01 * i for i, m in enumerate(STANDARD)}, "num_triples": n},
                        "fede": {**{m: base + 0.1 + 0.01 * i for i, m in enumerate(FEDE)}, "num_triples": n},
                    },
                    "valid": base,
                    "curve": [base],
                    "best_epoch": 0,
                    "epochs": 1,
                    "seconds": 0.1,
                    "init": "trained",
                    "displacement": 0.0 if row == "unrefined" else 0.2,
                }
                for protocol, offset in (("standard", 0.0), ("fede", 0.1)):
                    ranks.setdefault(client, {})[rr_key(label, seed, row, protocol)] = _ranks(
                        base + offset, n, 100 * int(client) + 10 * seed + len(protocol)
                    )
            per_seed[str(seed)] = rows
        clients[client] = {
            "protocols": {label: {"seeds": per_seed, "selection": {"chosen": {"setting": 0, "alpha": 1.0}}}},
            "protocol_order": [label],
            "skipped": {},
            "simskip_displacement": {"refined": 0.2},
        }
    return clients, ranks


def test_rows_are_mean_std_over_seeds_weighted_overall_and_gains_in_points() -> None:
    clients, ranks = fixture()
    table = build_results_table(clients, ranks, resamples=500)
    assert table["clients"] == ["0", "1", "overall"] and table["num_test"] == {"0": 30, "1": 10, "overall": 40}
    entry = table["protocols"]["relation-refit:trained"]
    assert entry["seeds"] == [0, 1] and list(entry["rows"]) == ["unrefined", "refined", "perturbed"]
    cell = entry["rows"]["refined"]["overall"]["standard.mrr"]
    per_seed = [(30 * (0.30 + 0.01 * s) + 10 * (0.44 + 0.01 * s)) / 40 for s in (0, 1)]  # by hand
    assert cell["seeds"] == pytest.approx(per_seed) and cell["mean"] == pytest.approx(np.mean(per_seed))
    assert cell["std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert entry["gain_points"]["refined"]["0"]["standard.mrr"]["mean"] == pytest.approx(5.0)
    assert entry["gain_points"]["refined"]["1"]["fede.hits@5"]["mean"] == pytest.approx(-1.0)
    assert entry["displacement"]["refined"]["0"]["mean"] == pytest.approx(0.2)


def test_intervals_are_the_paired_bootstrap_of_the_seed_averaged_rank_differences() -> None:
    from client.kge.significance import paired_bootstrap

    clients, ranks = fixture()
    table = build_results_table(clients, ranks, resamples=500, bootstrap_seed=3)
    entry = table["protocols"]["relation-refit:trained"]
    label = "relation-refit:trained"

    def diff(client, row, base):
        return 100 * np.mean(
            [
                ranks[client][rr_key(label, s, row, "standard")] - ranks[client][rr_key(label, s, base, "standard")]
                for s in (0, 1)
            ],
            axis=0,
        )

    expected = paired_bootstrap(
        np.concatenate([diff("0", "refined", "unrefined"), diff("1", "refined", "unrefined")]), resamples=500, seed=3
    )
    got = entry["intervals"]["overall"]["standard.mrr:refined-unrefined"]
    assert got["lo"] == pytest.approx(expected["lo"]) and got["hi"] == pytest.approx(expected["hi"])
    assert got["mean"] == pytest.approx((30 * 5.0 + 10 * -1.0) / 40)
    # client 0: refined beats unrefined (+5) and perturbed (+4) clearly -> a gain; client 1 loses 1 point
    assert entry["verdict"]["0"]["standard.mrr"] == "gain"
    assert entry["verdict"]["1"]["standard.mrr"] in ("loss", "none")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda c, r: c.clear(), "no client results"),
        (lambda c, r: c["1"]["protocols"].clear(), "reports protocols"),
        (lambda c, r: c["1"]["protocols"]["relation-refit:trained"]["seeds"].pop("1"), "other seeds or rows"),
        (
            lambda c, r: c["1"]["protocols"]["relation-refit:trained"]["seeds"].clear(),
            "client 1: relation-refit:trained: no seeds",
        ),
        (
            lambda c, r: c["0"]["protocols"]["relation-refit:trained"]["seeds"]["0"]["refined"]["test"]["fede"].pop(
                "hits@5"
            ),
            "a client lacks fede metrics",
        ),
        (
            lambda c, r: r["0"].pop(rr_key("relation-refit:trained", 0, "refined", "fede")),
            "client 0: reciprocal ranks 'relation-refit:trained/0/refined/fede': expected a float array of 30 values",
        ),
        (
            lambda c, r: r["1"].__setitem__(rr_key("relation-refit:trained", 0, "refined", "fede"), np.ones(3)),
            "client 1: .* expected a float array of 10 values",
        ),
        (
            lambda c, r: r["1"].__setitem__(rr_key("relation-refit:trained", 0, "refined", "fede"), np.full(10, 2.0)),
            "outside \\(0, 1\\]",
        ),
        (
            lambda c, r: c["0"]["protocols"]["relation-refit:trained"]["seeds"]["0"].__setitem__("bogus-row", {}),
            "not among",
        ),
    ],
)
def test_bad_input_is_named(mutate, match) -> None:
    clients, ranks = fixture()
    mutate(clients, ranks)
    with pytest.raises(ReportInputError, match=match):
        build_results_table(clients, ranks, resamples=100)


def test_files_hold_every_field(tmp_path) -> None:
    clients, ranks = fixture(seeds=(0,))
    paths = write_results(tmp_path, clients, ranks, title="T", notes=["note one"], extra={"refit_epochs": 3})
    payload = json.loads(paths["json"].read_text())
    assert payload["title"] == "T" and payload["notes"] == ["note one"] and payload["run"] == {"refit_epochs": 3}
    assert payload["columns"] == [f"{p}.{m}" for p, m in COLUMNS]
    with paths["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * (3 + 2) * 2  # clients x (rows + gains) x (mean, std)
    md = paths["md"].read_text()
    assert md.startswith("# T\n") and "- note one" in md
    assert "## Downstream protocol `relation-refit:trained` (seeds [0])" in md
    assert "| overall | refined-unrefined |" in md and "**gain**" in md
    assert "| 0 (n=30) | gain refined (pts) | +5.00 |" in md  # one seed: no ± std


def test_write_report_from_a_run_folder_writes_tables_and_plots(tmp_path) -> None:
    clients, ranks = fixture()
    (tmp_path / "downstream.json").write_text(json.dumps({"clients": clients, "setting": "fede"}))
    save_ranks(tmp_path / "downstream_rr.npz", ranks)
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"round": 1, "valid_overall": {"mrr": 0.1}, "valid": {"0": {"mrr": 0.1}, "1": {"mrr": 0.2}}},
                {"round": 2, "valid_overall": {"mrr": 0.2}, "valid": {"0": {"mrr": 0.2}, "1": {"mrr": 0.3}}},
            ]
        )
        + "\n"
    )
    (tmp_path / "simskip_metrics.jsonl").write_text(
        json.dumps({"round": 1, "simskip_loss_overall": {"refined": 3.0}, "simskip_loss": {"0": {"refined": 3.1}}})
        + "\n"
    )
    written = write_report(tmp_path)
    assert {"json", "csv", "md", "valid_mrr", "simskip_loss", "refined_vs_unrefined"} <= set(written)
    for name in ("valid_mrr.png", "simskip_loss.png", "refined_vs_unrefined.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "results.json").read_text())["run"] == {"setting": "fede"}


def test_missing_or_malformed_inputs_name_the_file(tmp_path) -> None:
    with pytest.raises(ReportInputError, match="downstream.json: no downstream results"):
        write_report(tmp_path)
    (tmp_path / "downstream.json").write_text("{broken")
    with pytest.raises(ReportInputError, match="downstream.json: malformed JSON"):
        write_report(tmp_path)
    (tmp_path / "downstream.json").write_text(json.dumps({"rows": {}}))
    with pytest.raises(ReportInputError, match="'clients' object"):
        write_report(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"round": 1}\nnot json\n')
    with pytest.raises(ReportInputError, match="bad.jsonl:2"):
        load_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "downstream.json").write_text(json.dumps({"clients": fixture()[0]}))
    (tmp_path / "downstream_rr.npz").write_bytes(b"not an npz")
    with pytest.raises(ReportInputError, match="downstream_rr.npz"):
        write_report(tmp_path)
