"""The one command-line convention of the five commands (issue 31, deliverable 5;
:mod:`simskip_core.cli_common`): ``--version``, exit 2 with ``PROG: error: MESSAGE`` (one line)
for usage and input errors, warnings as one line ``PROG: warning: MESSAGE``, an example in every
``--help``; and the options checked before any work with the flag named (deliverable 3)."""

from __future__ import annotations

import importlib
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from kg_datasets.errors import KGDataWarning
from simskip_core import cli_common

FIXTURES = Path(__file__).parent / "fixtures" / "kg"

#: command -> the module of its main() and parse_and_validate()
COMMANDS = {
    "simskip-data": "kg_datasets.cli",
    "simskip-refine": "simskip_core.cli",
    "simskip-sim": "server.simulation",
    "simskip-server": "server.cli",
    "simskip-client": "client.cli",
}


def _module(command):
    return importlib.import_module(COMMANDS[command])


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_version_prints_and_exits_0(command, capsys):
    with pytest.raises(SystemExit) as info:
        _module(command).main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"{command} {cli_common.version()}"
    assert re.fullmatch(r"\d+\.\d+.*", cli_common.version())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_usage_error_is_one_line_and_exit_2(command, capsys):
    with pytest.raises(SystemExit) as info:
        _module(command).main(["--no-such-option"])
    assert info.value.code == 2
    line = _one_error_line(capsys.readouterr().err, command)
    assert "--no-such-option" in line or "required" in line


@pytest.mark.parametrize(
    ("command", "argv", "named"),
    [
        ("simskip-data", ["stats", "UMLS", "--clients", "0"], "--clients must be >= 1, got 0"),
        ("simskip-data", ["partition", "UMLS", "out", "--seed", "-1"], "--seed must be in 0..4294967295, got -1"),
        (
            "simskip-refine",
            ["in.npy", "out.npy", "--set", "epochs=-1"],
            "--set: config key 'epochs' must be >= 0, got -1",
        ),
        ("simskip-refine", ["in.npy", "out.xyz"], "OUTPUT: unknown file type '.xyz'"),
        ("simskip-sim", ["--clients", "0"], "--clients must be >= 1, got 0"),
        ("simskip-sim", ["--num-gpus-per-client", "nan"], "--num-gpus-per-client must be a finite number"),
        ("simskip-sim", ["--rounds", "1e3"], "--rounds must be an integer"),
        ("simskip-sim", ["--set", "learning-rate=-1"], "run config (--preset, --set): learning-rate must be > 0"),
        ("simskip-server", ["--insecure", "--port", "99999"], "--port must be in 1..65535, got 99999"),
        ("simskip-server", ["--insecure", "--min-clients", "0"], "--min-clients must be >= 1, got 0"),
        ("simskip-client", ["--server", "127.0.0.1", "--data", ".", "--insecure"], "--server must be HOST:PORT"),
        ("simskip-client", ["--server", "h:99999", "--data", ".", "--insecure"], "--server needs a port in 1..65535"),
        ("simskip-client", ["--server", "h:1", "--data", ".", "--insecure", "--max-wait-time", "0"], "--max-wait-time"),
        ("simskip-client", ["--server", "h:1", "--data", ".", "--insecure", "--threads", "0"], "--threads must be"),
    ],
)
def test_an_out_of_range_value_names_its_flag_before_any_work(command, argv, named, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np = pytest.importorskip("numpy")
    np.save(tmp_path / "in.npy", np.ones((4, 3)))
    with pytest.raises(SystemExit) as info:
        _module(command).parse_and_validate(argv)
    assert info.value.code == 2
    line = _one_error_line(capsys.readouterr().err, command)
    assert named in line
    for parameter in ("num_clients", "overwrite=True", "on_unseen="):
        assert parameter not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"], "nothing was written"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_missing_input_file_is_exit_2(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "missing")
    argv = {
        "simskip-data": ["stats", missing],
        "simskip-refine": [missing + ".npy", str(tmp_path / "out.npy")],
        "simskip-sim": ["--dataset", missing, "--run-dir", str(tmp_path / "run")],
        "simskip-server": ["--ssl-ca-certfile", missing, "--ssl-certfile", missing, "--ssl-keyfile", missing],
        "simskip-client": ["--server", "127.0.0.1:9092", "--data", missing, "--insecure"],
    }[command]
    try:
        code = _module(command).main(argv)
    except SystemExit as stop:  # found while checking the options
        code = stop.code
    assert code == 2
    line = _one_error_line(capsys.readouterr().err, command)
    assert "missing" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "out.npy").exists()


def test_a_warning_is_one_readable_line(tmp_path):
    """Through the installed entry point: KGDataWarning without Python's ``file.py:LINE: Category:``."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "simskip-data"), "stats", str(FIXTURES / "duplicates"), "--clients", "1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and all(line.startswith("simskip-data: warning: ") for line in lines), done.stderr
    assert "repeated triple" in done.stderr
    assert ".py:" not in done.stderr and "KGDataWarning" not in done.stderr


def test_the_warning_format_is_restored_after_main(capsys):
    before = warnings.showwarning
    with cli_common.warning_format("simskip-x"):
        warnings.warn_explicit("two\nlines", KGDataWarning, "f.py", 1)
        warnings.warn_explicit("from a library", DeprecationWarning, "lib.py", 2)
    assert warnings.showwarning is before
    assert capsys.readouterr().err.splitlines() == [
        "simskip-x: warning: two\\nlines",
        "simskip-x: warning: DeprecationWarning: from a library",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["simskip-data", "--help"],
        ["simskip-data", "stats", "--help"],
        ["simskip-data", "partition", "--help"],
        ["simskip-refine", "--help"],
        ["simskip-sim", "--help"],
        ["simskip-server", "--help"],
        ["simskip-client", "--help"],
    ],
)
def test_every_help_has_an_example(argv, capsys):
    with pytest.raises(SystemExit) as info:
        _module(argv[0]).main(argv[1:])
    assert info.value.code == 0
    out = capsys.readouterr().out
    examples = out[out.index("examples:") :].splitlines()[1:]
    assert examples and all(line.startswith("  " + argv[0].split()[0]) or line.startswith("    ") for line in examples)
    if len(argv) == 3:  # a subcommand's example uses that subcommand
        assert f"{argv[0]} {argv[1]} " in examples[0]


def test_a_runtime_failure_is_exit_1_and_an_input_error_exit_2(capsys):
    def fail(error):
        def work():
            raise error

        return work

    assert cli_common.run_main("simskip-x", fail(RuntimeError("child died"))) == 1
    assert capsys.readouterr().err == "simskip-x: error: RuntimeError: child died\n"
    assert (
        cli_common.run_main(
            "simskip-x", fail(ValueError("num_clients must be >= 1")), parameters={"num_clients": "--clients"}
        )
        == 2
    )
    assert capsys.readouterr().err == "simskip-x: error: ValueError: --clients must be >= 1\n"
    assert cli_common.run_main("simskip-x", fail(KeyboardInterrupt())) == 130


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9092", ("127.0.0.1", 9092)),
        ("server.example.org:1", ("server.example.org", 1)),
        ("[::1]:65535", ("::1", 65535)),
    ],
)
def test_split_address(text, expected):
    assert cli_common.split_address(text) == expected


@pytest.mark.parametrize(
    "text", ["127.0.0.1", "host:", ":9092", "h:0", "h:65536", "h:99999", "h:x", "a b:1", "::1:1", ""]
)
def test_split_address_refuses(text):
    with pytest.raises(ValueError, match="PORT|port"):
        cli_common.split_address(text)


def test_check_port_free_names_a_busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        number = busy.getsockname()[1]
        with pytest.raises(cli_common.UsageError, match=f"--port {number}: the port is in use"):
            cli_common.check_port_free("127.0.0.1", number, "--port")
    cli_common.check_port_free("127.0.0.1", number, "--port")  # free again once closed
