"""Property tests of the five commands' option checking (issue 31, deliverable 3).

Each command's ``parse_and_validate(argv)`` (its parser plus every check made before any work
starts) is driven with random values for each of its options; whatever they are, it either
returns the parsed options or exits cleanly: status 0 (``--help``, ``--version``) or 2 with one
line ``simskip-X: error: MESSAGE`` naming an option or argument; never a traceback, never another
status. No work starts: no data is read, no process is started (``parse_and_validate`` binds a
port for a moment at most).

Settings as in tests/test_loader_fuzz.py: derandomized (the same examples on every run; set
SIMSKIP_FUZZ_EXPLORE=1 and vary ``--hypothesis-seed`` to explore), no deadline.
"""

from __future__ import annotations

import contextlib
import io
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=200,
    derandomize=not os.environ.get("SIMSKIP_FUZZ_EXPLORE"),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Values that sit on or across a boundary of some option.
EDGES = [
    "0",
    "1",
    "2",
    "-1",
    "-0",
    "+3",
    "65535",
    "65536",
    "99999",
    "4294967295",
    "4294967296",
    "1.5",
    "0.5",
    "1e3",
    "1e309",
    "nan",
    "inf",
    "-inf",
    "1_000",
    "0x10",
    " 7 ",
    "",
    " ",
    "9" * 5000,
    "x=1",
    "=",
    "a\nb",
    "\x00",
    "a\x00b",
    "127.0.0.1",
    "127.0.0.1:",
    ":9092",
    "127.0.0.1:0",
    "127.0.0.1:9092",
    "[::1]:9092",
    "h:65536",
    "UMLS",
    "/nonexistent/x",
    "out.npy",
    "x.xyz",
    "-",
    "--",
    "model=RotatE",
    "learning-rate=-1",
    "num-server-rounds=0",
    "epochs=-1",
    "seed=1e999",
]
VALUES = st.one_of(
    st.sampled_from(EDGES),
    st.integers(-(10**12), 10**12).map(str),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=16),
)
#: Host names the server's port check may look up: only local ones (no DNS query of random text).
HOSTS = st.sampled_from(["127.0.0.1", "0.0.0.0", "localhost", "::1", "", " ", "a b", "10.9.9.9", "::"])


def _pairs(options: dict[str, st.SearchStrategy[str] | None]) -> st.SearchStrategy[list[str]]:
    """Up to four options, each with a value (``--flag value`` or ``--flag=value``) or none (a switch)."""

    def render(flag: str, value: str | None, joined: bool) -> list[str]:
        if value is None:
            return [flag]
        return [f"{flag}={value}"] if joined else [flag, value]

    one = st.sampled_from(sorted(options)).flatmap(
        lambda flag: st.tuples(
            st.just(flag), options[flag] if options[flag] is not None else st.none(), st.booleans()
        ).map(lambda t: render(*t))
    )
    return st.lists(one, max_size=4).map(lambda parts: [token for part in parts for token in part])


def _check(module, argv: list[str], command: str) -> None:
    """``parse_and_validate(argv)``: options, or exit 0, or exit 2 with one line naming an option."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            module.parse_and_validate(argv)
            return
        except SystemExit as stop:
            code = stop.code
    text = err.getvalue()
    assert code in (0, 2), (argv, code, text)
    if code == 0:
        return
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), (argv, text)
    message = lines[0]
    assert len(message) < 2500, (argv, message[:300])
    # an option (given or missing) or an argument by its name, or argparse's own words for a token
    words = ("INPUT", "OUTPUT", "SOURCE", "OUT", "required", "unrecognized arguments", "invalid choice", "argument")
    assert re.search(r"--[a-z]", message) or any(word in message for word in words), (argv, message)
    for parameter in ("num_clients", "overwrite=True", "on_unseen="):
        assert parameter not in message, (argv, message)


@pytest.fixture
def folder(tmp_path_factory):
    """A party folder and an embedding file, so that the random options meet real paths too."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "party").mkdir()
    np.save(root / "in.npy", np.ones((4, 3)))
    return root


@FUZZ
@given(sub=st.sampled_from(["stats", "partition"]), source=VALUES, extra=st.data())
def test_simskip_data_options(sub, source, extra, folder):
    from kg_datasets import cli

    options = {
        "--clients": VALUES,
        "--partition": st.one_of(st.sampled_from(["relation", "triple"]), VALUES),
        "--seed": VALUES,
        "--on-unseen": st.one_of(st.sampled_from(["error", "drop"]), VALUES),
        "--json": None,
    }
    if sub == "partition":
        options["--overwrite"] = None
    argv = [sub, source] + ([str(folder / "out")] if sub == "partition" else []) + extra.draw(_pairs(options))
    _check(cli, argv, "simskip-data")


@FUZZ
@given(input_=st.one_of(st.just("IN"), VALUES), output=st.one_of(st.just("OUT"), VALUES), extra=st.data())
def test_simskip_refine_options(input_, output, extra, folder):
    from simskip_core import cli

    options = {
        "--config": VALUES,
        "--set": st.one_of(st.sampled_from(["epochs=2", "lr=0", "temperature=-1", "seed=x", "nope=1"]), VALUES),
        "--summary": VALUES,
        "--load-weights": VALUES,
        "--save-weights": VALUES,
    }
    argv = [
        str(folder / "in.npy") if input_ == "IN" else input_,
        str(folder / "out.npy") if output == "OUT" else output,
        *extra.draw(_pairs(options)),
    ]
    _check(cli, argv, "simskip-refine")


@FUZZ
@given(extra=st.data())
def test_simskip_sim_options(extra, folder):
    from server import simulation

    options = {
        "--dataset": st.one_of(st.just("UMLS"), VALUES),
        "--clients": VALUES,
        "--partition": VALUES,
        "--partition-seed": VALUES,
        "--rounds": VALUES,
        "--setting": st.one_of(st.sampled_from(["fede", "isolation", "collection"]), VALUES),
        "--preset": st.one_of(st.sampled_from(["small-graph", "fede-paper"]), VALUES),
        "--set": VALUES,
        "--run-dir": st.one_of(st.just(str(folder / "run")), VALUES),
        "--num-cpus-per-client": VALUES,
        "--num-gpus-per-client": VALUES,
        "--concurrent-clients": VALUES,
        "--quiet": None,
        "--refine-only": st.one_of(st.just(str(folder)), VALUES),
        "--resume": st.one_of(st.just(str(folder)), VALUES),
    }
    _check(simulation, extra.draw(_pairs(options)), "simskip-sim")
    assert not (folder / "run").exists(), "nothing is written while the options are checked"


@FUZZ
@given(extra=st.data(), insecure=st.booleans())
def test_simskip_server_options(extra, insecure, folder):
    from server import cli

    options = {
        "--run-dir": st.one_of(st.just(str(folder / "run")), VALUES),
        "--resume": st.one_of(st.just(str(folder)), VALUES),
        "--host": HOSTS,
        "--quiet": None,
        "--preset": VALUES,
        "--port": VALUES,
        "--min-clients": VALUES,
        "--rounds": VALUES,
        "--setting": VALUES,
        "--set": VALUES,
        "--insecure": None,
        "--ssl-ca-certfile": VALUES,
        "--ssl-certfile": VALUES,
        "--ssl-keyfile": VALUES,
        "--auth-public-keys": VALUES,
    }
    argv = (["--insecure"] if insecure else []) + extra.draw(_pairs(options))
    _check(cli, argv, "simskip-server")
    assert not (folder / "run").exists(), "nothing is written while the options are checked"


@FUZZ
@given(
    extra=st.data(),
    server=st.one_of(st.just("127.0.0.1:9092"), VALUES),
    data=st.one_of(st.just("D"), VALUES),
    insecure=st.booleans(),
)
def test_simskip_client_options(extra, server, data, insecure, folder):
    from client import cli

    options = {
        "--partition-id": VALUES,
        "--output-dir": VALUES,
        "--port": VALUES,
        "--max-wait-time": VALUES,
        "--insecure": None,
        "--root-certificates": VALUES,
        "--threads": VALUES,
        "--cold-start": None,
        "--stay": None,
        "--quiet": None,
        "--auth-private-key": VALUES,
    }
    argv = ["--server", server, "--data", str(folder / "party") if data == "D" else data]
    argv += ["--insecure"] if insecure else []
    _check(cli, argv + extra.draw(_pairs(options)), "simskip-client")


def test_the_checks_accept_good_options(folder):
    """The fuzzing above would pass if everything were refused: good options are accepted."""
    from client import cli as client_cli
    from client import pids
    from kg_datasets import cli as data_cli
    from server import cli as server_cli
    from server import simulation
    from simskip_core import cli as refine_cli

    assert data_cli.parse_and_validate(["partition", "UMLS", str(folder / "o"), "--clients", "3", "--seed", "7"])
    assert refine_cli.parse_and_validate([str(folder / "in.npy"), str(folder / "o.npy"), "--set", "epochs=2"])
    assert simulation.parse_and_validate(["--clients", "2", "--rounds", "1", "--set", "model=RotatE"])
    port = pids.free_port()
    args = server_cli.parse_and_validate(["--insecure", "--port", str(port), "--min-clients", "2"])
    assert args.port == port
    args = client_cli.parse_and_validate(["--server", "[::1]:9092", "--data", str(folder / "party"), "--insecure"])
    assert args.server == "[::1]:9092" and re.fullmatch(r"\d+", str(args.max_wait_time).split(".")[0])
