"""Deployment errors say what and where (issue 31, deliverable 4).

A client at a refused address says so at once and prints a progress line at each retry, then gives
up with one line; an address without a port, a port out of range or a busy port is one line before
any process starts; a child process that fails is reported with the path of its log. Every bound
here is generous (a slow machine passes); every process a test starts is stopped by PID.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from client import launcher, pids
from client.cli import ServerUnreachableError, wait_for_server

#: Generous bound for a command that must end by itself.
BOUND_SECONDS = 60


@pytest.fixture
def party(tmp_path) -> Path:
    """A tiny valid party folder (labelled triples; valid and test seen in train)."""
    folder = tmp_path / "0"
    folder.mkdir()
    (folder / "train.txt").write_text("a\tr\tb\nb\tr\tc\nc\ts\ta\n")
    (folder / "valid.txt").write_text("a\ts\tb\n")
    (folder / "test.txt").write_text("b\ts\tc\n")
    return folder


def _refused_port() -> int:
    """A port nothing listens on (it was free a moment ago)."""
    return pids.free_port()


def test_a_client_at_a_refused_address_says_so_at_once_and_gives_up(party, tmp_path):
    server = f"127.0.0.1:{_refused_port()}"
    command = [
        str(Path(sys.executable).parent / "simskip-client"),
        "--server",
        server,
        "--data",
        str(party),
        "--insecure",
        "--max-wait-time",
        "6",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        out, err = proc.communicate(timeout=BOUND_SECONDS)
    finally:
        pids.stop_process(proc)
    waits = [line for line in out.splitlines() if "waiting for" in line]
    assert waits, (out, err)
    assert re.fullmatch(
        rf"\[simskip-client\] waiting for {re.escape(server)}: connection refused .*"
        r"\(attempt 1, next in \d+ s, giving up in \d+ s\)",
        waits[0],
    ), waits[0]
    assert any("(attempt 2, " in line for line in waits), out
    assert proc.returncode == 1, (out, err)
    errors = err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("simskip-client: error: could not reach " + server), err
    assert "connection refused" in errors[0] and "--max-wait-time 6" in errors[0]
    assert not (tmp_path / "out" / "supernode.log").exists(), "no SuperNode was started for an unreachable server"


def test_wait_for_server_returns_once_the_server_listens():
    """The first look fails (nothing listens yet); a later one succeeds, and says so."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        lines: list[str] = []
        opened = threading.Event()

        def open_later():
            while not lines:  # after the first miss was reported
                time.sleep(0.05)
            listener.listen()
            opened.set()

        thread = threading.Thread(target=open_later, daemon=True)
        thread.start()
        attempts = wait_for_server(f"127.0.0.1:{port}", BOUND_SECONDS, say=lines.append, first_retry=0.2)
        thread.join(timeout=BOUND_SECONDS)
    assert opened.is_set() and attempts >= 2
    assert lines[0].startswith(f"waiting for 127.0.0.1:{port}: connection refused") and "(attempt 1, " in lines[0]
    assert lines[-1] == f"reached 127.0.0.1:{port} (attempt {attempts})"


def test_wait_for_server_gives_up_naming_the_cause():
    with pytest.raises(ServerUnreachableError, match=r"could not reach 127\.0\.0\.1:\d+: connection refused"):
        wait_for_server(f"127.0.0.1:{_refused_port()}", 0.5, say=lambda line: None, first_retry=0.1)


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("127.0.0.1", "--server must be HOST:PORT (e.g. 127.0.0.1:9092), got '127.0.0.1'"),
        ("127.0.0.1:99999", "--server needs a port in 1..65535"),
        ("127.0.0.1:0", "--server needs a port in 1..65535"),
        ("http://h:1", "--server must be HOST:PORT"),
    ],
)
def test_a_client_address_without_a_valid_port_is_one_line_before_any_process(server, message, party, capsys):
    from client.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--server", server, "--data", str(party), "--insecure", "--output-dir", str(party / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (party / "out").exists()


def test_a_busy_client_port_is_one_line(party, capsys):
    from client.cli import main

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            main(["--server", "127.0.0.1:1", "--data", str(party), "--insecure", "--port", str(port)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"--port {port}: the port is in use" in err and err.count("\n") == 1


def test_a_server_port_out_of_range_is_one_line_before_any_process(tmp_path, capsys):
    from server.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--insecure", "--port", "99999", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err == "simskip-server: error: --port must be in 1..65535, got 99999\n"
    assert not (tmp_path / "run").exists()


def test_a_busy_server_port_is_one_line_before_any_process(tmp_path, capsys):
    from server.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            main(["--insecure", "--port", str(port), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert f"--port {port}: the port is in use on 127.0.0.1" in err
    assert not (tmp_path / "run").exists()


def test_a_server_host_of_another_machine_is_one_line(tmp_path, capsys):
    from server.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--insecure", "--host", "192.0.2.1", "--run-dir", str(tmp_path / "run")])  # TEST-NET-1
    assert info.value.code == 2
    assert capsys.readouterr().err == "simskip-server: error: --host 192.0.2.1 is not an address of this machine\n"


def test_a_child_that_dies_at_start_up_is_named_with_its_log(tmp_path):
    log = tmp_path / "logs" / "superlink.log"
    proc = launcher._popen([sys.executable, "-c", "print('no luck'); raise SystemExit(3)"], tmp_path, log)
    try:
        with pytest.raises(pids.FlowerProcessError) as info:
            launcher.wait_until_listening("127.0.0.1", pids.free_port(), proc, timeout=BOUND_SECONDS)
    finally:
        pids.stop_process(proc)
    assert str(info.value) == f"flower-superlink exited with code 3 during start-up (log: {log})"
    assert "no luck" in log.read_text()


def test_log_note():
    assert launcher.log_note(None) == ""
    assert launcher.log_note(Path("/r/logs/run.log")) == " (log: /r/logs/run.log)"
