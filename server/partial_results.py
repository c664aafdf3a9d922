"""What an interrupted run got to: ``RUN_DIR/partial_results.json``, written on SIGINT / SIGTERM by
``simskip-server`` and ``simskip-sim`` from the files the ServerApp wrote.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.kge.run_folder import atomic_write_text, read_jsonl

__all__ = ["PARTIAL_RESULTS", "partial_results", "write_partial_results"]


PARTIAL_RESULTS = "partial_results.json"


CONFIG_FILE = "config.json"


CHECKPOINT_MANIFEST = Path("checkpoint") / "manifest.json"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete rows of ``path`` (:func:`client.kge.run_folder.read_jsonl`), never an error: this runs
    in a signal handler, where a corrupt or unreadable file must not stop the rest being reported, so a bad
    line is skipped (the rows before and after it are kept) and an unreadable file gives ``[]``."""
    try:
        return read_jsonl(path, skip_bad_lines=True)
    except OSError:
        return []


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def partial_results(run_dir: Path, signum: int, resume_command: Sequence[str]) -> dict[str, Any]:
    """What an interrupted run got to, from the files its ServerApp wrote.

    :param run_dir: the run folder.
    :param signum: the signal that stopped it.
    :param resume_command: the command line that continues it.
    :returns: ``status`` ("interrupted"), ``signal``, ``exit_code``, ``last_completed_round``
        (last row of ``metrics.jsonl``, 0 when none), ``best_round`` / ``best_valid_overall`` /
        ``best_valid`` (best validated round so far, by overall MRR), ``kge_phase_completed``
        (``final_metrics.json`` exists), ``simskip_rounds_completed``, ``checkpoint`` (path and
        round of ``checkpoint/manifest.json``, and its ``simskip_round`` when written during the
        SimSkip phase; None without a manifest), ``resume_command``.
    """
    run_dir = Path(run_dir)
    rows = _read_jsonl(run_dir / "metrics.jsonl")
    last_round = max((int(r["round"]) for r in rows if isinstance(r.get("round"), int)), default=0)
    validated = [r for r in rows if isinstance(r.get("valid_overall"), dict) and "mrr" in r["valid_overall"]]
    best = max(validated, key=lambda r: float(r["valid_overall"]["mrr"]), default=None)
    manifest_path = run_dir / CHECKPOINT_MANIFEST
    manifest = _read_json(manifest_path)
    checkpoint = None
    if isinstance(manifest, dict):
        checkpoint = {"path": str(manifest_path.parent), "round": manifest.get("round")}
        state = manifest.get("state")
        if isinstance(state, dict) and state.get("phase") == "simskip":  # checkpointed during the SimSkip phase
            checkpoint["simskip_round"] = state.get("simskip_round")
    config = _read_json(run_dir / CONFIG_FILE)
    planned = config.get("run_config", {}).get("num-server-rounds") if isinstance(config, dict) else None
    return {
        "status": "interrupted",
        "signal": signal.Signals(signum).name,
        "exit_code": 128 + signum,
        "interrupted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_dir": str(run_dir.resolve()),
        "rounds_planned": planned,
        "last_completed_round": last_round,
        "best_round": int(best["round"]) if best else None,
        "best_valid_overall": best["valid_overall"] if best else None,
        "best_valid": best.get("valid") if best else None,
        "kge_phase_completed": (run_dir / "final_metrics.json").is_file(),
        "simskip_rounds_completed": len(_read_jsonl(run_dir / "simskip_metrics.jsonl")),
        "checkpoint": checkpoint,
        # config.json is what --resume reads: without it there is nothing to continue
        "resumable": isinstance(config, dict) and isinstance(config.get("run_config"), dict),
        "resume_command": shlex.join(resume_command),
    }


def write_partial_results(run_dir: Path, signum: int, resume_command: Sequence[str]) -> Path:
    """Write :func:`partial_results` to ``RUN_DIR/partial_results.json`` atomically; return its path."""
    path = Path(run_dir) / PARTIAL_RESULTS
    payload = partial_results(run_dir, signum, resume_command)
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path
