"""Processes by PID: a free port, the process tree of a command, stopping a whole tree
(SIGTERM, then SIGKILL after a grace period), waiting for a server to listen.

Process trees come from psutil, so this works where psutil does (Linux, macOS, the BSDs) and
POSIX signals exist; every process a command or a test starts is stopped through
:func:`stop_process`, by PID, with its descendants.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

import psutil

__all__ = ["FlowerProcessError", "free_port", "process_tree", "stop_process", "wait_for_health"]


class FlowerProcessError(RuntimeError):
    """A Flower process failed to start, died, or the run did not complete."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def process_tree(pid: int) -> list[tuple[int, psutil.Process]]:
    """``pid``'s descendants now, as ``(pid, process)`` pairs (empty when ``pid`` is gone).

    Needed because Flower starts its SuperExec in a new session (outside the SuperLink's process
    group) and the SuperExec starts the ServerApp / ClientApps: a process-group signal misses them.
    The :class:`psutil.Process` tells a reused PID from the original: psutil identifies a process
    by PID and its start time since boot (on Linux), which a change of the wall clock (NTP, a VM
    resuming) does not move, unlike ``create_time()``.
    """
    try:
        return [(child.pid, child) for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:  # gone, or not ours to look at
        return []


def _alive(pid: int, process: psutil.Process) -> bool:
    """Whether ``process`` (PID ``pid``, from :func:`process_tree`) still runs: not ended, its PID
    not reused by another process, and not a zombie."""
    try:
        return process.pid == pid and process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # ZombieProcess included
        return False
    except psutil.AccessDenied:  # it exists; only its state could not be read
        return True


def _signal_tree(leader: int, tree: Sequence[tuple[int, psutil.Process]], signum: int) -> None:
    try:
        os.killpg(leader, signum)
    except ProcessLookupError:
        pass
    for pid, process in tree:
        if _alive(pid, process):
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):  # ended since, or the PID is someone else's now
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
        tree = [(pid, process) for pid, process in tree if _alive(pid, process)]
        if not tree:
            return
    _signal_tree(proc.pid, tree, signal.SIGTERM)
    if proc.poll() is None and not _leads_group(proc.pid):  # started without a new session: killpg missed it
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None and not any(_alive(pid, process) for pid, process in tree):
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
