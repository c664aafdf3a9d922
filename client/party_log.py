"""What a party's ClientApp tells its own operator: one line per message handled, and the end.

In deployment every message runs in a fresh ClientApp process under the SuperNode, whose output
the party's operator does not see; so the handlers append one line per round they take part in
to ``<output folder>/party.log`` and, when the server says the federation's run is over
(``query.finish``), write ``<output folder>/federation.json``. ``simskip-client`` prints the
log's new lines as they come and exits when that file appears (:mod:`client.cli`).

Plain files, no Flower: a line is one ``O_APPEND`` write (whole lines even from concurrent
processes); ``federation.json`` is written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["FINISHED_FILE", "PARTY_LOG", "note", "read_finished", "write_finished"]

PARTY_LOG = "party.log"
FINISHED_FILE = "federation.json"


def note(out: Path | None, text: str) -> None:
    """Append ``HH:MM:SS text`` to ``out/party.log`` (nothing when the party has no output folder)."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    line = f"{time.strftime('%H:%M:%S')} {text}\n".encode()
    fd = os.open(out / PARTY_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def write_finished(out: Path | None, record: dict[str, Any]) -> None:
    """Write ``out/federation.json`` atomically: ``record`` plus ``finished_at`` (epoch seconds)."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**record, "finished_at": time.time()}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".federation-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, out / FINISHED_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_finished(out: Path, since: float) -> dict[str, Any] | None:
    """The finish record written after ``since`` (epoch seconds), or ``None`` (absent, older, unreadable)."""
    try:
        record = json.loads((out / FINISHED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("finished_at"), (int, float)):
        return None
    return record if record["finished_at"] >= since else None
