"""``simskip-server``: start a Flower SuperLink, run the federation to its end, exit.

Steps: check the certificate and key files, start ``flower-superlink`` (``FLWR_HOME`` under the
run folder, no runtime dependency installation, telemetry off), register the parties' public keys
when node authentication is on, submit this app with ``flwr run`` (the connection lives in
``$FLWR_HOME/config.toml``), stream its log, read the run's final status with ``flwr ls``, stop
the SuperLink by PID. Exit 0 only when the run ended ``finished:completed`` and wrote
``final_metrics.json``; 1 otherwise (``flwr run`` itself exits 0 even when the ServerApp raised).

SIGINT / SIGTERM: the SuperLink, its SuperExec and the ServerApp are stopped by PID (SIGTERM,
SIGKILL after a grace period; the checkpoint of the last completed round stays as the ServerApp
wrote it), ``RUN_DIR/partial_results.json`` says how far the run got and how to resume it, and
the exit status is 130 (SIGINT) or 143 (SIGTERM).

``simskip-server --resume RUN_DIR`` continues an interrupted run: the run config saved in
``RUN_DIR/config.json`` with ``--set`` / ``--rounds`` on top, ``resume=true``; the ServerApp loads
``RUN_DIR/checkpoint/``.

Parties join with ``simskip-client --server HOST:PORT --data DIR``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from client import credentials, launcher, pids
from client.credentials import TLSFiles
from client.kge.config import add_set_option
from server import signals
from server.partial_results import write_partial_results
from server.run_options import (
    add_preset_option,
    check_new_run_dir,
    check_run_config,
    default_run_dir,
    run_command,
    run_config_overrides,
)
from server.simulation import ResumeError, resume_run_config
from simskip_core.cli_common import (
    INPUT_ERRORS,
    RUN_CONFIG_FLAGS,
    CommandParser,
    UsageError,
    add_version,
    check_port_free,
    integer,
)
from simskip_core.cli_common import path as path_arg
from simskip_core.cli_common import port as port_number

__all__ = [
    "ServerInterrupted",
    "build_parser",
    "main",
    "parse_and_validate",
    "run_server",
]

DEFAULT_PORT = 9092
#: seconds the ServerApp (and the SuperLink) get after SIGTERM before SIGKILL
STOP_GRACE_SECONDS = 20.0


class ServerInterrupted(BaseException):
    """SIGINT or SIGTERM reached ``simskip-server``.

    A :class:`BaseException` (like :class:`KeyboardInterrupt`) so that no ``except Exception``
    on the way swallows it: it unwinds through every ``finally`` that stops a process.

    :param signum: the signal number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


EXAMPLES = """examples:
  simskip-server --insecure --port 9092 --min-clients 3 --rounds 20 --run-dir runs/fed
  simskip-server --ssl-ca-certfile ca.crt --ssl-certfile server.crt --ssl-keyfile server.key \\
      --auth-public-keys parties.pub --host 0.0.0.0 --set model=RotatE
  simskip-server --resume runs/fed --insecure --rounds 30
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``simskip-server`` argument parser."""
    parser = CommandParser(
        prog="simskip-server",
        description=__doc__.split("\n\n")[0] + "\n\nParties join with simskip-client --server HOST:PORT --data DIR.",
        epilog=EXAMPLES,
    )
    add_version(parser)
    parser.add_argument("--run-dir", type=path_arg, default=None, help="output folder (default runs/<timestamp>)")
    parser.add_argument(
        "--resume",
        type=path_arg,
        default=None,
        metavar="RUN_DIR",
        help="continue the interrupted run in RUN_DIR from its last checkpoint "
        "(its config.json, with --set/--rounds on top)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the SuperLink listens on (default 127.0.0.1)")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print only warnings, errors and summary lines (logs/run.log keeps every line)",
    )
    add_preset_option(parser)
    parser.add_argument(
        "--port", type=port_number, default=DEFAULT_PORT, help=f"SuperLink port, 1..65535 (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--min-clients",
        type=integer(1),
        default=None,
        help="parties to wait for before round 1, >= 1 (default: the run config's, 2)",
    )
    parser.add_argument("--rounds", type=integer(1), default=None, help="num-server-rounds (default: pyproject's)")
    parser.add_argument("--setting", default=None, choices=["fede", "isolation"])
    add_set_option(parser, dest="sets", help="run-config override, e.g. --set model=RotatE (repeatable)")
    security = parser.add_argument_group("transport security (one of)")
    security.add_argument("--insecure", action="store_true", help="plain HTTP (only when asked for)")
    security.add_argument("--ssl-ca-certfile", type=path_arg, help="CA certificate (PEM) that signed --ssl-certfile")
    security.add_argument("--ssl-certfile", type=path_arg, help="server certificate (PEM), its SAN naming the host")
    security.add_argument("--ssl-keyfile", type=path_arg, help="server private key (PEM)")
    auth = parser.add_argument_group("node authentication (needs TLS)")
    auth.add_argument(
        "--auth-public-keys",
        type=path_arg,
        default=None,
        metavar="FILE",
        help="only parties whose OpenSSH EC public key is in FILE (one per line) may join; "
        "Flower's SuperNode authentication",
    )
    return parser


def _check_security_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The transport-security options are one of ``--insecure`` or all three certificate files."""
    given = [args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile]
    if args.insecure:
        if any(given):
            parser.error("--insecure and the certificate files (--ssl-*) are exclusive")
        if args.auth_public_keys is not None:
            parser.error("--auth-public-keys needs TLS (Flower refuses node authentication with --insecure)")
    elif not all(given):
        parser.error("pass --insecure, or all of --ssl-ca-certfile --ssl-certfile --ssl-keyfile")


def parse_and_validate(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check every option of ``simskip-server`` before anything is written or started:
    ranges, exclusive options, the certificate and key files, the run config the options make, and
    that ``--host:--port`` is free.

    :raises SystemExit: 2 with one line ``simskip-server: error: ...`` naming the option; 0 after
        ``--help`` / ``--version``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.host.strip() or any(c.isspace() for c in args.host):
        parser.error(f"--host must be an address or host name, got {args.host!r}")
    if args.resume is not None and args.run_dir is not None and args.run_dir.resolve() != args.resume.resolve():
        parser.error("--resume RUN_DIR continues in RUN_DIR; do not pass another --run-dir")
    if args.run_dir is not None and args.run_dir.exists() and not args.run_dir.is_dir():
        parser.error(f"--run-dir: {args.run_dir} is a file, not a folder")
    if args.resume is not None:
        try:
            resume_run_config(args.resume.expanduser().resolve())
        except ResumeError as err:
            parser.error(f"--resume: {err}")
    _check_security_options(parser, args)
    try:
        _tls(args, _connect_host(args.host))
        if args.auth_public_keys is not None:
            credentials.read_authorized_keys(args.auth_public_keys)
        overrides = _overrides(args)
    except (ValueError, credentials.CredentialError) as err:
        parser.error(str(err))
    if args.resume is None:
        try:
            check_run_config(overrides)
        except ValueError as err:
            parser.error(f"{RUN_CONFIG_FLAGS}: {err}")
    try:
        check_port_free(args.host, args.port, "--port", "--host")
    except UsageError as err:
        parser.error(str(err))
    return args


def _tls(args: argparse.Namespace, connect_host: str) -> Any:
    """The checked certificate files, or ``None`` with ``--insecure`` (see :func:`parse_and_validate`)."""
    if args.insecure:
        return None
    tls = TLSFiles(*(p.expanduser().resolve() for p in (args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile)))
    tls.check(host=connect_host)
    return tls


def _connect_host(host: str) -> str:
    """The address this machine's own ``flwr`` commands use to reach the SuperLink."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _fresh_database(flwr_home: Path) -> Path:
    """A SuperLink database no earlier start of this run folder used.

    A resumed run must not inherit the registered nodes of the interrupted one: a key removed
    from ``--auth-public-keys`` would stay registered, and registering a kept key again fails
    ("public key already in use"). The earlier database stays (run-folder files are never deleted).
    """
    first = flwr_home / "superlink.db"
    if not first.exists():
        return first
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-%f")
    return flwr_home / f"superlink-{stamp}.db"


def run_server(
    run_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    run_config: dict[str, Any] | None = None,
    tls: Any = None,
    authorized_keys: Sequence[Any] = (),
    on_start: Callable[[Path], None] | None = None,
    quiet: bool = False,
) -> Path:
    """Run one federation behind a SuperLink; return the run folder.

    :param run_config: run-config overrides (``run-dir`` is set here).
    :param tls: :class:`client.credentials.TLSFiles`, or ``None`` for an insecure SuperLink.
    :param authorized_keys: :class:`client.credentials.AuthorizedKey` of each party allowed to join;
        non-empty turns Flower's SuperNode authentication on (needs ``tls``).
    :param on_start: called with the resolved run folder before any process starts.
    :param quiet: print only problems and summary lines (the run log keeps everything).
    :raises client.pids.FlowerProcessError: when the run did not complete.
    """
    run_dir = run_dir.resolve()
    run_config = {**(run_config or {}), "run-dir": str(run_dir)}
    check_run_config(run_config)  # fail now, not after start-up, and before the run folder is made
    if not run_config.get("resume"):  # the output rule (simskip_core.outputs): no input, no earlier run
        tls_files = (tls.ca_certfile, tls.certfile, tls.keyfile) if tls is not None else ()
        check_new_run_dir(run_dir, inputs=tls_files)
    run_dir.mkdir(parents=True, exist_ok=True)
    if on_start is not None:
        on_start(run_dir)
    flwr_home = run_dir / ".flwr"
    superlink = None
    try:
        with signals.deferred():  # a signal now is raised once `superlink` is set, inside this try
            superlink = launcher.start_superlink(
                flwr_home,
                host=host,
                port=port,
                insecure=tls is None,
                tls=tls,
                enable_supernode_auth=bool(authorized_keys),
                database=_fresh_database(flwr_home),
                log_path=run_dir / "logs" / "superlink.log",
            )
        connect_host = _connect_host(host)
        launcher.wait_until_listening(connect_host, port, superlink)
        launcher.write_connection(
            flwr_home,
            f"{connect_host}:{port}",
            insecure=tls is None,
            root_certificates=tls.ca_certfile if tls is not None else None,
        )
        if authorized_keys:
            node_ids = launcher.register_supernodes(flwr_home, authorized_keys)
            print(f"[simskip-server] node authentication on: {len(node_ids)} registered public keys", flush=True)
        print(f"[simskip-server] SuperLink (pid {superlink.pid}) on {host}:{port}; waiting for parties", flush=True)
        run_id, status = launcher.run_app(
            flwr_home, run_config, superlink=superlink, log_path=run_dir / "logs" / "run.log", quiet=quiet
        )
    finally:
        pids.stop_process(superlink, timeout=STOP_GRACE_SECONDS)
    launcher.check_run_completed(run_id, status, run_dir)
    return run_dir


def _resume_command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """``simskip-server --resume RUN_DIR`` with this invocation's address, security and overrides."""
    command = ["simskip-server", "--resume", str(run_dir), "--host", args.host, "--port", str(args.port)]
    if args.insecure:
        command.append("--insecure")
    else:
        for flag, value in (
            ("--ssl-ca-certfile", args.ssl_ca_certfile),
            ("--ssl-certfile", args.ssl_certfile),
            ("--ssl-keyfile", args.ssl_keyfile),
            ("--auth-public-keys", args.auth_public_keys),
        ):
            if value is not None:
                command += [flag, str(Path(value).expanduser().resolve())]
    if args.min_clients is not None:
        command += ["--min-clients", str(args.min_clients)]
    if args.rounds is not None:
        command += ["--rounds", str(args.rounds)]
    for item in args.sets:
        command += ["--set", item]
    return command


def _overrides(args: argparse.Namespace) -> dict[str, Any]:

    overrides = run_config_overrides(args.preset, args.sets)
    if args.min_clients is not None:
        overrides["min-clients"] = args.min_clients
    if args.rounds is not None:
        overrides["num-server-rounds"] = args.rounds
    if args.setting is not None:
        overrides["setting"] = args.setting
    return overrides


def _interrupt(signum: int) -> ServerInterrupted:
    return ServerInterrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``simskip-server``; returns the exit status (0 completed, 2 bad option or input,
    1 any other failure, 130/143 on SIGINT/SIGTERM)."""
    args = parse_and_validate(argv)
    started: dict[str, Path] = {}

    def run() -> Path:
        # checked by parse_and_validate already; a missing config.json (server.simulation.ResumeError)
        # is a one-line error here, exit 2

        tls = _tls(args, _connect_host(args.host))
        keys = credentials.read_authorized_keys(args.auth_public_keys) if args.auth_public_keys is not None else ()
        overrides = _overrides(args)
        if args.resume is not None:  # the same run config as simskip-sim --resume
            run_dir = args.resume.expanduser().resolve()
            overrides = resume_run_config(run_dir, overrides=overrides)
        else:
            run_dir = args.run_dir or default_run_dir()
        return run_server(
            run_dir,
            host=args.host,
            port=args.port,
            run_config=overrides,
            tls=tls,
            authorized_keys=keys,
            on_start=lambda path: started.setdefault("run_dir", path),
            quiet=args.quiet,
        )

    with signals.installed("simskip-server", _interrupt):  # until the partial results are written
        try:
            return run_command(
                "simskip-server", run, input_errors=(*INPUT_ERRORS, ResumeError, credentials.CredentialError)
            )
        except ServerInterrupted as interrupt:
            # every process is stopped by now (run_server's finally); the run folder is final
            run_dir = started.get("run_dir")
            if run_dir is None:
                print(f"[simskip-server] {interrupt} before the run started", file=sys.stderr)
                return interrupt.exit_code
            resume = _resume_command(args, run_dir)
            path = write_partial_results(run_dir, interrupt.signum, resume)
            summary = json.loads(path.read_text())
            how = (
                f"resume with: {shlex.join(resume)}"
                if summary["resumable"]
                else "nothing to resume (interrupted before the parties joined)"
            )
            print(
                f"[simskip-server] {interrupt}: stopped after round {summary['last_completed_round']}; {path}; {how}",
                file=sys.stderr,
                flush=True,
            )
            return interrupt.exit_code


if __name__ == "__main__":
    sys.exit(main())
