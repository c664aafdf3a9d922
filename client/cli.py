"""``simskip-client``: one party joins a federation with its own data folder.

Starts a Flower SuperNode (``flower-supernode``) connected to the server's SuperLink, with
node config ``data-dir`` / ``partition-id`` / ``output-dir``; the ClientApp runs inside it
(:mod:`client.client_app`). The folder is checked once before connecting, so a malformed file
fails here, naming file and line, instead of inside the first round.

The party prints one line per round it takes part in (``party.log`` in its output folder,
written by its ClientApp; ``--quiet`` turns it off) and exits 0 when the server says the run
has completed (``--stay`` keeps it up for further runs; a failed run keeps it up too, so a
resumed run can use it). It also stops when stopped (SIGINT / SIGTERM stop its SuperNode by PID)
or when the SuperNode exits. Flower's state goes to ``OUTPUT_DIR/.flwr``, never to the home directory.

Security: ``--root-certificates CA`` (TLS) and ``--auth-private-key KEY`` (Flower's SuperNode
authentication; the server registers the matching public key) are checked before anything
starts. When the SuperNode ends with an error, its log is read back and the reason is printed as
one line naming the server, the file concerned and the SuperNode's log (an untrusted server
certificate, a key the server did not register); exit status 1.

Before the SuperNode starts, the server's address is tried: a refused or unreachable address
prints its cause at once and a progress line at each retry (``waiting for HOST:PORT: connection
refused (attempt 3, next in 4 s, giving up in 590 s)``) until ``--max-wait-time`` seconds, then
exits 1. Every option is checked before anything starts (exit 2, one line naming the option).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from client import credentials, launcher, pids
from client.party_log import PARTY_LOG, read_finished
from client.warm_start import WarmStartError, start_warm_starter
from simskip_core.cli_common import (
    INPUT_ERRORS,
    CommandParser,
    UsageError,
    add_version,
    address,
    check_port_free,
    integer,
    number,
    report,
    run_main,
    split_address,
)
from simskip_core.cli_common import path as path_arg
from simskip_core.cli_common import port as port_number

__all__ = ["ServerUnreachableError", "build_parser", "main", "parse_and_validate", "wait_for_server"]


EXAMPLES = """examples:
  simskip-client --server 127.0.0.1:9092 --data out/umls-fed3/0 --insecure
  simskip-client --server server.example.org:9092 --data /data/party1 --root-certificates ca.crt \\
      --auth-private-key party1 --threads 1
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``simskip-client`` argument parser."""
    parser = CommandParser(prog="simskip-client", description=__doc__.split("\n\n")[0], epilog=EXAMPLES)
    add_version(parser)
    parser.add_argument("--server", required=True, type=address, help="the SuperLink's HOST:PORT")
    parser.add_argument("--data", type=path_arg, required=True, help="this party's folder (train/valid/test.txt)")
    parser.add_argument(
        "--partition-id",
        type=integer(0),
        default=None,
        help="this party's id, >= 0 (default: the folder name when it is a number, else 0)",
    )
    parser.add_argument(
        "--output-dir",
        type=path_arg,
        default=None,
        help="where the party writes its private outputs (default runs/client-<id>)",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=None,
        help="the SuperNode's local ClientAppIo port, 1..65535 (default: a free port)",
    )
    parser.add_argument(
        "--max-wait-time",
        type=number(above=0.0),
        default=600.0,
        help="give up after this many seconds without reaching the server (default 600)",
    )
    security = parser.add_argument_group("transport security (one of)")
    security.add_argument("--insecure", action="store_true", help="plain HTTP (only when asked for)")
    security.add_argument("--root-certificates", type=path_arg, help="CA certificate (PEM) of a TLS SuperLink")
    parser.add_argument(
        "--threads",
        type=integer(1),
        default=None,
        help="torch threads of each ClientApp process, >= 1 (default: torch's; use 1 when several "
        "parties share one machine's cores)",
    )
    parser.add_argument(
        "--cold-start",
        action="store_true",
        help="start every ClientApp process cold (Flower's default) instead of forking it from "
        "a pre-imported warm starter (see client/warm_start.py)",
    )
    parser.add_argument(
        "--stay",
        action="store_true",
        help="keep the party up after the server's run has finished (for further runs); by "
        "default simskip-client exits 0 once the server says the run is complete",
    )
    parser.add_argument(
        "--require-secure-aggregation",
        action="store_true",
        help="upload this party's rows only under secure aggregation: refuse every plain train message "
        "(node config secure-aggregation = true; docs/how-to/secure-aggregation.md)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print the rounds this party takes part in")
    auth = parser.add_argument_group("node authentication (a server started with --auth-public-keys)")
    auth.add_argument(
        "--auth-private-key",
        type=path_arg,
        default=None,
        help="this party's OpenSSH EC private key (ssh-keygen -t ecdsa -b 384); the server registers the matching .pub",
    )
    return parser


def parse_and_validate(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check every option of ``simskip-client`` before anything starts: ranges, the
    ``HOST:PORT`` of ``--server``, exclusive options, the certificate and key files, the data folder
    exists, ``--output-dir`` is no file, and a ``--port`` given is free.

    :raises SystemExit: 2 with one line ``simskip-client: error: ...`` naming the option; 0 after
        ``--help`` / ``--version``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.insecure == (args.root_certificates is not None):
        parser.error("pass exactly one of --insecure or --root-certificates")
    if args.insecure and args.auth_private_key is not None:
        parser.error("--auth-private-key needs TLS (--root-certificates), not --insecure")
    try:  # a wrong path is one line naming the file
        if args.root_certificates is not None:
            credentials.check_pem_certificate(
                args.root_certificates.expanduser().resolve(), "root certificate file (--root-certificates)"
            )
        if args.auth_private_key is not None:
            credentials.check_auth_private_key(args.auth_private_key.expanduser().resolve())
    except credentials.CredentialError as err:
        parser.error(str(err))
    if not args.data.expanduser().is_dir():
        parser.error(f"--data: {args.data} {'is a file, not a folder' if args.data.exists() else 'does not exist'}")
    if args.output_dir is not None and args.output_dir.exists() and not args.output_dir.is_dir():
        parser.error(f"--output-dir: {args.output_dir} is a file, not a folder")
    if args.port is not None:
        try:
            check_port_free("0.0.0.0", args.port, "--port")
        except UsageError as err:
            parser.error(str(err))
    return args


class ServerUnreachableError(pids.FlowerProcessError):
    """The server did not accept a connection within ``--max-wait-time`` seconds."""


#: Library parameters named by data errors -> what a party can do (kg_datasets' messages name the former).
PARAMETER_FLAGS = {"pass on_unseen='drop' to drop them": "drop them when partitioning: simskip-data --on-unseen drop"}

#: Seconds before the second look for the server; doubled after each miss, up to :data:`MAX_RETRY_SECONDS`.
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 5.0
#: Seconds one connection attempt may take (an address that drops packets answers nothing).
CONNECT_TIMEOUT_SECONDS = 3.0


def _connect_failure(error: OSError, host: str) -> str:
    """What a failed connection attempt says, in words."""
    if isinstance(error, socket.gaierror):
        return f"host name {host!r} not found"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (no server listening on that port)"
    if isinstance(error, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_SECONDS:g} s"
    return error.strerror or str(error) or type(error).__name__


def wait_for_server(
    server: str,
    max_wait: float,
    *,
    say: Callable[[str], None] | None = None,
    first_retry: float = FIRST_RETRY_SECONDS,
    max_retry: float = MAX_RETRY_SECONDS,
) -> int:
    """Wait until ``server`` (``HOST:PORT``) accepts a TCP connection; return the attempts it took.

    Each miss prints one line with its cause (``waiting for HOST:PORT: connection refused
    (attempt 3, next in 4 s, giving up in 590 s)``), the first one at once.

    :param max_wait: seconds after which to give up (``--max-wait-time``).
    :param say: where the lines go (default: stdout, ``[simskip-client]`` first).
    :raises ServerUnreachableError: after ``max_wait`` seconds, naming the server and the last cause.
    """
    say = say or (lambda line: print(f"[simskip-client] {line}", flush=True))
    host, port_ = split_address(server)
    started = time.monotonic()
    delay = first_retry
    attempt = 0
    while True:
        attempt += 1
        try:
            with socket.create_connection((host, port_), timeout=CONNECT_TIMEOUT_SECONDS):
                if attempt > 1:
                    say(f"reached {server} (attempt {attempt})")
                return attempt
        except OSError as err:
            cause = _connect_failure(err, host)
        elapsed = time.monotonic() - started
        left = max_wait - elapsed
        if left <= 0:
            raise ServerUnreachableError(
                f"could not reach {server}: {cause} ({attempt} attempts in {elapsed:.0f} s; "
                f"--max-wait-time {max_wait:g}; is simskip-server running there, and is the address right?)"
            )
        wait = min(delay, left)
        say(f"waiting for {server}: {cause} (attempt {attempt}, next in {wait:.0f} s, giving up in {left:.0f} s)")
        time.sleep(wait)
        delay = min(delay * 2, max_retry)


def _check_folder(folder: Path, partition_id: int) -> Any:
    from kg_datasets import load_client_folder  # heavy (torch, pykeen): simskip-client --help runs without it

    return load_client_folder(folder, client_id=partition_id)


#: SuperNode starts on a port of our choosing that another process bound first (then a new port).
PORT_ATTEMPTS = 3
#: Seconds between the end-of-run notice and stopping the SuperNode (its reply is still in flight).
FINISH_GRACE_SECONDS = 2.0


def _follow(
    supernode: Any, output_dir: Path, *, since: float, stay: bool, quiet: bool, interval: float = 0.25
) -> int | None:
    """Print the party's new ``party.log`` lines while the SuperNode runs.

    :returns: the SuperNode's exit status when it ends by itself, ``None`` when the server's run
        completed (``federation.json`` newer than ``since``) and ``stay`` is off.
    """
    log_file = output_dir / PARTY_LOG
    offset = log_file.stat().st_size if log_file.exists() else 0  # lines of earlier runs are not repeated
    announced = 0.0
    while True:
        code = supernode.poll()
        if log_file.exists():
            with open(log_file, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]  # whole lines only
            offset += len(complete)
            if complete and not quiet:
                for line in complete.decode("utf-8", errors="replace").splitlines():
                    print(f"[simskip-client] {line}", flush=True)
        if code is not None:
            return int(code)
        finished = read_finished(output_dir, since)
        if finished is not None and finished["finished_at"] > announced:
            announced = finished["finished_at"]
            status = finished.get("status", "?")
            if status == "completed" and not stay:
                print(
                    f"[simskip-client] the server's run finished ({finished.get('run-dir') or 'no run folder'}); "
                    "stopping this party (--stay keeps it up)",
                    flush=True,
                )
                # federation.json is written before the ClientApp replies: let the acknowledgement
                # (ClientApp -> SuperNode -> SuperLink) leave before the SuperNode is stopped
                time.sleep(FINISH_GRACE_SECONDS)
                return None
            print(
                f"[simskip-client] the server's run ended: {status}"
                + (f" ({finished['reason']})" if finished.get("reason") else "")
                + "; staying up for further runs (Ctrl-C stops this party)",
                flush=True,
            )
        time.sleep(interval)


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through main's finally: the SuperNode is stopped


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``simskip-client``; returns the exit status (0 the run completed, 2 bad option
    or input, 1 the server was not reached or the SuperNode failed, 130/143 on SIGINT/SIGTERM)."""
    args = parse_and_validate(argv)
    return run_main(
        "simskip-client",
        lambda: _run(args),
        input_errors=(*INPUT_ERRORS, credentials.CredentialError),
        parameters=PARAMETER_FLAGS,
    )


def _run(args: argparse.Namespace) -> int:
    """Check the data folder, wait for the server, run the SuperNode until the run ends."""
    root_certificates = args.root_certificates.expanduser().resolve() if args.root_certificates else None
    auth_key = args.auth_private_key.expanduser().resolve() if args.auth_private_key else None
    folder = args.data.expanduser().resolve()
    partition_id = args.partition_id
    if partition_id is None:
        partition_id = int(folder.name) if folder.name.isdigit() else 0
    output_dir = (args.output_dir or Path("runs") / f"client-{partition_id}").resolve()
    graph = _check_folder(folder, partition_id)  # a malformed file: one line naming file and line, exit 2
    signal.signal(signal.SIGTERM, _terminate)
    port = args.port if args.port is not None else pids.free_port()
    node_config = {"data-dir": str(folder), "partition-id": partition_id, "output-dir": str(output_dir)}
    if args.require_secure_aggregation:
        node_config["secure-aggregation"] = True  # client/secure_upload.py: plain train messages refused
    supernode = starter = None
    log_path = output_dir / "supernode.log"
    # Flower's SuperExec looks for a new ClientApp task once a second by default: every message
    # would wait half a second on average before its process even starts. The look is a local RPC
    # to this party's own SuperNode; 0.05 s measured 0.05 s a round better than 0.2 s on UMLS.
    extra_env = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05"}
    if args.threads is not None:
        extra_env["OMP_NUM_THREADS"] = str(args.threads)
    try:
        if not args.cold_start:
            # Flower starts one ClientApp process per message; forking it from a process that has
            # already imported torch and PyKEEN saves those seconds on every message.
            warm_log = output_dir / "warm_start.log"
            try:
                starter = start_warm_starter(threads=args.threads, log_path=warm_log)
                extra_env.update(starter.env)
            except (WarmStartError, OSError) as err:  # slower, never fatal: Flower's cold start
                report(
                    "simskip-client",
                    f"no warm start ({err}; log: {warm_log}); ClientApp processes start cold",
                    "warning",
                )
        # after the warm starter (it imports torch meanwhile; a supervisor may wait for it to be ready)
        wait_for_server(args.server, args.max_wait_time)  # a refused or wrong address says so at once
        for attempt in range(1, PORT_ATTEMPTS + 1):
            log_start = log_path.stat().st_size if log_path.exists() else 0  # the log is appended to
            launched = time.time()
            supernode = launcher.start_supernode(
                output_dir / ".flwr",
                superlink=args.server,
                node_config=node_config,
                clientappio_port=port,
                insecure=args.insecure,
                root_certificates=root_certificates,
                auth_private_key=auth_key,
                max_wait_time=args.max_wait_time,
                log_path=log_path,
                extra_env=extra_env,
            )
            print(
                f"[simskip-client] party {partition_id}: {graph.num_entities} entities, "
                f"{graph.train.num_triples} train triples; SuperNode pid {supernode.pid} -> {args.server} "
                f"(log: {log_path})",
                flush=True,
            )
            code = _follow(supernode, output_dir, since=launched, stay=args.stay, quiet=args.quiet)
            if code is None:  # the run is over: the SuperNode is stopped in `finally`
                return 0
            with open(log_path, "rb") as handle:
                handle.seek(log_start)
                text = handle.read().decode("utf-8", errors="replace")
            # free_port() only says the port was free when asked: another process (a party started
            # at the same moment on this machine) may bind it first. A port we chose is chosen again.
            if code != 0 and args.port is None and "address already in use" in text and attempt < PORT_ATTEMPTS:
                old_port, port = port, pids.free_port()
                report(
                    "simskip-client",
                    f"port {old_port} was taken before the SuperNode bound it; retrying on {port}",
                    "warning",
                )
                continue
            break
        if code == 0:
            return 0
        report(
            "simskip-client",
            launcher.explain_supernode_exit(
                text,
                returncode=code,
                server=args.server,
                root_certificates=root_certificates,
                auth_private_key=auth_key,
                log_path=log_path,
            ),
        )
        return 1
    finally:
        pids.stop_process(supernode)
        if starter is not None:  # after the SuperNode: no ClientApp can still be asking for a fork
            starter.close()


if __name__ == "__main__":
    sys.exit(main())
