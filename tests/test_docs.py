"""The documentation: generated pages match the code and the committed JSON, the site builds with
warnings as errors (broken internal links included), and the README stays short with working links."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT, load_script

gd = load_script("gen_docs")
README = PROJECT_ROOT / "README.md"


def test_generated_pages_are_up_to_date(capsys):
    assert gd.main(["--check"]) == 0, (
        "generated docs are stale: run `python scripts/gen_docs.py`\n" + capsys.readouterr().err
    )


def test_check_fails_with_a_diff_when_a_block_is_stale(tmp_path, monkeypatch, capsys):
    page = tmp_path / "page.md"
    start, end = gd.markers("demo")
    page.write_text(f"# Page\n\nhand-written\n{start}\nold\n{end}\ntail\n", encoding="utf-8")
    monkeypatch.setattr(gd, "ROOT", tmp_path)
    monkeypatch.setattr(gd, "BLOCKS", {"page.md": {"demo": lambda: "| new |"}})
    monkeypatch.setattr(gd, "grid_pages", dict)  # the grid's own blocks: tests/test_grid_table.py
    assert gd.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "-old" in err and "+| new |" in err and "page.md" in err
    assert page.read_text(encoding="utf-8").count("old") == 1  # --check writes nothing
    assert gd.main([]) == 0
    assert page.read_text(encoding="utf-8") == f"# Page\n\nhand-written\n{start}\n| new |\n{end}\ntail\n"
    assert not list(tmp_path.glob(".page.md.*"))  # the atomic write's temporary file was renamed
    page.write_text("# no markers\n", encoding="utf-8")
    assert gd.main(["--check"]) == 1
    assert "page.md: expected exactly one '<!-- gen:demo:start -->'" in capsys.readouterr().err


def _eval_run(started_at, walls, warnings=(), command="python scripts/bench_eval.py --combined-only"):
    """One scripts/bench_eval.py report: TransE's combined run with ``walls`` seconds (wall, and CPU = wall / 2)."""
    return {
        "command": command,
        "started_at": started_at,
        "machine": {"cpu": "Test CPU", "python": "3.11.7"},
        "data": "/data/fed3",
        "num_clients": 3,
        "test_triples": 31013,
        "torch_threads": 1,
        "cpu_count": 2,
        "fused_kernels": "auto",
        "torch_version": "2.13.0+cpu",
        "embedding_dim": 128,
        "models": {
            "TransE": {
                "warmup_seconds": 9.0,
                "runs": {"standard+fede": {"wall_seconds": walls, "cpu_seconds": walls / 2}},
            }
        },
        "kernels": {"file": "k.py", "sha256": "ab" * 32},
        "load_average_start": [walls / 10, 1.0, 1.0],
        "deprecation_warnings": [{"message": m, "raised_at": "x.py:1"} for m in warnings],
    }


def test_evaluation_table_gives_medians_commands_machine_and_load_per_file(tmp_path, monkeypatch):
    folder = tmp_path / "bench_eval"
    folder.mkdir()
    before = {
        "description": "before the change",
        "repetitions": [
            _eval_run("2026-01-01T00:00:00Z", wall, ["`x` is deprecated"], command=f"bench --out b{i}.json")
            for i, wall in enumerate((30.0, 10.0, 14.0))
        ],
    }
    (folder / "z-before.json").write_text(gd.json.dumps(before), encoding="utf-8")
    (folder / "a-after.json").write_text(gd.json.dumps(_eval_run("2026-01-02T00:00:00Z", 12.0)), encoding="utf-8")
    monkeypatch.setattr(gd, "RESULTS", tmp_path)
    block = gd.bench_eval_block()
    rows = [line for line in block.splitlines() if line.startswith("| `")]
    assert rows[0].startswith("| `z-before.json` | TransE | `standard+fede` | 3 | 14.0 (10.0–30.0) | 7.0 (5.0–15.0) |")
    assert "| 3 of 3 | 1.4 (1.0–3.0) |" in rows[0]  # every run warned; load at start: median (min–max)
    assert rows[1].startswith("| `a-after.json` | TransE | `standard+fede` | 1 | 12.0 | 6.0 | 9.0 | 0 of 1 | 1.2 |")
    assert "Test CPU, 2 CPUs, torch 2.13.0+cpu" in block and "31,013 test triples of `/data/fed3`" in block
    assert all(f"`bench --out b{i}.json`" in block for i in range(3))
    assert "DeprecationWarning: `'x' is deprecated`" in block and "DeprecationWarning: none raised" in block
    del before["repetitions"][1]["models"]["TransE"]["runs"]["standard+fede"]["wall_seconds"]
    (folder / "z-before.json").write_text(gd.json.dumps(before), encoding="utf-8")
    with pytest.raises(gd.DocsError, match="z-before.json: a run lacks 'wall_seconds'"):
        gd.bench_eval_block()


def _option_strings(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _option_strings(sub)
        else:
            yield from action.option_strings


def test_command_reference_names_every_command_and_option():
    block = gd.commands_block()
    scripts = gd.console_scripts()
    assert set(scripts) == {"simskip-sim", "simskip-server", "simskip-client", "simskip-data", "simskip-refine"}
    for command, target in scripts.items():
        assert f"## `{command}`" in block
        for option in _option_strings(gd._parser_of(target)):
            if option not in ("-h", "--help"):
                assert f"`{option}" in block, f"{command} {option} missing from the command reference"


def test_run_config_reference_has_every_key_with_its_default():
    from client.kge.run_config import REGISTRY

    block = gd.run_config_block()
    rows = {line.split("|")[1].strip(): line for line in block.splitlines() if line.startswith("| `")}
    assert set(rows) == {f"`{name}`" for name in REGISTRY}
    epochs = rows["`local-epochs`"]
    assert f"`{REGISTRY['local-epochs'].default}`" in epochs and "| int |" in epochs
    assert "| no |" in rows["`model`"] and "| yes |" in rows["`num-server-rounds`"]  # model-defining or not


def _build(config, site) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_site_builds_strict(tmp_path):
    result = _build(PROJECT_ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "commands" / "index.html").is_file()


def test_a_broken_internal_link_fails_the_build(tmp_path):
    shutil.copytree(PROJECT_ROOT / "docs", tmp_path / "docs")
    shutil.copy(PROJECT_ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "security.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n[gone](no-such-page.md)\n", encoding="utf-8")
    result = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and "no-such-page.md" in result.stderr
    page.write_text(page.read_text(encoding="utf-8").replace("no-such-page.md", "index.md#no-such-anchor"))
    result = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and "no-such-anchor" in result.stderr


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link) and not link.startswith("#")]
    assert local, "the README links into the documentation"
    for link in local:
        assert (PROJECT_ROOT / link.split("#")[0]).exists(), f"README links to {link}, which does not exist"


def test_readme_holds_the_grid_summary_only():
    gt = load_script("grid_table")
    text = README.read_text(encoding="utf-8")
    assert gt.SUMMARY_START in text and gt.START not in text
    assert gt.MAIN_CAPTION not in text and gt.TIME_CAPTION not in text


@pytest.mark.parametrize("name", ["check"])
def test_check_script_runs_every_ci_step(name):
    script = (PROJECT_ROOT / "scripts" / name).read_text(encoding="utf-8")
    assert script.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in script
    for step in ("ruff check .", "ruff format --check .", "lint-imports", "mkdocs build --strict", "python -m pytest"):
        assert step in script
    assert (PROJECT_ROOT / "scripts" / name).stat().st_mode & 0o111
    ci = (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.rstrip().endswith("scripts/check")
