"""The warm starter: a shim named ``flwr-clientapp`` runs its command in a forked, pre-imported child.

A stand-in target (``warm_probe:main``, written to ``tmp_path``) records what the child saw,
so the shim's argv, working directory, environment, stdout and exit code can be checked
without Flower. The starter process is stopped by PID in every test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from client.pids import stop_process
from client.warm_start import SOCKET_ENV, WarmStartError, write_shim

PROBE = """
import gc, json, os, sys, time
def main():
    out, mode = sys.argv[1], sys.argv[2]
    pulls = sys.modules.get("flwr.supercore.inflatable.inflatable_utils")
    # written whole, then renamed: a test that sees the file may read it (it failed once in CI,
    # reading the file between open() and the dump under load)
    with open(out + ".tmp", "w") as f:
        json.dump({"argv": sys.argv, "cwd": os.getcwd(), "probe": os.environ.get("PROBE"), "pid": os.getpid(),
                   "project_loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("client", "server")),
                   "frozen_objects": gc.get_freeze_count(),
                   "pull_backoff": None if pulls is None else [pulls.pull_objects.__kwdefaults__["initial_backoff"],
                                                               pulls.pull_objects.__kwdefaults__["backoff_cap"]]}, f)
    os.replace(out + ".tmp", out)
    print("hello from the child", flush=True)
    if mode == "sleep":
        time.sleep(60)
    sys.exit(int(mode))
"""


@pytest.fixture
def starter(tmp_path):
    (tmp_path / "warm_probe.py").write_text(PROBE)
    sock_dir = Path(tempfile.mkdtemp(prefix="ws-"))  # Unix socket paths are limited to ~107 bytes
    sock = sock_dir / "s"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client.warm_start",
            "--socket",
            str(sock),
            "--target",
            "warm_probe:main",
            "--preload",
            "json",
        ],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "ready" in proc.stdout.readline()
        yield sock, proc
    finally:
        stop_process(proc, timeout=10)
        proc.stdout.close()
        assert proc.poll() is not None, "the starter (not a process-group leader) was stopped by its PID"
        sock_dir.rmdir() if sock_dir.exists() and not any(sock_dir.iterdir()) else None


def _shim(tmp_path: Path) -> Path:
    return write_shim(tmp_path / "bin", "/bin/echo")


def test_shim_runs_the_command_in_a_forked_child(tmp_path, starter):
    sock, proc = starter
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    out = tmp_path / "seen.json"
    done = subprocess.run(
        [str(_shim(tmp_path)), str(out), "3"],
        check=False,
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ, SOCKET_ENV: str(sock), "PROBE": "x"},
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert "hello from the child" in done.stdout  # the child wrote to the shim's own stdout
    seen = json.loads(out.read_text())
    assert seen["argv"][1:] == [str(out), "3"]
    assert seen["cwd"] == str(workdir) and seen["probe"] == "x"
    assert seen["project_loaded"] == [], "Flower must import the app bundle's modules, not the starter's"
    assert seen["frozen_objects"] > 0, "the starter froze its imports' objects before forking"
    assert seen["pull_backoff"] == [0.02, 0.5], "the child inherits the short object-pull backoff"
    assert seen["pid"] != proc.pid
    assert proc.poll() is None, "the starter serves the next message too"
    again = subprocess.run(
        [str(_shim(tmp_path)), str(out), "0"],
        check=False,
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ, SOCKET_ENV: str(sock)},
        timeout=60,
    )
    assert again.returncode == 0 and json.loads(out.read_text())["pid"] != seen["pid"]


def test_sigterm_to_the_shim_reaches_the_child(tmp_path, starter):
    sock, _ = starter
    out = tmp_path / "seen.json"
    shim = subprocess.Popen(
        [str(_shim(tmp_path)), str(out), "sleep"], stdout=subprocess.DEVNULL, env={**os.environ, SOCKET_ENV: str(sock)}
    )
    try:
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        child = json.loads(out.read_text())["pid"]
        shim.send_signal(signal.SIGTERM)
        assert shim.wait(timeout=20) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{child}").exists(), "the forked child was stopped with its shim"
    finally:
        stop_process(shim, timeout=10)


def test_shim_falls_back_to_the_real_command_without_a_starter(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
    done = subprocess.run(
        [str(_shim(tmp_path)), "--token", "abc"], check=False, capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 0 and done.stdout.strip() == "--token abc"  # /bin/echo ran instead
    env[SOCKET_ENV] = str(tmp_path / "no-such-socket")
    done = subprocess.run([str(_shim(tmp_path)), "x"], check=False, capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "x"


def test_write_shim_rejects_a_missing_real_command(tmp_path):
    with pytest.raises(WarmStartError, match="no-such-command"):
        write_shim(tmp_path / "bin", tmp_path / "no-such-command")


def test_supernode_environment_puts_the_shim_first_on_path(tmp_path, monkeypatch):
    from client import launcher

    seen = {}

    class FakePopen:
        def __init__(self, command, env, **kwargs):
            seen.update(env=env, command=command)

    monkeypatch.setattr(launcher.subprocess, "Popen", FakePopen)
    launcher.start_supernode(
        tmp_path / ".flwr",
        superlink="127.0.0.1:1",
        node_config={"partition-id": 0},
        clientappio_port=2,
        insecure=True,
        extra_env={"PATH": "/shim/bin", SOCKET_ENV: "/tmp/s", "OMP_NUM_THREADS": "1"},
    )
    path = seen["env"]["PATH"].split(os.pathsep)
    assert path[0] == "/shim/bin" and str(Path(sys.executable).parent) in path[1:]
    assert seen["env"][SOCKET_ENV] == "/tmp/s" and seen["env"]["OMP_NUM_THREADS"] == "1"
