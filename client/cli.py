"""``simskip-client``: one party joins a federation with its own data folder.

Starts a Flower SuperNode (``flower-supernode``) connected to the server's SuperLink, with
node config ``data-dir`` / ``partition-id`` / ``output-dir``; the ClientApp runs inside it
(:mod:`client.client_app`). The folder is checked once before connecting, so a malformed file
fails here, naming file and line, instead of inside the first round.

The party runs until stopped (SIGINT / SIGTERM stop its SuperNode by PID) or until the
SuperNode exits. Flower's state goes to ``OUTPUT_DIR/.flwr``, never to the home directory.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``simskip-client`` argument parser."""
    parser = argparse.ArgumentParser(prog="simskip-client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="the SuperLink's HOST:PORT")
    parser.add_argument("--data", type=Path, required=True, help="this party's folder (train/valid/test.txt)")
    parser.add_argument("--partition-id", type=int, default=None,
                        help="this party's id (default: the folder name when it is a number, else 0)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where the party writes its private outputs (default runs/client-<id>)")
    parser.add_argument("--port", type=int, default=None,
                        help="the SuperNode's local ClientAppIo port (default: a free port)")
    security = parser.add_argument_group("transport security (one of)")
    security.add_argument("--insecure", action="store_true", help="plain HTTP (only when asked for)")
    security.add_argument("--root-certificates", type=Path, help="CA certificate of a TLS SuperLink")
    return parser


def _check_folder(folder: Path, partition_id: int) -> Any:
    from kg_datasets import load_client_folder

    return load_client_folder(folder, client_id=partition_id)


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through main's finally: the SuperNode is stopped


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``simskip-client``; returns the exit status."""
    from server import launcher

    args = build_parser().parse_args(argv)
    if args.insecure == (args.root_certificates is not None):
        print("simskip-client: pass exactly one of --insecure or --root-certificates", file=sys.stderr)
        return 2
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
    port = args.port if args.port is not None else launcher.free_port()
    node_config = {"data-dir": str(folder), "partition-id": partition_id, "output-dir": str(output_dir)}
    signal.signal(signal.SIGTERM, _terminate)
    supernode = None
    try:
        supernode = launcher.start_supernode(
            output_dir / ".flwr",
            superlink=args.server,
            node_config=node_config,
            clientappio_port=port,
            insecure=args.insecure,
            root_certificates=args.root_certificates.resolve() if args.root_certificates else None,
            log_path=output_dir / "supernode.log",
        )
        print(f"[simskip-client] party {partition_id}: {graph.num_entities} entities, "
              f"{graph.train.num_triples} train triples; SuperNode pid {supernode.pid} -> {args.server}",
              flush=True)
        return int(supernode.wait())
    except KeyboardInterrupt:
        return 130
    except launcher.FlowerProcessError as err:
        print(f"[simskip-client] error: {err}", file=sys.stderr)
        return 1
    finally:
        launcher.stop_process(supernode)


if __name__ == "__main__":
    sys.exit(main())
