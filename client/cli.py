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
one line naming the server and the file concerned (an untrusted server certificate, a key the
server did not register, an unreachable server after ``--max-wait-time`` seconds); the exit
status is the SuperNode's (non-zero).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client import credentials, launcher, pids
from client.party_log import PARTY_LOG, read_finished
from client.warm_start import WarmStartError, start_warm_starter

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``simskip-client`` argument parser."""
    parser = argparse.ArgumentParser(prog="simskip-client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="the SuperLink's HOST:PORT")
    parser.add_argument("--data", type=Path, required=True, help="this party's folder (train/valid/test.txt)")
    parser.add_argument(
        "--partition-id",
        type=int,
        default=None,
        help="this party's id (default: the folder name when it is a number, else 0)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where the party writes its private outputs (default runs/client-<id>)",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="the SuperNode's local ClientAppIo port (default: a free port)"
    )
    parser.add_argument(
        "--max-wait-time",
        type=float,
        default=600.0,
        help="give up after this many seconds without reaching the server (default 600)",
    )
    security = parser.add_argument_group("transport security (one of)")
    security.add_argument("--insecure", action="store_true", help="plain HTTP (only when asked for)")
    security.add_argument("--root-certificates", type=Path, help="CA certificate (PEM) of a TLS SuperLink")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of each ClientApp process (default: torch's; use 1 when several "
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
    parser.add_argument("--quiet", action="store_true", help="do not print the rounds this party takes part in")
    auth = parser.add_argument_group("node authentication (a server started with --auth-public-keys)")
    auth.add_argument(
        "--auth-private-key",
        type=Path,
        default=None,
        help="this party's OpenSSH EC private key (ssh-keygen -t ecdsa -b 384); the server registers the matching .pub",
    )
    return parser


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
    """Entry point of ``simskip-client``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.insecure == (args.root_certificates is not None):
        print("simskip-client: pass exactly one of --insecure or --root-certificates", file=sys.stderr)
        return 2
    if args.insecure and args.auth_private_key is not None:
        print("simskip-client: --auth-private-key needs TLS (--root-certificates), not --insecure", file=sys.stderr)
        return 2
    root_certificates = args.root_certificates.expanduser().resolve() if args.root_certificates else None
    auth_key = args.auth_private_key.expanduser().resolve() if args.auth_private_key else None
    try:  # before anything starts: a wrong path is one line naming the file
        if root_certificates is not None:
            credentials.check_pem_certificate(root_certificates, "root certificate file (--root-certificates)")
        if auth_key is not None:
            credentials.check_auth_private_key(auth_key)
    except credentials.CredentialError as err:
        print(f"[simskip-client] error: {err}", file=sys.stderr)
        return 1
    folder = args.data.expanduser().resolve()
    partition_id = args.partition_id
    if partition_id is None:
        partition_id = int(folder.name) if folder.name.isdigit() else 0
    output_dir = (args.output_dir or Path("runs") / f"client-{partition_id}").resolve()
    try:
        graph = _check_folder(folder, partition_id)
    except Exception as err:  # noqa: BLE001 - the command's boundary: report and exit non-zero
        print(f"[simskip-client] error in {folder}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    port = args.port if args.port is not None else pids.free_port()
    node_config = {"data-dir": str(folder), "partition-id": partition_id, "output-dir": str(output_dir)}
    signal.signal(signal.SIGTERM, _terminate)
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
            try:
                starter = start_warm_starter(threads=args.threads, log_path=output_dir / "warm_start.log")
                extra_env.update(starter.env)
            except (WarmStartError, OSError) as err:  # slower, never fatal: Flower's cold start
                print(
                    f"[simskip-client] warning: no warm start ({err}); ClientApp processes start cold",
                    file=sys.stderr,
                    flush=True,
                )
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
                f"{graph.train.num_triples} train triples; SuperNode pid {supernode.pid} -> {args.server}",
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
                print(
                    f"[simskip-client] port {old_port} was taken before the SuperNode bound it; retrying on {port}",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            break
        if code != 0:
            print(
                "[simskip-client] error: "
                + launcher.explain_supernode_exit(
                    text,
                    returncode=code,
                    server=args.server,
                    root_certificates=root_certificates,
                    auth_private_key=auth_key,
                    log_path=log_path,
                ),
                file=sys.stderr,
            )
        return code
    except KeyboardInterrupt:
        return 130
    except pids.FlowerProcessError as err:
        print(f"[simskip-client] error: {err}", file=sys.stderr)
        return 1
    finally:
        pids.stop_process(supernode)
        if starter is not None:  # after the SuperNode: no ClientApp can still be asking for a fork
            starter.close()


if __name__ == "__main__":
    sys.exit(main())
