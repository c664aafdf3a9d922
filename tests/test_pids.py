"""client.pids: process trees by PID (psutil) and stopping a whole tree, with short-lived Python
stand-ins only, each stopped by PID in a ``finally``.

No assertion on durations: every wait polls with a generous deadline, so a loaded machine only
makes the tests slower.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from client import pids

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX process groups and signals")

DEADLINE = 60.0  # seconds: generous, only a stuck test waits this long


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, ended but not yet reaped, is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _parent_with_grandchild(marker: Path, ignore_sigterm: bool = False) -> subprocess.Popen:
    """A parent in its own session that starts a sleeping child in yet another session (as Flower's
    SuperLink starts its SuperExec); the child writes its PID to ``marker`` once it is set up.

    With ``ignore_sigterm`` both ignore SIGTERM (an ignored signal stays ignored across exec).
    """
    ignore = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignore_sigterm else ""
    child = f"{ignore}import os,time; open({str(marker)!r},'w').write(str(os.getpid())); time.sleep(120)"
    parent = (
        f"{ignore}import subprocess,sys,time; "
        f"subprocess.Popen([sys.executable,'-c',{child!r}], start_new_session=True); time.sleep(120)"
    )
    return subprocess.Popen([sys.executable, "-c", parent], start_new_session=True)


def _grandchild_pid(marker: Path) -> int:
    _wait_until(lambda: marker.exists() and marker.read_text().strip(), "the stand-in never started its child")
    return int(marker.read_text())


def _cleanup(proc: subprocess.Popen, grandchild: int | None) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if grandchild is not None and _running(grandchild):
        os.kill(grandchild, signal.SIGKILL)


def test_process_tree_finds_a_grandchild_in_another_session_and_stop_process_ends_both(tmp_path):
    marker = tmp_path / "grandchild.pid"
    proc = _parent_with_grandchild(marker)
    grandchild = None
    try:
        grandchild = _grandchild_pid(marker)
        tree = pids.process_tree(proc.pid)
        assert [pid for pid, _ in tree] == [grandchild]
        assert tree[0][1] == psutil.Process(grandchild), "the same process (PID and start since boot)"
        assert os.getpgid(grandchild) != os.getpgid(proc.pid), "a process-group signal would miss it"
        pids.stop_process(proc, timeout=30)
        assert proc.poll() is not None
        _wait_until(lambda: not _running(grandchild), "the grandchild outlived stop_process")
        assert not pids._alive(*tree[0])
        assert pids.process_tree(proc.pid) == []
    finally:
        _cleanup(proc, grandchild)


def test_a_tree_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path):
    marker = tmp_path / "grandchild.pid"
    proc = _parent_with_grandchild(marker, ignore_sigterm=True)
    grandchild = None
    try:
        grandchild = _grandchild_pid(marker)  # written after both set SIGTERM aside
        pids.stop_process(proc, timeout=1.0)
        assert proc.returncode == -signal.SIGKILL, "SIGTERM was ignored: SIGKILL ended it"
        _wait_until(lambda: not _running(grandchild), "the grandchild that ignores SIGTERM outlived stop_process")
    finally:
        _cleanup(proc, grandchild)


def test_a_descendant_that_ignores_sigterm_is_killed_after_its_leader_ended(tmp_path):
    # the leader ends on SIGTERM at once; its child (another session) ignores SIGTERM and must still
    # be SIGKILLed: the tree is taken before the first signal, when the child is still a descendant
    marker = tmp_path / "grandchild.pid"
    child = (
        "import os,signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(marker)!r},'w').write(str(os.getpid())); time.sleep(120)"
    )
    parent = (
        f"import subprocess,sys,time; subprocess.Popen([sys.executable,'-c',{child!r}], "
        "start_new_session=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], start_new_session=True)
    grandchild = None
    try:
        grandchild = _grandchild_pid(marker)
        pids.stop_process(proc, timeout=1.0)
        assert proc.returncode == -signal.SIGTERM
        _wait_until(lambda: not _running(grandchild), "the re-parented child outlived stop_process")
    finally:
        _cleanup(proc, grandchild)


def test_alive_tells_a_zombie_and_a_reused_pid_from_the_original():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        ((pid, start),) = [(p, s) for p, s in pids.process_tree(os.getpid()) if p == proc.pid]
        assert start == psutil.Process(pid)
        assert not pids._alive(pid, psutil.Process(os.getpid())), "another process under the PID: not it"
        # not reaped yet (no poll / wait): it stays a zombie, which is not alive
        _wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, "the child never ended")
        assert not pids._alive(pid, start)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert not pids._alive(pid, start)


def test_stop_process_of_nothing_or_of_an_ended_process_returns():
    pids.stop_process(None)
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    try:
        proc.wait(timeout=DEADLINE)
        pids.stop_process(proc, timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_wait_for_health_and_free_port():
    port = pids.free_port()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind(("127.0.0.1", port))
            server.listen()
            pids.wait_for_health("127.0.0.1", port, sleeper, timeout=DEADLINE)
    finally:
        pids.stop_process(sleeper, timeout=30)
    assert sleeper.poll() is not None
    with pytest.raises(pids.FlowerProcessError, match="exited with code"):
        pids.wait_for_health("127.0.0.1", pids.free_port(), sleeper, timeout=DEADLINE)
