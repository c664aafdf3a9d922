"""Processes by PID: a free port, the process tree of a command (``/proc``), stopping a whole tree
(SIGTERM, then SIGKILL after a grace period), waiting for a server to listen.

Linux first (``/proc``); every process a command or a test starts is stopped through
:func:`stop_process`, by PID, with its descendants.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["FlowerProcessError", "free_port", "process_tree", "stop_process", "wait_for_health"]


class FlowerProcessError(RuntimeError):
    """A Flower process failed to start, died, or the run did not complete."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """``(parent pid, state, start time)`` of ``pid`` from ``/proc`` (Linux), or None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], int(fields[19])


def process_tree(pid: int) -> list[tuple[int, int]]:
    """``pid``'s descendants now, as ``(pid, start time)`` pairs (empty where ``/proc`` is absent).

    Needed because Flower starts its SuperExec in a new session (outside the SuperLink's process
    group) and the SuperExec starts the ServerApp / ClientApps: a process-group signal misses them.
    The start time tells a reused PID from the original process.
    """
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else []:
        stat = _proc_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            starts[int(entry.name)] = stat[2]
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append((child, starts[child]))
        todo.extend(children.get(child, []))
    return found


def _alive(pid: int, start: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[2] == start and stat[1] != "Z"


def _signal_tree(leader: int, tree: Sequence[tuple[int, int]], signum: int) -> None:
    try:
        os.killpg(leader, signum)
    except ProcessLookupError:
        pass
    for pid, start in tree:
        if _alive(pid, start):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def stop_process(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """Stop ``proc``, its process group and all its descendants, by PID.

    SIGTERM first, so that a ServerApp can end its current file write (every file of the run
    folder is written atomically, so even a SIGKILL leaves the last complete version); SIGKILL
    to whatever still runs after ``timeout`` seconds.
    """
    if proc is None:
        return
    tree = process_tree(proc.pid)  # before the signal: orphans are re-parented and lost to the tree
    if proc.poll() is not None:
        tree = [(pid, start) for pid, start in tree if _alive(pid, start)]
        if not tree:
            return
    _signal_tree(proc.pid, tree, signal.SIGTERM)
    if proc.poll() is None and not _leads_group(proc.pid):  # started without a new session: killpg missed it
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None and not any(_alive(pid, start) for pid, start in tree):
            break
        time.sleep(0.1)
    # the group too: children that outlived the leader share its group id
    _signal_tree(proc.pid, tree, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def wait_for_health(host: str, port: int, proc: subprocess.Popen, timeout: float = 60.0, tls: bool = False) -> None:
    """Wait until the SuperLink answers on ``host:port`` (TCP accept), or raise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FlowerProcessError(f"flower-superlink exited with code {proc.returncode} during start-up")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.3)
    raise FlowerProcessError(f"flower-superlink did not listen on {host}:{port} within {timeout:.0f} s")
