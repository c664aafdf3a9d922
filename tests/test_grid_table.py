"""scripts/grid_table.py: the paper's table holds the evaluator's numbers, lists what did not run,
and keeps README.md's at-a-glance block and docs/results/grid.md in step with the committed grid."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import PROJECT_ROOT, load_script

FIXTURE = PROJECT_ROOT / "results" / "fed3-transe-search-all" / "results.json"
SPLIT = "FB15k-237-Fed3"


def _grid_table():
    return load_script("grid_table")


gt = _grid_table()


def _cell(folder, results: dict, **cell) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "cell.json").write_text(json.dumps({"dataset": SPLIT, "status": "done", **cell}))


@pytest.fixture
def results() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture
def grid(tmp_path, results):
    """TransE: the real report, as-trained verdict gain / none; DistMult: the same report with the
    as-trained verdict turned into none / loss; TransE's isolation cell still running."""
    root = tmp_path / "grid"
    _cell(root / SPLIT / "TransE", results, model="TransE", setting="fede", run_seconds=1234.5, refine_seconds=61.2,
          device="cpu", load_average=[1.23, 1.5, 2.0], kge_rounds_run=20, kge_best_round=19)  # fmt: skip
    changed = copy.deepcopy(results)
    changed["protocols"]["as-trained"]["verdict"]["overall"] = {"standard.mrr": "none", "fede.mrr": "loss"}
    _cell(root / SPLIT / "DistMult", changed, model="DistMult", setting="fede", run_seconds=600.0,
          refine_seconds=300.4, device="cuda:NVIDIA H200")  # fmt: skip
    _cell(root / SPLIT / "TransE" / "isolation", results, model="TransE", setting="isolation", status="running")
    return root


def _rows(table: str) -> dict[tuple[str, str], list[str]]:
    """Main-table rows keyed by (model, method); the model column is blank after a group's first row."""
    rows, model = {}, None
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 11 and cells[2] not in ("method", "---"):
            model = cells[1] or model
            rows[(model, cells[2])] = cells[3:]
    return rows


def _fmt(value: dict) -> str:
    return f"{round(100 * value['mean'], 1):.1f} ± {round(100 * value['std'], 1):.1f}"


def test_main_table_holds_the_evaluators_numbers(grid, results):
    table = gt.build_table(grid)
    rows = _rows(table)
    assert [method for model, method in rows if model == "TransE"] == ["FedE", "FedE + SimSkip", "perturbed"]
    overall = {row: v["overall"] for row, v in results["protocols"]["as-trained"]["rows"].items()}
    fede_row = rows[("TransE", "FedE")]
    assert fede_row[0] == _fmt(overall["unrefined"]["standard.mrr"])
    assert fede_row[0] == f"{round(100 * overall['unrefined']['standard.mrr']['mean'], 1):.1f} ± 0.0"
    for i, metric in enumerate(gt.METRICS):
        assert fede_row[i] == _fmt(overall["unrefined"][metric])
        assert rows[("TransE", "perturbed")][i] == _fmt(overall["perturbed"][metric])
    assert rows[("TransE", "FedE + SimSkip")][3] == _fmt(overall["refined"]["standard.hits@10"])
    # the verdicts of the fixture: as-trained gain (standard) / none (fede)
    assert results["protocols"]["as-trained"]["verdict"]["overall"] == {"standard.mrr": "gain", "fede.mrr": "none"}
    assert rows[("TransE", "FedE + SimSkip")][0] == _fmt(overall["refined"]["standard.mrr"]) + " **gain**"
    assert rows[("TransE", "FedE + SimSkip")][4] == _fmt(overall["refined"]["fede.mrr"])
    # DistMult's copy says none / loss: no bold mark, loss plain
    assert rows[("DistMult", "FedE + SimSkip")][0] == _fmt(overall["refined"]["standard.mrr"])
    assert rows[("DistMult", "FedE + SimSkip")][4] == _fmt(overall["refined"]["fede.mrr"]) + " loss"
    main = table.split(gt.MAIN_CAPTION)[1].split("not run:")[0]
    assert main.count("**gain**") == 1  # TransE's SimSkip row
    # models in the paper's order, a running cell not shown
    assert list(dict.fromkeys(model for model, _ in rows)) == ["TransE", "DistMult"]
    assert ("TransE", "isolation") not in rows


def test_protocol_table_has_every_protocol_with_intervals(grid, results):
    table = gt.build_table(grid)
    entry = results["protocols"]["relation-refit:trained"]
    gain = entry["gain_points"]["refined"]["overall"]["fede.mrr"]["mean"]
    interval = entry["intervals"]["overall"]["fede.mrr:refined-unrefined"]
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {SPLIT} | TransE | simskip | relation-refit"))
    assert f"{gain:+.2f} [{interval['lo']:+.2f}, {interval['hi']:+.2f}]" in line
    assert line.endswith("| **gain** / **gain** |")
    section = table.split(gt.PROTOCOL_CAPTION)[1].split(gt.TIME_CAPTION)[0]
    for model in ("TransE", "DistMult"):
        labels = [ln.split("|")[4].strip() for ln in section.splitlines() if ln.startswith(f"| {SPLIT} | {model} |")]
        assert labels == ["as-trained", "relation-refit:trained", "adapter", "finetune"]


def _summary(table: str) -> dict[tuple[str, str], list[str]]:
    """Summary rows keyed by (model, row); the model column is blank after a group's first row."""
    section = table.split(gt.SUMMARY_CAPTION)[1].split(gt.MAIN_CAPTION)[0]
    rows, model = {}, None
    for line in section.splitlines()[3:]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            model = cells[0] or model
            rows[(model, cells[1])] = cells[2:]
    return rows


def test_summary_table_has_each_protocols_gain_and_verdict_per_split(grid, results):
    fed5 = "FB15k-237-Fed5"
    _cell(grid / fed5 / "TransE" / "structure", results, setting="fede", variant="structure")
    table = gt.build_table(grid)
    header = next(ln for ln in table.splitlines() if ln.startswith("| model | row |"))
    assert header == "| model | row | Fed3 | Fed5 |"  # only the splits with a finished cell
    rows = _summary(table)
    protocols = results["protocols"]
    unrefined = protocols["as-trained"]["rows"]["unrefined"]["overall"]["standard.mrr"]["mean"]
    # Fed5 has only a structure cell: FedE's MRR from it, no plain-SimSkip protocol there
    assert rows[("TransE", "FedE (MRR)")] == [f"{100 * unrefined:.1f}"] * 2
    gains = {p: e["gain_points"]["refined"]["overall"]["standard.mrr"]["mean"] for p, e in protocols.items()}
    assert rows[("TransE", "as-trained")] == [f"{gains['as-trained']:+.2f} **gain**", gt.DASH]  # the fixture's gain
    assert rows[("DistMult", "as-trained")] == [f"{gains['as-trained']:+.2f}", gt.DASH]  # verdict none
    assert rows[("TransE", "structure")] == [gt.DASH, f"{gains['as-trained']:+.2f} **gain**"]
    assert ("DistMult", "structure") not in rows  # no structure cell for DistMult anywhere
    assert [row for model, row in rows if model == "TransE"] == [
        "FedE (MRR)",
        "as-trained",
        "relation-refit:trained",
        "adapter",
        "finetune",
        "structure",
    ]
    for label in ("relation-refit:trained", "adapter", "finetune"):
        verdict = protocols[label]["verdict"]["overall"]["standard.mrr"]
        mark = {"gain": " **gain**", "loss": " loss"}.get(verdict, "")
        assert rows[("TransE", label)][0] == f"{gains[label]:+.2f}{mark}"


def test_wall_time_total_is_the_sum(grid):
    table = gt.build_table(grid)
    total = next(ln for ln in table.splitlines() if ln.startswith("| **total**"))
    run, refine = 1234.5 + 600.0, 61.2 + 300.4
    assert f"| 2 cells | | {run / 60:.1f} | {refine / 60:.1f} | {(run + refine) / 60:.1f} |" in total
    transe = next(ln for ln in table.splitlines() if ln.startswith(f"| {SPLIT} | TransE | simskip | 20 (19) | 20.6 |"))
    assert "| 20.6 | 1.0 | 21.6 | cpu | 1.2 / 1.5 / 2.0 |" in transe
    # a cell that did not record its rounds shows a dash, not a guess
    assert f"| {SPLIT} | DistMult | simskip | – | 10.0 | 5.0 | 15.0 | cuda:NVIDIA H200 | – |" in table


def test_missing_cells_are_listed_as_not_run(grid):
    line = next(ln for ln in gt.build_table(grid).splitlines() if ln.startswith("not run:"))
    assert f"{SPLIT}/TransE (structure, isolation [running], collection)" in line
    assert f"{SPLIT}/DistMult (structure, isolation, collection)" in line
    assert f"{SPLIT}/ComplEx (all)" in line and f"{SPLIT}/RotatE (all)" in line
    for split in ("FB15k-237-Fed5", "FB15k-237-Fed10", "FB15k-237-R10-FedLU"):
        assert f"{split} (all)" in line


def test_structure_and_baselines_rows(grid, results):
    _cell(grid / SPLIT / "DistMult" / "structure", results, setting="fede", variant="structure", run_seconds=1.0)
    _cell(grid / SPLIT / "DistMult" / "collection", results, setting="collection", run_seconds=2.0)
    table = gt.build_table(grid)
    rows = _rows(table)
    methods = [method for model, method in rows if model == "DistMult"]
    assert methods == [
        "FedE",
        "FedE + SimSkip",
        "perturbed",
        "FedE + SimSkip-structure",
        "perturbed (structure)",
        "collection",
    ]
    unrefined = results["protocols"]["as-trained"]["rows"]["unrefined"]["overall"]["standard.mrr"]
    assert rows[("DistMult", "collection")][0] == _fmt(unrefined)
    assert rows[("DistMult", "FedE + SimSkip-structure")][0].endswith(" **gain**")
    assert f"| {SPLIT} | DistMult | structure | as-trained |" in table
    assert "| **total** | | 4 cells | |" in table
    assert f"{SPLIT}/DistMult (isolation)" in table


def test_empty_grid(tmp_path):
    table = gt.build_table(tmp_path / "absent")
    assert table.startswith("No cell of the grid has finished yet.")
    assert "not run: FB15k-237-Fed3 (all); FB15k-237-Fed5 (all)" in table


def test_replace_block_keeps_the_rest_and_fails_without_markers():
    text = f"# Title\n\nbefore\n{gt.START}\nold\nlines\n{gt.END}\nafter\n"
    new = gt.replace_block(text, "| a |\n")
    assert new == f"# Title\n\nbefore\n{gt.START}\n| a |\n{gt.END}\nafter\n"
    assert gt.replace_block(new, "| a |\n") == new  # idempotent
    with pytest.raises(ValueError, match="exactly one '<!-- grid-table:start -->' marker, found 0"):
        gt.replace_block("# Title\nno block\n", "| a |")
    with pytest.raises(ValueError, match="found 0"):
        gt.replace_block(f"{gt.START}\nno end\n", "| a |")
    with pytest.raises(ValueError, match="found 2"):
        gt.replace_block(f"{gt.START}\n{gt.END}\n{gt.START}\n", "| a |")
    with pytest.raises(ValueError, match="comes before"):
        gt.replace_block(f"{gt.END}\n{gt.START}\n", "| a |")


def test_write_then_check(grid, tmp_path, capsys):
    readme, page = tmp_path / "README.md", tmp_path / "grid.md"
    readme.write_bytes(f"# T\r\n\r\n{gt.SUMMARY_START}\nstale\n{gt.SUMMARY_END}\r\nrest\r\n".encode())
    page.write_bytes(f"# Grid\n\nprose\n{gt.START}\nstale\n{gt.END}\nmore prose\n".encode())
    args = ["--grid", str(grid), "--readme", str(readme), "--page", str(page)]
    assert gt.main([*args, "--check"]) == 1
    assert "differs from what" in capsys.readouterr().err
    assert gt.main([*args, "--write"]) == 0
    text = readme.read_bytes().decode()
    assert text.startswith("# T\r\n\r\n") and text.endswith(f"{gt.SUMMARY_END}\r\nrest\r\n")  # the rest byte for byte
    # the README holds the at-a-glance table only, linking to the page with every table
    assert gt.build_summary(grid).strip() in text
    assert gt.MAIN_CAPTION not in text and "docs/results/grid.md" in text
    full = page.read_bytes().decode()
    assert full.startswith("# Grid\n\nprose\n") and full.endswith(f"{gt.END}\nmore prose\n")
    assert gt.build_table(grid).strip() in full
    assert not list(tmp_path.glob(".README.md.*")) and not list(tmp_path.glob(".grid.md.*"))  # renamed
    assert gt.main([*args, "--check"]) == 0
    page.write_text("# no markers\n")
    assert gt.main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert "marker" in err and str(page) in err


def test_summary_rows_match_the_full_tables_summary(grid):
    """The README's block is the page's at-a-glance table, with its caption's pointers made README links."""
    summary, full = gt.build_summary(grid), gt.build_table(grid)
    table = [ln for ln in summary.splitlines() if ln.startswith("|")]
    assert table and "\n".join(table) in full
    assert gt.SUMMARY_RULE not in summary and "docs/concepts/verdict.md" in summary


def test_committed_readme_and_page_match_committed_grid():
    grid = PROJECT_ROOT / "results" / "grid"
    if not any(entry["cell"].get("status") == "done" for entry in gt.load_cells(grid).values()):
        pytest.skip(f"no finished cell under {grid} yet (scripts/run_experiments.py has not written the grid)")
    assert gt.main(["--check"]) == 0, "a grid table is stale: python scripts/grid_table.py --write"
