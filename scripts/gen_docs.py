#!/usr/bin/env python
"""Write the generated parts of the documentation from the code and the committed JSON.

Every generated part is a block between two markers in a page, ``<!-- gen:NAME:start -->`` and
``<!-- gen:NAME:end -->``; the text around the blocks is written by hand. The blocks:

- ``docs/reference/commands.md``: every console script of ``pyproject.toml``'s ``[project.scripts]``
  with every option, from the command's own ``build_parser()``;
- ``docs/reference/run-config.md``: every run-config key with its type, default, choices and help,
  from the registry (``client.kge.run_config.REGISTRY``);
- ``docs/results/*.md``: tables from the JSON under ``results/`` (framework time per round, time to
  accuracy, evaluation, downstream protocols, poisoning, the Fed3 TransE study), each with the command that produced it and the machine
  and load it ran on, as far as the JSON records them;
- the experiment grid: ``scripts/grid_table.py``'s blocks in ``README.md`` (at a glance) and
  ``docs/results/grid.md`` (every table).

    python scripts/gen_docs.py           # rewrite every stale block (atomic writes)
    python scripts/gen_docs.py --check   # exit 1 when a block is stale, printing a diff (CI)
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import importlib.util
import json
import statistics
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
DASH = "–"


class DocsError(ValueError):
    """A page lacks a block's markers, or a source the block is generated from is malformed."""


@functools.cache
def _script(name: str):
    """``scripts/<name>.py`` as a module (``scripts/`` is not a package), loaded once."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _grid_table():
    """``scripts/grid_table.py`` as a module, loaded once."""
    return _script("grid_table")


# --- markdown helpers -------------------------------------------------------------------------------


def cell(text: Any) -> str:
    """``text`` made safe for one markdown table cell: no raw HTML, no column break, one line."""
    text = " ".join(str(text).split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def code(text: Any) -> str:
    """``text`` as inline code in a table cell (a backtick inside becomes a quote)."""
    return "`" + " ".join(str(text).split()).replace("`", "'").replace("|", "\\|") + "`"


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    """A markdown table; ``align`` gives one character per column, ``l`` or ``r`` (default all left)."""
    align = align or "l" * len(header)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(row) + " |" for row in rows)]


def shell(argv: list[str]) -> str:
    """An argv list as one shell line (arguments with spaces or ``;`` quoted)."""
    return " ".join(f"'{a}'" if any(c in a for c in " ;*&|<>") else a for a in argv)


def _load(value: Any) -> str:
    """A load average (a number or the 1/5/15-minute triple), 1 decimal, or a dash."""
    if value is None:
        return DASH
    values = value if isinstance(value, list | tuple) else [value]
    return " / ".join(f"{float(v):.1f}" for v in values)


def _read(path: Path) -> dict:
    """A results JSON file.

    :raises DocsError: naming the file when it is missing or not JSON.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DocsError(f"{path.relative_to(ROOT)}: {error}") from error


def _rel(path: Path) -> str:
    """``path`` relative to the project root where it lies inside it, else as given."""
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


# --- reference: commands ----------------------------------------------------------------------------


def console_scripts() -> dict[str, str]:
    """``pyproject.toml``'s ``[project.scripts]``: command -> ``module:function``."""
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return dict(tomllib.load(handle)["project"]["scripts"])


def _parser_of(target: str) -> argparse.ArgumentParser:
    """The ``build_parser()`` of the module that a console script's ``module:main`` names.

    :raises DocsError: when the module has no ``build_parser``.
    """
    module = importlib.import_module(target.split(":")[0])
    build = getattr(module, "build_parser", None)
    if build is None:
        raise DocsError(f"{module.__name__} has no build_parser(): its command's options cannot be documented")
    return build()


def _first_paragraph(text: str | None) -> str:
    return " ".join((text or "").strip().split("\n\n")[0].split()).replace("``", "`")


def _option_name(action: argparse.Action) -> str:
    if not action.option_strings:
        return action.metavar or action.dest
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or action.dest.upper()
    if action.choices is not None and action.metavar is None:
        metavar = "{" + ",".join(map(str, action.choices)) + "}"
    return f"{names} {metavar}"


def _default(action: argparse.Action) -> str:
    default = action.default
    if default is None or default is argparse.SUPPRESS or default == [] or action.nargs == 0:
        return ""
    return code(default)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    return cell(parser._get_formatter()._expand_help(action))  # argparse's own %(default)s expansion


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _parser_section(parser: argparse.ArgumentParser, level: int) -> list[str]:
    lines = ["```text", _usage(parser), "```", ""]
    description = _first_paragraph(parser.description)
    if description:
        lines += [description, ""]
    subcommands = []
    for group in parser._action_groups:
        rows = []
        for action in group._group_actions:
            if isinstance(action, argparse._SubParsersAction):
                subcommands.append(action)
            elif not isinstance(action, argparse._HelpAction) and action.help is not argparse.SUPPRESS:
                rows.append([code(_option_name(action)), _default(action), _help(parser, action)])
        if rows:
            lines += [f"{'#' * (level + 1)} {group.title}", ""]
            if group.description:
                lines += [cell(group.description), ""]
            lines += [*table(["option", "default", "what it does"], rows), ""]
    for action in subcommands:
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            lines += [f"{'#' * (level + 1)} `{parser.prog} {name}`", ""]
            if helps.get(name):
                lines += [cell(helps[name]), ""]
            lines += _parser_section(sub, level + 1)
    return lines


def commands_block() -> str:
    """Every console script: usage, description and a table of its options per argument group."""
    lines = []
    for command, target in console_scripts().items():
        parser = _parser_of(target)
        lines += [f"## `{command}`", "", f"Entry point `{target}`; `{command} --help` prints the same.", ""]
        lines += _parser_section(parser, 2)
    return "\n".join(lines)


# --- reference: run config --------------------------------------------------------------------------

OWNER_TITLES = {
    "federation": "Federation (`client/kge/settings.py`: `FederationSettings`)",
    "kge": "Local KGE training and validation (`client/kge/config.py`: `KGEConfig`)",
    "refinement": "SimSkip phase and downstream evaluation (`client/kge/refinement_config.py`, `simskip_core`)",
    "other": "Accepted, read by no dataclass (Flower templates, node and backend config)",
}


def run_config_block() -> str:
    """Every run-config key of the registry, one table per owner."""
    from client.kge.run_config import REGISTRY

    owners: dict[str, list] = {}
    for key in REGISTRY.values():
        owners.setdefault(key.owner, []).append(key)
    unknown = set(owners) - set(OWNER_TITLES)
    if unknown:
        raise DocsError(f"run-config keys of an owner with no section in gen_docs.OWNER_TITLES: {sorted(unknown)}")
    lines = []
    for owner, title in OWNER_TITLES.items():
        if owner not in owners:
            continue
        rows = []
        for key in owners[owner]:
            choices = ", ".join(key.choices) if key.choices else ""
            if choices and key.multiple:
                choices = f"comma-separated list of {choices}"
            default = DASH if key.default is None else code(json.dumps(key.default))
            resume = "no" if key.model_defining else "yes"
            rows.append([code(key.name), key.type.__name__, default, cell(choices), resume, cell(key.help)])
        lines += [f"## {title}", ""]
        lines += table(["key", "type", "default", "choices", "may change on resume", "what it sets"], rows)
        lines.append("")
    return "\n".join(lines)


# --- results: framework time per round --------------------------------------------------------------

#: ``results/bench_round/`` files that do not record their command: the command as run (from the README
#: of the commit that added the file, or see :data:`BENCH_ROUND_RECONSTRUCTED`).
BENCH_ROUND_COMMANDS = {
    "umls-after.json": "python scripts/bench_round.py --data umls3 --mode both --rounds 10 --set local-epochs=1"
    " --set batch-size=128 --set learning-rate=0.01 --out results/bench_round/umls-after.json",
    "kinships-after.json": "python scripts/bench_round.py --data kin3 --mode both --rounds 10 --set local-epochs=1"
    " --set batch-size=128 --set learning-rate=0.01 --out results/bench_round/kinships-after.json",
    "fed3-sim-after.json": "python scripts/bench_round.py --mode sim --rounds 3 --set learning-rate=0.003"
    " --set corruption-scheme=tail --out results/bench_round/fed3-sim-after.json",
    "fed3-sim-2-actors.json": "python scripts/bench_round.py --mode sim --rounds 3 --concurrent-clients 2"
    " --set learning-rate=0.003 --set corruption-scheme=tail --out results/bench_round/fed3-sim-2-actors.json",
    "fed3-deploy-after.json": "python scripts/bench_round.py --mode deploy --rounds 2 --set learning-rate=0.003"
    " --set corruption-scheme=tail --out results/bench_round/fed3-deploy-after.json",
}

#: Of those, the commands no README gave verbatim.
BENCH_ROUND_RECONSTRUCTED = frozenset({"fed3-deploy-after.json"})


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def bench_round_block() -> str:
    """Per ``results/bench_round/*.json`` and mode: mean round, local training and framework seconds."""
    rows = []
    notes = []
    for path in sorted((RESULTS / "bench_round").glob("*.json")):
        data = _read(path)
        for result in data.get("results", []):
            rounds = result.get("rounds", [])
            later = rounds[1:] or rounds  # round 1 also builds the models
            overhead = [r.get("framework_overhead_seconds", 0.0) for r in later]
            rows.append(
                [
                    code(path.name),
                    result.get("mode", DASH),
                    cell(data.get("data", DASH)),
                    str(len(rounds)),
                    f"{_mean([r['train_phase_seconds'] for r in later]):.2f}",
                    f"{_mean([r['local_training_seconds'] for r in later]):.2f}",
                    f"{_mean(overhead):.2f} (max {max(overhead, default=float('nan')):.2f})",
                    f"{100 * _mean([r.get('bytes_fraction_of_full_broadcast', float('nan')) for r in later]):.1f} %",
                    str(data.get("cpu_count", DASH)),
                    _load(data.get("load_average_1min_at_start")),
                ]
            )
        command = BENCH_ROUND_COMMANDS.get(path.name)
        note = f"- `{path.name}`: " + (f"`{command}`" if command else "command not recorded")
        if path.name in BENCH_ROUND_RECONSTRUCTED:
            note += " (reconstructed from the settings the file records)"
        if result.get("note"):
            note += f" ({cell(result['note'])})"
        notes.append(note)
    header = ["file", "mode", "data", "rounds", "round s", "local training s", "framework s", "bytes vs full"]
    header += ["CPUs", "load at start"]
    lines = [
        (
            "Means over rounds 2 onwards (round 1 also builds the models); framework = the round's training phase"
            " minus the slowest client's local training and the aggregation."
        ),
        "",
        *table(header, rows, "lllrrrrrrr"),
        "",
        (
            "Commands (the files do not record their own; `umls3` / `kin3`: a 3-party split written by"
            " `kg_datasets.load_federated(..., num_clients=3, seed=0).write(...)`):"
        ),
        "",
        *notes,
    ]
    return "\n".join(lines)


# --- results: time to accuracy ----------------------------------------------------------------------


def _tta_command(data: dict) -> str:
    argv = list(data.get("command") or [])
    if not argv:
        return "command not recorded"
    argv[0] = Path(argv[0]).name
    return shell(argv)


#: Fixed keys of a search the recipes table leaves out: the model has its own column, and every search
#: validates every round with patience 3.
RECIPE_ROUTINE_KEYS = frozenset({"model", "eval-every", "patience"})


def recipes_block() -> str:
    """The FB15k-237 recipe searches (``results/tune/{fed3,fb15k237}-*-optuna*.json``: FedE on Fed3, and
    one party on FB15k-237's own split) and the presets chosen from them
    (``client.kge.presets.PRESET_EVIDENCE``, by ``tune_kge``'s choice rule)."""
    from client.kge.presets import PRESET_EVIDENCE, PRESETS

    tune = _script("tune_kge")
    used_by = {file: name for name, files in PRESET_EVIDENCE.items() for file in files}
    rows = []
    searches = [*RESULTS.glob("tune/fed3-*-optuna*.json"), *RESULTS.glob("tune/fb15k237-*-optuna*.json")]
    for path in sorted(searches):
        data = _read(path)
        states = data.get("states", {})
        best = tune.best_recorded_trial([data])
        if best is None:
            found = DASH
        else:
            trial = best[1]
            values = ", ".join(f"{key} {value}" for key, value in trial["params"].items())
            found = f"{trial['value']:.4f} (trial {trial['number']}, round {trial['best_round']}): {values}"
        loads = [(data.get(key) or [None])[0] for key in ("load_average_before", "load_average_after")]
        rows.append(
            [
                code(path.name),
                cell(data["fixed"].get("model", DASH)),
                cell(", ".join(f"{k} {v}" for k, v in data["fixed"].items() if k not in RECIPE_ROUTINE_KEYS) or DASH),
                str(data.get("clients", DASH)),
                " / ".join(str(states.get(state, 0)) for state in ("COMPLETE", "PRUNED", "FAIL")),
                cell(found),
                f"{data.get('wall_seconds', 0) / 60:.0f}",
                " → ".join(_load(load) for load in loads),
                code(used_by.get(f"results/tune/{path.name}", DASH)),
            ]
        )
    presets = []
    for name, files in sorted(PRESET_EVIDENCE.items()):
        searches = {file: _read(ROOT / file) for file in files}
        search, trial = tune.best_recorded_trial(list(searches.values()))
        source = next(file for file, data in searches.items() if data is search)
        values = ", ".join(f"{key}={value}" for key, value in PRESETS[name].items())
        presets.append([code(name), cell(values), f"{trial['value']:.4f}", code(Path(source).name)])
    header = [
        "search",
        "model",
        "fixed (beyond model, eval-every, patience)",
        "parties",
        "trials complete / pruned / failed",
        "best valid MRR (trial, round): values",
    ]
    header += ["minutes", "load start → end", "preset"]
    lines = [
        *table(header, rows, "lllrrlrll"),
        "",
        f"Presets: the best trial of the searches each names ({cell(tune.CHOICE_RULE)}, over all of them).",
        "",
        *table(["preset", "values", "valid MRR of its trial", "from"], presets, "llrl"),
    ]
    return "\n".join(lines)


def epoch_pykeen_block() -> str:
    """``results/bench_epoch/against-pykeen/fed3-recipes.json``: each committed FB15k-237 recipe's local
    epoch in this project's trainer against PyKEEN's stock loop, and both valid MRRs after the same epochs."""
    data = _read(RESULTS / "bench_epoch" / "against-pykeen" / "fed3-recipes.json")
    rows = []
    for name, recipe in data["recipes"].items():
        ours, pykeen, summary = recipe["summary"]["ours"], recipe["summary"]["pykeen"], recipe["summary"]
        rows.append(
            [
                (
                    f"`{name}` ({recipe['config']['model']}, {recipe['config']['loss']}, "
                    f"dim {recipe['config']['embedding-dim']}, {recipe['config']['num-negs-per-pos']} negatives)"
                ),
                f"{ours['seconds_per_epoch']:.1f}",
                f"{pykeen['seconds_per_epoch']:.1f}",
                f"{summary['ratio']:.1f} / {summary['cpu_ratio']:.1f}",
                f"{ours['valid_mrr']['mean']:.4f} ± {ours['valid_mrr']['std']:.4f}",
                f"{pykeen['valid_mrr']['mean']:.4f} ± {pykeen['valid_mrr']['std']:.4f}",
                "yes" if summary["valid_mrr_within_seed_noise"] else "**no**",
            ]
        )
    header = [
        "recipe",
        "ours, s/epoch",
        "PyKEEN, s/epoch",
        "ratio (wall / CPU)",
        f"valid MRR after {data['epochs']} epochs, ours",
        "PyKEEN",
        "within seed noise",
    ]
    load = (
        f"1-minute load {data['load_average_start'][0]:.1f} at the start, {data['load_average_end'][0]:.1f} at the end"
    )
    lines = [
        (
            f"Party {data['client']} of {cell(data['data'])} ({data['train_triples']:,} train triples), "
            f"{data['torch_threads']} torch thread{'s' if data['torch_threads'] != 1 else ''}, {data['seeds']} seeds per side, {load}; "
            f"seed noise: {cell(data['noise_rule'])}."
        ),
        "",
        *table(header, rows, "lrrrrrl"),
        "",
        f"Command: {cell(data['command'])}.",
    ]
    return "\n".join(lines)


def epoch_ab_block() -> str:
    """``results/bench_epoch/sparse-fused/summary.json``: a local epoch before and after sparse entity
    gradients and the fused Adam step, per recipe."""
    data = _read(RESULTS / "bench_epoch" / "sparse-fused" / "summary.json")
    rows = []
    for row in data["recipes"].values():
        config = row["config"]
        recipe = f"{config['model']}, {config['loss']}, dim {config['embedding-dim']}, {config['num-negs-per-pos']} negatives"
        rows.append(
            [
                cell(recipe),
                f"{row['before_seconds_per_epoch']:.1f}",
                f"{row['after_seconds_per_epoch']:.1f}",
                f"{row['speedup']:.2f}x",
                f"{row['before_cpu_seconds_per_epoch']:.1f} → {row['after_cpu_seconds_per_epoch']:.1f}",
                f"{row['losses']['before'][-1]:.6f} / {row['losses']['after'][-1]:.6f}",
            ]
        )
    header = [
        "recipe",
        "before, s/epoch",
        "after, s/epoch",
        "speed-up",
        "CPU s/epoch",
        "loss after 3 epochs (before / after)",
    ]
    lines = [
        f"Commits {data['before_commit']} (before) and {data['after_commit']} (after); {cell(data['load'])}.",
        "",
        *table(header, rows, "lrrrrr"),
        "",
        f"Command: {cell(data['command'])}.",
    ]
    return "\n".join(lines)


def tta_block() -> str:
    """Per ``results/tta/*.json``: the best valid round, the time to it, test there, target, machine, load."""
    rows, commands = [], []
    for path in sorted((RESULTS / "tta").glob("*.json")):
        data = _read(path)
        best = data.get("time_to_best_valid") or {}
        target = data.get("time_to_target")
        config = data.get("config", {})
        best_round = next((r for r in data.get("rounds", []) if r.get("round") == best.get("round")), {})
        test = best_round.get("test") or {}
        hits = " / ".join(f"{test[k]:.3f}" for k in ("hits@1", "hits@5", "hits@10") if k in test) or DASH
        reached = DASH
        if data.get("target_test_mrr") is not None:
            reached = f"{target['elapsed_seconds']:.1f} s (round {target['round']})" if target else "not reached"
        rows.append(
            [
                code(path.name),
                config.get("model", DASH),
                f"{best['valid_mrr']:.3f} ({best['round']})" if best else DASH,
                f"{best['elapsed_seconds']:.1f}" if best else DASH,
                f"{best['test_mrr']:.3f}" if best.get("test_mrr") is not None else DASH,
                hits,
                reached,
                f"{data.get('stop_reason', DASH)}, {data.get('wall_seconds', 0):.0f} s",
                str(data.get("cpu_count", DASH)),
                f"{_load(data.get('load_average_1min_at_start'))} → {_load(data.get('load_average_1min_at_end'))}",
            ]
        )
        commands.append(f"- `{path.name}`: `{_tta_command(data)}`")
    header = ["file", "model", "best valid MRR (round)", "time to it, s", "test MRR there"]
    header += ["test Hits@1 / 5 / 10", "target test MRR reached", "stopped", "CPUs", "load start → end"]
    lines = [
        (
            f"Test metrics in the run's evaluation protocol (`eval-protocol`); the target is FedE's test MRR"
            f" ({_first_target()}). Time counts from the launch of `simskip-sim`, Ray's start-up included."
        ),
        "",
        *table(header, rows, "llrrrllllr"),
        "",
        "Commands, as each JSON records them (`scripts/bench_time_to_accuracy.py` launched them):",
        "",
        *commands,
    ]
    return "\n".join(lines)


def _first_target() -> str:
    for path in sorted((RESULTS / "tta").glob("*.json")):
        target = _read(path).get("target_test_mrr")
        if target is not None:
            return f"{target}"
    return DASH


def epoch_pykeen_ttv_block() -> str:
    """``results/bench_epoch/against-pykeen/fed3-recipes-time-to-valid.json``: per recipe and seed, the seconds of
    training this project's trainer needs to reach PyKEEN's valid MRR after the same fixed epochs."""
    path = RESULTS / "bench_epoch" / "against-pykeen" / "fed3-recipes-time-to-valid.json"
    if not path.is_file():
        return f"_`{_rel(path)}`: not run yet (the command below)._"
    data = _read(path)
    rows = []
    for name, recipe in data["recipes"].items():
        config, summary = recipe["config"], recipe["summary"]
        ttv = recipe.get("time_to_pykeen_valid") or {}
        ratio = ttv.get("ratio")
        rows.append(
            [
                (
                    f"`{name}` ({config['model']}, {config['loss']}, dim {config['embedding-dim']}, "
                    f"{config['num-negs-per-pos']} negatives{', reciprocal' if config.get('reciprocal-relations') else ''})"
                ),
                f"{summary['ours']['valid_mrr']['mean']:.4f} / {summary['pykeen']['valid_mrr']['mean']:.4f}",
                "; ".join(f"{seed}: {cell(text)}" for seed, text in sorted(ttv.get("outcome_per_seed", {}).items())),
                DASH if ratio is None else f"{ratio:.1f} / {ttv['cpu_ratio']:.1f}",
            ]
        )
    header = [
        "recipe",
        f"valid MRR after {data['epochs']} epochs, ours / PyKEEN (mean)",
        "per seed: epochs and training seconds to PyKEEN's valid MRR",
        "time-to-valid ratio (wall / CPU)",
    ]
    load = (
        f"1-minute load {data['load_average_start'][0]:.1f} at the start, {data['load_average_end'][0]:.1f} at the end"
    )
    return "\n".join(
        [
            (
                f"Party {data['client']} of {cell(data['data'])}, {data['torch_threads']} torch thread{'s' if data['torch_threads'] != 1 else ''}, {data['seeds']} seeds"
                f" per side, {load}."
            ),
            "",
            *table(header, rows, "lrlr"),
            "",
            f"Command: {cell(data['command'])}.",
        ]
    )


def downstream_bench_block() -> str:
    """``results/fed3-transe/bench_downstream.json``: seconds per downstream protocol, every party's rows."""
    path = RESULTS / "fed3-transe" / "bench_downstream.json"
    data = _read(path)
    rows = [["SimSkip phase", f"{data.get('simskip_seconds', 0):.0f}"]]
    for label, entry in data.get("protocols", {}).items():
        rows.append([code(label), f"{entry['seconds']:.0f}"])
    before, after = data.get("load_average_before"), data.get("load_average_after")
    return "\n".join(
        [
            f"`{_rel(path)}`: {data.get('model')} on `{data.get('run_dir')}`, device {data.get('device')},"
            f" {data.get('torch_threads')} torch threads, load {_load(before)} before"
            + (f", {_load(after)} after" if after else "")
            + f"; one seed, rows per party: {_row_names(data)}.",
            "",
            *table(["step", "seconds"], rows, "lr"),
        ]
    )


def downstream_time_block() -> str:
    """``results/downstream-speed/time-breakdown.json`` (``scripts/downstream_time.py``): where the grid's Fed3
    cells spent the SimSkip phase and the downstream protocols, from their own records."""
    path = RESULTS / "downstream-speed" / "time-breakdown.json"
    data = _read(path)
    head = data["headline"]
    cells = head["fed3_main_cells"]
    protocols = sorted({label for cell in cells.values() for label in cell["protocol_seconds"]}, key=_protocol_order)
    rows = []
    for name, cell in sorted(cells.items()):
        rows.append(
            [
                name.split("/", 1)[1],
                f"{cell['simskip_seconds']:.0f}",
                *(f"{cell['protocol_seconds'].get(label, 0):.0f}" for label in protocols),
                f"{cell['simskip_plus_downstream_seconds'] / 60:.1f}",
                f"{cell['speedup_needed']:.1f}x",
            ]
        )
    flags = head["fed3_main_flags"]
    repeats, unchosen = flags["test_repeats_as_trained"], flags["candidates_trained_not_chosen"]
    kept = flags["chosen_rank_under_as_trained"]
    total = head["fed3_main_total"]
    return "\n".join(
        [
            (
                f"`{_rel(path)}` (`{data['command']}`), from the grid cells' own records; nothing was timed anew."
                f" Seconds per Fed3 cell (all three parties, 3 downstream seeds); median cell"
                f" {total['median_cell_simskip_plus_downstream_seconds'] / 60:.1f} min, target"
                f" {head['target_seconds_per_cell'] / 60:.0f} min."
            ),
            "",
            *table(
                ["model", "SimSkip phase", *(code(label) for label in protocols), "total (min)", "speed-up needed"],
                rows,
                "l" + "r" * (len(protocols) + 3),
            ),
            "",
            (
                f"- Candidates trained and valid-checked but never chosen: {unchosen['runs']} runs,"
                f" {unchosen['seconds']:.0f} s over the four cells."
            ),
            (
                f"- Test rankings of a trained protocol whose best epoch was 0 (the as-trained model again):"
                f" {repeats['count']}, bit-identical to the as-trained ranking in {repeats['bit_identical']},"
                f" {repeats['seconds']:.0f} s."
            ),
            (
                f"- The candidate a trained protocol finally chose was the as-trained valid favourite in"
                f" {kept['kept_by_top_m']['1']} of {kept['choices']} choices (in the top 2: {kept['kept_by_top_m']['2']})."
            ),
        ]
    )


def _protocol_order(label: str) -> tuple[int, str]:
    order = ("as-trained", "relation-refit", "adapter", "finetune")
    base = label.split(":", 1)[0]
    return (order.index(base) if base in order else len(order), label)


def _row_names(data: dict) -> str:
    for entry in data.get("protocols", {}).values():
        for client in entry.get("clients", {}).values():
            return ", ".join(client.get("rows", {}))
    return DASH


# --- results: evaluation ----------------------------------------------------------------------------


def _repetitions(data: dict) -> list[dict]:
    """A ``results/bench_eval/`` file's runs of ``scripts/bench_eval.py``: its ``repetitions``, or the
    file itself when it is one run's report."""
    return data.get("repetitions") or [data]


def _spread(values: list[float], digits: int = 1) -> str:
    """``median (min–max)`` of ``values``, or the one value, or a dash."""
    if not values:
        return DASH
    median = f"{statistics.median(values):.{digits}f}"
    if len(values) == 1:
        return median
    return f"{median} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def _eval_machine(run: dict) -> str:
    """One ``scripts/bench_eval.py`` run's machine: CPU model and count, torch and Python versions."""
    machine = run.get("machine", {})
    return (
        f"{machine.get('cpu', 'CPU model not recorded')}, {run.get('cpu_count', DASH)} CPUs,"
        f" torch {run.get('torch_version', DASH)}, Python {machine.get('python', DASH)}"
    )


def _eval_setting(run: dict) -> str:
    """One ``scripts/bench_eval.py`` run's data, model size, threads and kernel mode."""
    triples = run.get("test_triples")
    triples = f"{triples:,}" if isinstance(triples, int) else DASH
    return (
        f"{triples} test triples of `{run.get('data', DASH)}` ({run.get('num_clients', DASH)} parties), untrained"
        f" models of dim {run.get('embedding_dim', DASH)}, {run.get('torch_threads', DASH)} torch thread(s),"
        f" fused kernels `{run.get('fused_kernels', DASH)}`"
    )


def _bench_eval_rows(path: Path, data: dict) -> tuple[list[list[str]], list[str]]:
    """One ``results/bench_eval/`` file: a table row per model and protocol run, and its notes (what it
    measured, the kernels, the DeprecationWarnings, the commands)."""
    runs = _repetitions(data)
    loads = [r["load_average_start"][0] for r in runs if r.get("load_average_start")]
    warned = sum(bool(r.get("deprecation_warnings")) for r in runs)
    rows = []
    for model in dict.fromkeys(m for r in runs for m in r["models"]):
        entries = [r["models"][model] for r in runs if model in r["models"]]
        for label in dict.fromkeys(lab for e in entries for lab in e["runs"]):
            timed = [e["runs"][label] for e in entries if label in e["runs"]]
            rows.append(
                [
                    code(path.name),
                    model,
                    code(label),
                    str(len(timed)),
                    _spread([t["wall_seconds"] for t in timed]),
                    _spread([t["cpu_seconds"] for t in timed]),
                    _spread([e["warmup_seconds"] for e in entries]),
                    f"{warned} of {len(runs)}",
                    _spread(loads),
                ]
            )
    kernels = sorted({(r.get("kernels") or {}).get("sha256", "")[:12] for r in runs} - {""})
    messages = sorted({w["message"] for r in runs for w in r.get("deprecation_warnings", [])})
    notes = [f"- `{path.name}`: {cell(data.get('description', 'no description recorded')).rstrip('.')}."]
    if kernels:
        notes.append(f"    - kernels module SHA-256 {', '.join(code(k) for k in kernels)}")
    if data.get("before_kernels") and any("--kernels-file" in r.get("command", "") for r in runs):
        notes.append(f"    - `--kernels-file`: {cell(data['before_kernels'])}")
    notes.append(f"    - DeprecationWarning: {'; '.join(code(m) for m in messages) or 'none raised'}")
    notes.append("    - commands, one per run:")
    notes += [f"        - {code(r.get('command', 'not recorded'))}" for r in runs]
    return rows, notes


def bench_eval_block() -> str:
    """Per ``results/bench_eval/*.json`` (oldest run first), model and protocol run: wall, CPU and warm-up
    seconds over the file's runs, the runs that raised a DeprecationWarning, the load; then each file's
    description, kernels and commands.

    :raises DocsError: naming the file when a run lacks a figure the table shows.
    """
    files = [(path, _read(path)) for path in sorted((RESULTS / "bench_eval").glob("*.json"))]
    if not files:
        return "No JSON under `results/bench_eval/` yet."
    files.sort(key=lambda item: min(r.get("started_at", "") for r in _repetitions(item[1])))
    rows, notes, machines, settings = [], [], {}, {}
    for path, data in files:
        try:
            file_rows, file_notes = _bench_eval_rows(path, data)
        except (KeyError, IndexError, TypeError) as error:
            raise DocsError(f"{_rel(path)}: a run lacks {error} (expected scripts/bench_eval.py's report)") from error
        rows += file_rows
        notes += file_notes
        for run in _repetitions(data):
            machines.setdefault(_eval_machine(run), []).append(path.name)
            settings.setdefault(_eval_setting(run), []).append(path.name)

    def which(groups: dict[str, list[str]]) -> str:
        return "; ".join(f"{text} ({', '.join(dict.fromkeys(names))})" for text, names in groups.items())

    header = ["file", "model", "protocols", "runs", "wall s", "CPU s", "warm-up s (compile)"]
    header += ["runs with a DeprecationWarning", "load at start, 1 min"]
    return "\n".join(
        [
            (
                "`scripts/bench_eval.py`: filtered ranking of every party's test set, each run's protocols in one"
                " pass, after a warm-up that pays the one-time compile of the fused kernels (not in wall / CPU s);"
                f" median (min–max) over a file's runs. {which(settings)}. Machine: {which(machines)}."
            ),
            "",
            *table(header, rows, "lllrrrrrr"),
            "",
            "Per file, as it records itself:",
            "",
            *notes,
        ]
    )


# --- results: poisoning -----------------------------------------------------------------------------

POISONING_COMMANDS = {
    "kinships.json": "python scripts/bench_poisoning.py --dataset Kinships --clients 5 --rounds 40 --trim 0.2"
    " --threads 2 --set embedding-dim=64 --set num-negs-per-pos=64 --set local-epochs=1 --set batch-size=128"
    " --set learning-rate=0.03 --out results/poisoning/kinships.json",
    "fed3.json": "python scripts/bench_poisoning.py --dataset ../shared/data/FB15k-237-Fed3 --clients 3 --rounds 3"
    " --rules mean median --trim 0.34 --threads 1 --set learning-rate=0.003 --set corruption-scheme=tail"
    " --set eval-protocol=fede --out results/poisoning/fed3.json",
}
ATTACKS = {
    "none": "none (clean run)",
    "random": "large random rows",
    "sign-flip": "a sign-flipped update",
}


def poisoning_block() -> str:
    """Per ``results/poisoning/*.json``: the honest parties' valid / test MRR per attack and rule."""
    lines = []
    for path in sorted((RESULTS / "poisoning").glob("*.json")):
        data = _read(path)
        runs = data.get("runs", [])
        rules = list(dict.fromkeys(r["rule"] for r in runs))
        attacks = list(dict.fromkeys(r["attack"] for r in runs))
        by = {(r["attack"], r["rule"]): r for r in runs}
        rows = []
        align = "l" + "r" * len(rules)
        for attack in attacks:
            row = [cell(ATTACKS.get(attack, attack))]
            for rule in rules:
                run = by.get((attack, rule))
                row.append(f"{run['honest_valid_mrr']:.3f} / {run['honest_test_mrr']:.3f}" if run else DASH)
            rows.append(row)
        kge = data.get("kge", {})
        holders = data.get("holders_per_entity") or []
        held = ", ".join(f"{n} by {k}" for k, n in enumerate(holders) if n)
        lines += [
            f"### `{path.name}`: {cell(data.get('dataset'))}, {data.get('clients')} parties",
            "",
            (
                f"Party {data.get('attacker')} attacks every round (scale {data.get('scale')});"
                f" {kge.get('model')} dim {kge.get('embedding-dim')}, at most {data.get('rounds')} rounds,"
                f" trimmed-mean trim {data.get('trim')}, {data.get('torch_threads')} torch thread(s); entities"
                f" held {held}. Load {_load(data.get('load_average_before'))} before,"
                f" {_load(data.get('load_average_after'))} after. Honest parties' MRR, valid / test:"
            ),
            "",
            *table(["attack (party returns ...)", *(f"{rule} valid / test" for rule in rules)], rows, align),
            "",
            f"Command: `{POISONING_COMMANDS.get(path.name, 'not recorded')}`",
            "",
        ]
    return "\n".join(lines).rstrip("\n")


# --- results: the Fed3 TransE study -----------------------------------------------------------------

FED3_STUDY = {
    "fed3-transe": "SimSkip at its defaults, 3 seeds, every protocol",
    "fed3-transe-search": "a search over SimSkip's settings, 3 seeds, two frozen-row protocols",
    "fed3-transe-search-all": "the same search, every protocol",
    "fed3-transe-fresh": "relations re-fit from trained and from fresh relations, 1 seed",
}


def _overall_mrr(results: dict, label: str, row: str, metric: str) -> str:
    """A row's overall mean MRR (4 decimals) in one protocol, or a dash."""
    try:
        return f"{results['protocols'][label]['rows'][row]['overall'][metric]['mean']:.4f}"
    except KeyError:
        return DASH


def fed3_block() -> str:
    """Per Fed3 TransE folder: overall MRR and gains with intervals and verdicts per protocol."""
    gt = _grid_table()
    lines = []
    for folder, what in FED3_STUDY.items():
        path = RESULTS / folder / "results.json"
        if not path.is_file():
            continue
        results = _read(path)
        rows = []
        for label in sorted(results["protocols"], key=lambda p: gt._order(p, gt.PROTOCOL_ORDER)):
            std = [_overall_mrr(results, label, r, "standard.mrr") for r in ("unrefined", "refined")]
            fede = [_overall_mrr(results, label, r, "fede.mrr") for r in ("unrefined", "refined")]
            verdicts = " / ".join(
                f"**{v}**" if v == "gain" else v
                for v in (gt._verdict(results, label, m) for m in ("standard.mrr", "fede.mrr"))
            )
            rows.append(
                [
                    label,
                    f"{std[0]} / {fede[0]}",
                    f"{std[1]} / {fede[1]}",
                    gt._gain(results, label, "standard.mrr"),
                    gt._gain(results, label, "fede.mrr"),
                    verdicts,
                ]
            )
        header = ["protocol", "unrefined std / FedE", "refined std / FedE", "gain std [95 %]", "gain FedE [95 %]"]
        lines += [
            f"### `results/{folder}/`: {what}",
            "",
            *table([*header, "verdict std / FedE"], rows, "lrrrrl"),
            "",
        ]
    return "\n".join(lines).rstrip("\n")


#: The quick start's full console output from a fresh clone (docs/getting-started/quickstart.md includes it).
QUICKSTART_CONSOLE = ROOT / "docs" / "examples" / "quickstart-console.txt"


def quickstart_excerpt_block() -> str:
    """The end of the committed quick-start console: from the last ``best round`` line to the summary's end."""
    lines = QUICKSTART_CONSOLE.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if "best round" in line and "test overall" in line]
    if not starts:
        raise DocsError(f"{_rel(QUICKSTART_CONSOLE)}: no 'best round N; test overall' line")
    i = starts[-1]
    return "\n".join(["```text", *lines[i : i + 1], "...", *lines[i + 1 :][-19:], "```"])


def _baselines():
    """``scripts/baselines_summary.py`` and its summary of ``results/baselines/`` (the baselines page's source)."""
    bs = _script("baselines_summary")
    return bs, bs.build_summary(RESULTS / "baselines")


def baselines_central_block() -> str:
    """The centralized FB15k-237 runs beside LibKGE's published test MRRs."""
    bs, summary = _baselines()
    return bs.central_table(summary)


def baselines_federated_block() -> str:
    """The federated baselines per split, model and setting beside the old grid's fixed-default bases."""
    bs, summary = _baselines()
    return bs.federated_table(summary, bs.old_grid_numbers(RESULTS / "grid"))


def baselines_commands_block() -> str:
    """The commands the committed baseline runs record."""
    bs, summary = _baselines()
    return bs.commands_block(summary)


# --- the pages ---------------------------------------------------------------------------------------

#: page -> block name -> the function that writes the block.
# --- how-to: differential privacy -------------------------------------------------------------------

DP_TABLE = RESULTS / "privacy" / "dp-epsilon-table.json"


#: The UMLS attack runs under dp = local (relation split), by noise multiplier, beside the plain run.
DP_ATTACK_RUNS = {
    "none (plain FedE)": "attack-umls-relation.json",
    "1": "attack-umls-relation-dp-z1.json",
    "4": "attack-umls-relation-dp-z4.json",
    "16": "attack-umls-relation-dp-z16.json",
}


def _precision_pair(attacks: dict, attack: str) -> str:
    """An attack's precision at k = 100 / at the true pair count (its first and last ordered guesses)."""
    precision = attacks[attack]["ordered"]["precision"]
    return f"{precision[0]:.2f} / {precision[-1]:.3f}"


def dp_attack_block() -> str:
    """``results/privacy/attack-umls-relation*.json``: the reconstruction attacks on party 1 of UMLS's
    relation split, plain and under dp = local at three noise multipliers (precision at k = 100 / at the
    true pair count), with each run's test MRR and epsilon."""
    rows, commands = [], []
    for z, name in DP_ATTACK_RUNS.items():
        data = _read(RESULTS / "privacy" / name)
        victim = data["parties"]["1"]
        dp = data.get("dp") or {}
        epsilon = dp.get("parties", {}).get("1", {}).get("epsilon") if dp else None

        rows.append(
            [
                z,
                DASH if not dp else f"{dp['clip']:g}",
                DASH if epsilon is None else f"{epsilon:.3g}",
                f"{data['test_mrr']:.3f}",
                f"{victim['random']['ordered']['expected_precision']:.3f}",
                _precision_pair(victim["attacks"], "update-anticos"),
                _precision_pair(victim["attacks"], "row-distance"),
                _precision_pair(victim["attacks"], "collusion-relation"),
            ]
        )
        commands.append(data["command"])
    header = [
        "noise multiplier z",
        "dp-clip C",
        "epsilon (T = 20, delta 1e-5)",
        "test MRR",
        "random",
        "`update-anticos`",
        "`row-distance`",
        "`collusion-relation`",
    ]
    return "\n".join([*table(header, rows, "lrrrrrrr"), "", "```bash", *commands, "```"])


#: The views of ``secagg_attack_block``: what the server receives in each mode, and its JSON.
SECAGG_ATTACK_RUNS = {
    "uploads (plain FedE)": "attack-umls-relation.json",
    "aggregate (SecAgg+)": "attack-umls-relation-secagg.json",
}
SECAGG_ATTACKS = ("update-anticos", "update-abscos", "row-distance", "collusion-relation")


def secagg_attack_block() -> str:
    """``results/privacy/attack-umls-relation{,-secagg}.json``: the reconstruction attacks on party 1 of
    UMLS's relation split against each party's upload (plain FedE) and against only the aggregate SecAgg+
    leaves the server (precision at k = 100 / at the true pair count), with each run's test MRR."""
    rows = []
    for view, name in SECAGG_ATTACK_RUNS.items():
        data = _read(RESULTS / "privacy" / name)
        attacks = data["parties"]["1"]["attacks"]
        rows.append([view, f"{data['test_mrr']:.3f}", *(_precision_pair(attacks, a) for a in SECAGG_ATTACKS)])
    header = ["view", "test MRR", *(f"`{a}`" for a in SECAGG_ATTACKS)]
    return "\n".join(table(header, rows, "lrrrrr"))


def dp_epsilon_block() -> str:
    """``results/privacy/dp-epsilon-table.json`` (``scripts/dp_table.py``): epsilon per noise multiplier
    and round count, the noise multiplier per target epsilon, and the accountant's check."""
    data = _read(DP_TABLE)
    epsilon, calibrated, check = data["epsilon"], data["calibrated_noise_multiplier"], data["check"]
    rounds = sorted({int(t) for row in epsilon.values() for t in row})
    rows = [
        [f"{float(z):g}", *(f"{epsilon[z][str(t)]:.3g}" if str(t) in epsilon[z] else DASH for t in rounds)]
        for z in sorted(epsilon, key=float)
    ]
    cal_rounds = sorted({int(t) for row in calibrated.values() for t in row})
    cal_rows = [
        [f"{float(target):g}", *(f"{calibrated[target][str(t)]:.1f}" for t in cal_rounds)]
        for target in sorted(calibrated, key=float, reverse=True)
    ]
    intro = (
        f"Epsilon at delta {data['delta']:g} after T releases with noise multiplier z ({cell(data['library'])},"
        f" {cell(data['sensitivity'])}):"
    )
    cal_intro = (
        "Noise multiplier z for a target epsilon (`dp-target-epsilon`, calibrated over T = `num-server-rounds`):"
    )
    check_line = (
        f"Check (z = {check['noise_multiplier']:g}, s = z / 2 = {check['accountant_multiplier']:g},"
        f" T = {check['releases']}): accountant {check['accountant']:.4f}, hand formula"
        f" {check['hand_formula']:.4f}, exact {check['exact']:.4f}, Mironov's bound {check['mironov']:.4f}."
    )
    return "\n".join(
        [
            intro,
            "",
            *table(["z", *(f"T = {t}" for t in rounds)], rows, "l" + "r" * len(rounds)),
            "",
            cal_intro,
            "",
            *table(["target epsilon", *(f"T = {t}" for t in cal_rounds)], cal_rows, "l" + "r" * len(cal_rounds)),
            "",
            check_line,
            "",
            f"Command: `{data['command']}`",
        ]
    )


#: ``scripts/bench_secagg.py``'s reports: the small graphs, then any larger graph measured on its own.
SECAGG_COST_PATTERN = "secagg-cost*.json"


def secagg_cost_block() -> str:
    """``results/privacy/secagg-cost*.json`` (``scripts/bench_secagg.py``), one table per report: per
    graph, what one party sends the server per round in plain FedE and under SecAgg+ (its masked vector,
    as the run folder records it or else by ``upload_bytes``, and every reply of the four stages,
    measured), their ratio, the seconds of a round after the first and the test MRR of both runs, with the
    load it ran under and the command."""
    paths = sorted(
        (RESULTS / "privacy").glob(SECAGG_COST_PATTERN), key=lambda p: (p.name != "secagg-cost.json", p.name)
    )
    if not paths:
        raise DocsError(f"no {_rel(RESULTS / 'privacy')}/{SECAGG_COST_PATTERN}")
    return "\n\n".join(_secagg_cost_section(path) for path in paths)


def _secagg_cost_section(path: Path) -> str:
    data = _read(path)

    def size(value: Any) -> str:
        return DASH if value is None else f"{value:,.0f} B"

    def pair(values: dict, digits: int) -> str:
        shown = [DASH if values.get(m) is None else f"{values[m]:.{digits}f}" for m in ("plain", "secure")]
        return " / ".join(shown)

    def masked(graph: dict) -> str:
        measured = graph.get("masked_vector_bytes_measured") or []
        if len(measured) == 1:
            return f"{size(measured[0])} (measured)"
        return f"{size(graph['masked_vector_bytes_formula'])} (formula)"

    rows = []
    try:
        for graph in data["graphs"]:
            entities = ", ".join(str(p["num_entities"]) for p in graph["parties"].values())
            ratio = graph["bytes_ratio_secure_to_plain"]
            rows.append(
                [
                    cell(graph["graph"]),
                    f"{graph['num_entities']:,}",
                    str(graph["entity_dim"]),
                    f"{graph['num_parties']} ({entities})",
                    size(graph["plain_upload_bytes_per_party"]),
                    masked(graph),
                    size(graph["secure_reply_bytes_per_party"]),
                    DASH if ratio is None else f"{ratio:.1f} x",
                    pair(graph["seconds_per_round_after_first"], 2),
                    pair(graph["test_mrr"], 4),
                ]
            )
        machine, rounds = data["machine"], int(data["rounds"])
        later = "round 2" if rounds == 2 else f"the mean over rounds 2 to {rounds}" if rounds > 2 else "no round"
        intro = (
            f"`{path.name}`: per party and round (bytes: the round's total over the parties; seconds: the whole"
            f" round, validation included, {later}), {rounds} rounds per run, on"
            f" {machine['cpu_count']} cores ({cell(machine['cpu'])}) under load"
            f" {_load(data['load_average_before'])} before and {_load(data['load_average_after'])} after (1 / 5 / 15"
            f" min), started {data['started_at']}:"
        )
        command = data["command"]
    except (KeyError, TypeError) as error:
        raise DocsError(f"{_rel(path)}: lacks {error}") from error
    header = ["graph", "N", "d", "parties (entities each)", "plain upload", "secure: masked vector"]
    header += [
        "secure: all replies (measured)",
        "ratio all replies / plain",
        "s per round plain / secure",
        "test MRR plain / secure",
    ]
    return "\n".join([intro, "", *table(header, rows, "lrrlrrrrrr"), "", "```bash", command, "```"])


BLOCKS: dict[str, dict[str, Callable[[], str]]] = {
    "README.md": {"quickstart-excerpt": quickstart_excerpt_block},
    "docs/reference/commands.md": {"commands": commands_block},
    "docs/reference/run-config.md": {"run-config": run_config_block},
    "docs/results/speed.md": {
        "bench-round": bench_round_block,
        "tta": tta_block,
        "epoch-ab": epoch_ab_block,
        "epoch-pykeen": epoch_pykeen_block,
        "epoch-pykeen-ttv": epoch_pykeen_ttv_block,
        "bench-eval": bench_eval_block,
        "downstream": downstream_bench_block,
        "downstream-time": downstream_time_block,
    },
    "docs/results/poisoning.md": {"poisoning": poisoning_block},
    "docs/how-to/differential-privacy.md": {"dp-epsilon": dp_epsilon_block},
    "docs/how-to/secure-aggregation.md": {"secagg-cost": secagg_cost_block},
    "docs/concepts/what-parties-reveal.md": {"dp-attack": dp_attack_block, "secagg-attack": secagg_attack_block},
    "docs/how-to/tune-recipes.md": {"recipes": recipes_block},
    "docs/results/fed3-transe.md": {"fed3-transe": fed3_block},
    "docs/results/baselines.md": {
        "baselines-central": baselines_central_block,
        "baselines-federated": baselines_federated_block,
        "baselines-commands": baselines_commands_block,
    },
}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- gen:{name}:start -->", f"<!-- gen:{name}:end -->"


def replace_block(text: str, name: str, content: str, where: str) -> str:
    """``text`` with block ``name``'s content replaced (``scripts/grid_table.py``'s rule, this page's markers).

    :raises DocsError: naming ``where`` when a marker is missing, repeated, or the end comes first.
    """
    try:
        return _grid_table().replace_block(text, content, *markers(name))
    except ValueError as error:
        raise DocsError(f"{where}: {error}") from error


def rendered() -> dict[Path, tuple[str, str]]:
    """Every generated page: path -> (the text on disk, the text it should have)."""
    pages: dict[Path, tuple[str, str]] = dict(grid_pages())  # README.md holds blocks of both
    for page, blocks in BLOCKS.items():
        path = ROOT / page
        old = path.read_bytes().decode("utf-8")
        new = pages[path][1] if path in pages else old
        for name, build in blocks.items():
            new = replace_block(new, name, build(), page)
        pages[path] = (old, new)
    return pages


def grid_pages() -> dict[Path, tuple[str, str]]:
    """The experiment grid's blocks (``README.md``, ``docs/results/grid.md``), by ``scripts/grid_table.py``."""
    return _grid_table().rendered()


def main(argv: list[str] | None = None) -> int:
    """Write every stale generated block, or with ``--check`` exit 1 when one is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 (printing a diff) when a block is stale")
    args = parser.parse_args(argv)
    try:
        pages = rendered()
    except (DocsError, ValueError) as error:
        print(f"gen_docs: {error}", file=sys.stderr)
        return 1
    stale = {path: texts for path, texts in pages.items() if texts[0] != texts[1]}
    if args.check:
        for path, (old, new) in stale.items():
            name = _rel(path)
            diff = difflib.unified_diff(
                old.splitlines(), new.splitlines(), f"{name} (committed)", "generated", lineterm=""
            )
            print("\n".join(list(diff)[:80]), file=sys.stderr)
        if stale:
            names = ", ".join(_rel(p) for p in stale)
            print(f"gen_docs: stale generated docs: {names}; run `python scripts/gen_docs.py`", file=sys.stderr)
            return 1
        print(f"gen_docs: {len(pages)} pages up to date")
        return 0
    from client.kge.run_folder import atomic_write_text  # the project's one atomic write

    for path, (_, new) in stale.items():
        atomic_write_text(path, new)
        print(f"gen_docs: wrote {_rel(path)}")
    if not stale:
        print(f"gen_docs: {len(pages)} pages up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
