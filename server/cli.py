"""``simskip-server``: start a Flower SuperLink, run the federation to its end, exit.

Steps: start ``flower-superlink`` (``FLWR_HOME`` under the run folder, no runtime dependency
installation, telemetry off), submit this app with ``flwr run`` (the connection lives in
``$FLWR_HOME/config.toml``), stream its log, read the run's final status with ``flwr ls``,
stop the SuperLink by PID. Exit 0 only when the run ended ``finished:completed`` and wrote
``final_metrics.json``; 1 otherwise (``flwr run`` itself exits 0 even when the ServerApp raised).

Parties join with ``simskip-client --server HOST:PORT --data DIR``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main", "run_server"]

DEFAULT_PORT = 9092


def build_parser() -> argparse.ArgumentParser:
    """The ``simskip-server`` argument parser."""
    parser = argparse.ArgumentParser(prog="simskip-server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="output folder (default runs/<timestamp>)")
    parser.add_argument("--host", default="127.0.0.1", help="address the SuperLink listens on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"SuperLink port (default {DEFAULT_PORT})")
    parser.add_argument("--min-clients", type=int, default=2, help="parties to wait for before round 1")
    parser.add_argument("--rounds", type=int, default=None, help="num-server-rounds (default: pyproject's)")
    parser.add_argument("--setting", default=None, choices=["fede", "isolation"])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config override, e.g. --set model=RotatE (repeatable)")
    security = parser.add_argument_group("transport security (one of)")
    security.add_argument("--insecure", action="store_true", help="plain HTTP (only when asked for)")
    security.add_argument("--ssl-ca-certfile", type=Path)
    security.add_argument("--ssl-certfile", type=Path)
    security.add_argument("--ssl-keyfile", type=Path)
    return parser


def _tls(args: argparse.Namespace) -> Any:
    from server.launcher import TLSFiles

    given = [args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile]
    if args.insecure:
        if any(given):
            raise SystemExit("simskip-server: --insecure and certificate files are exclusive")
        return None
    if not all(given):
        raise SystemExit("simskip-server: pass --insecure, or all of --ssl-ca-certfile --ssl-certfile --ssl-keyfile")
    tls = TLSFiles(*(p.resolve() for p in given))
    tls.check()
    return tls


def run_server(
    run_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    run_config: dict[str, Any] | None = None,
    tls: Any = None,
) -> Path:
    """Run one federation behind a SuperLink; return the run folder.

    :param run_config: run-config overrides (``run-dir`` is set here).
    :param tls: :class:`server.launcher.TLSFiles`, or ``None`` for an insecure SuperLink.
    :raises server.launcher.FlowerProcessError: when the run did not complete.
    """
    from server import launcher
    from server.simulation import check_run_config

    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_config = {**(run_config or {}), "run-dir": str(run_dir)}
    check_run_config(run_config)  # fail now, not after start-up
    flwr_home = run_dir / ".flwr"
    superlink = launcher.start_superlink(
        flwr_home, host=host, port=port, insecure=tls is None, tls=tls, log_path=run_dir / "logs" / "superlink.log"
    )
    try:
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        launcher.wait_for_health(connect_host, port, superlink)
        print(f"[simskip-server] SuperLink (pid {superlink.pid}) on {host}:{port}; waiting for parties", flush=True)
        launcher.write_connection(
            flwr_home, f"{connect_host}:{port}", insecure=tls is None,
            root_certificates=tls.ca_certfile if tls is not None else None,
        )
        run_id, status = launcher.run_app(flwr_home, run_config, superlink=superlink,
                                          log_path=run_dir / "logs" / "run.log")
    finally:
        launcher.stop_process(superlink)
    launcher.check_run_completed(run_id, status, run_dir)
    return run_dir


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_server's finally: the SuperLink is stopped


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``simskip-server``; returns the exit status."""
    from server.simulation import default_run_dir, parse_set_options, run_command

    args = build_parser().parse_args(argv)

    def run() -> Path:
        # inside run_command: a missing certificate or a bad --set is a one-line error, exit 1
        tls = _tls(args)
        overrides = parse_set_options(args.sets)
        overrides["min-clients"] = args.min_clients
        if args.rounds is not None:
            overrides["num-server-rounds"] = args.rounds
        if args.setting is not None:
            overrides["setting"] = args.setting
        return run_server(args.run_dir or default_run_dir(), host=args.host, port=args.port,
                          run_config=overrides, tls=tls)

    signal.signal(signal.SIGTERM, _terminate)
    return run_command("simskip-server", run)


if __name__ == "__main__":
    sys.exit(main())
