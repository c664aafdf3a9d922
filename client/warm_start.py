"""Warm ClientApp start-up for a deployed party: fork a pre-imported process per message.

Why this exists: Flower 1.42's SuperNode runs every message (train, evaluate, query) in a fresh
``flwr-clientapp`` process, launched by name through ``PATH``. Each cold process imports torch
and PyKEEN again before the app runs (about 4-7 s on this project's 2-core machines, more under
load), which is framework overhead paid on every message of every round.

``simskip-client`` therefore starts a *warm starter* next to its SuperNode:

* :func:`serve` imports the heavy third-party modules once (:data:`PRELOAD_MODULES`; never this
  project's own modules, which Flower must import from the app bundle) and waits on a Unix
  socket;
* :func:`write_shim` puts an executable named ``flwr-clientapp`` first on the SuperNode's
  ``PATH``. The shim (standard library only, started with ``python -S``) hands its argv, working
  directory, environment and stdin/stdout/stderr to the starter, which forks a child that runs
  Flower's real ``flwr_clientapp()`` with them; the shim relays signals to that child and exits
  with its exit code. When the starter is not reachable the shim ``exec``\\ s the real
  ``flwr-clientapp``, so a dead starter costs speed, never a message.

The starter is single-threaded on purpose: ``fork`` in a multi-threaded process copies only the
calling thread and may leave locks held by the others.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from client.object_pulls import shorten_object_pull_backoff
from client.pids import stop_process  # stops the whole process tree, SIGKILL after timeout

__all__ = [
    "PRELOAD_MODULES",
    "SOCKET_ENV",
    "WarmStartError",
    "WarmStarter",
    "serve",
    "start_warm_starter",
    "write_shim",
]

#: Environment variable telling the shim where the starter listens.
SOCKET_ENV = "SIMSKIP_WARM_SOCKET"
#: Set to a folder to write a cProfile file per forked ClientApp process (profiling only).
PROFILE_ENV = "SIMSKIP_PROFILE_CLIENTAPP"
#: What the forked child runs (``module:function``): Flower's ClientApp process entry point.
DEFAULT_TARGET = "flwr.supernode.cli.flwr_clientapp:flwr_clientapp"
#: Third-party modules imported once in the starter (the cost every cold ClientApp pays).
PRELOAD_MODULES = (
    "numpy",
    "torch",
    # torch.optim's Optimizer.__init__ imports torch._dynamo lazily: 1.9 s of a 2.7 s ClientApp
    # message on UMLS (cProfile via SIMSKIP_PROFILE_CLIENTAPP), paid by every forked process
    "torch._dynamo",
    "torch.optim",
    "pykeen.models",
    "pykeen.training",
    "pykeen.evaluation",
    "pykeen.triples",
    "pykeen.losses",
    "pykeen.sampling",
    "flwr.clientapp",
    "flwr.supernode.cli.flwr_clientapp",
    # imported lazily by each ClientApp's first connection to its SuperNode (Flower's HTTP-capable
    # RPC client) and by its FAB check: 0.06-0.09 s of a 0.55 s UMLS message (cProfile)
    "httpx",
    "httpcore",
    "h11",
    "packaging.requirements",
)

_SHIM = """#!{python} -S
# flwr-clientapp shim written by client/warm_start.py: run this ClientApp process in a child
# forked from the warm starter at ${socket_env}; fall back to the real command when it is away.
import json, os, signal, socket, sys
REAL = {real!r}
try:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(os.environ[{socket_env!r}])
    request = json.dumps({{"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
    socket.send_fds(conn, [request + b"\\n"], [0, 1, 2])
except (KeyError, OSError):
    os.execv(REAL, [REAL, *sys.argv[1:]])
def forward(signum, frame):
    try:
        conn.sendall(b"SIG %d\\n" % signum)
    except OSError:
        pass
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, forward)
reply = b""
while not reply.endswith(b"\\n"):
    try:
        chunk = conn.recv(64)
    except InterruptedError:
        continue
    if not chunk:
        break
    reply += chunk
try:
    sys.exit(int(reply.split()[-1]))
except (IndexError, ValueError):
    sys.stderr.write("flwr-clientapp shim: the warm starter closed without an exit code\\n")
    sys.exit(1)
"""


class WarmStartError(RuntimeError):
    """The warm starter cannot be set up (socket path, shim folder, missing real command)."""


def write_shim(bin_dir: str | os.PathLike[str], real_command: str | os.PathLike[str]) -> Path:
    """Write the ``flwr-clientapp`` shim into ``bin_dir`` (put that folder first on ``PATH``).

    :param bin_dir: folder for the shim (created).
    :param real_command: path of the real ``flwr-clientapp`` (the fallback).
    :returns: the shim's path.
    :raises WarmStartError: when ``real_command`` is not an executable file.
    """
    real = Path(real_command)
    if not (real.is_file() and os.access(real, os.X_OK)):
        raise WarmStartError(f"real flwr-clientapp not found or not executable: {real}")
    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "flwr-clientapp"
    tmp = shim.with_suffix(".tmp")
    tmp.write_text(_SHIM.format(python=sys.executable, real=str(real.resolve()), socket_env=SOCKET_ENV))
    tmp.chmod(0o755)
    os.replace(tmp, shim)
    return shim


@dataclass
class WarmStarter:
    """A running warm starter: its process, and the environment that makes a SuperNode use it.

    :param process: the ``python -m client.warm_start`` process (stop it by PID when done).
    :param folder: private folder holding the socket and the shim (removed by :meth:`close`).
    :param env: ``PATH`` (to prepend) and :data:`SOCKET_ENV` for the SuperNode.
    """

    process: subprocess.Popen
    folder: Path
    env: dict[str, str]

    def close(self, timeout: float = 10.0) -> None:
        """Stop the starter and any ClientApp it forked (by PID), and remove its folder."""
        stop_process(self.process, timeout=timeout)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_warm_starter(*, threads: int | None = None, log_path: Path | None = None) -> WarmStarter:
    """Start a warm starter for one SuperNode; returns at once (it warms up in the background).

    Until the starter is listening, the shim falls back to cold starts, so nothing waits on it.

    :param threads: torch intra-op threads of each ClientApp process (``None``: torch's default).
    :param log_path: where the starter's own output goes (appended).
    :raises WarmStartError: when the real ``flwr-clientapp`` is not installed next to this Python.
    """
    real = Path(sys.executable).parent / "flwr-clientapp"
    folder = Path(tempfile.mkdtemp(prefix="simskip-ws-"))  # short: Unix socket paths are limited to ~107 bytes
    try:
        write_shim(folder / "bin", real)
        command = [sys.executable, "-m", "client.warm_start", "--socket", str(folder / "socket")]
        if threads is not None:
            command += ["--threads", str(threads)]
        out = subprocess.DEVNULL
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(Path(__file__).resolve().parents[1]),
            )
        finally:
            if log_path is not None:
                out.close()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return WarmStarter(process, folder, {"PATH": str(folder / "bin"), SOCKET_ENV: str(folder / "socket")})


def _resolve(target: str):
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _forget_project_modules() -> None:
    """Drop this project's packages from the child, so Flower imports the app bundle's copies.

    The starter runs as ``python -m client.warm_start`` from the project folder: ``client`` sits in
    ``sys.modules`` and the folder on ``sys.path``. Flower's loader reuses a module already in
    ``sys.modules``, so without this a party would run its own checkout's ``client`` package
    instead of the bundle the server sent.
    """
    root = Path(__file__).resolve().parents[1]
    for name in [name for name in sys.modules if name.split(".")[0] in _PROJECT_PACKAGES]:
        del sys.modules[name]
    sys.path[:] = [entry for entry in sys.path if Path(entry or os.curdir).resolve() != root]


#: Top-level packages of this project (never preloaded; see :func:`_forget_project_modules`).
_PROJECT_PACKAGES = frozenset({"client", "server", "kg_datasets", "simskip_core"})


def _run_child(request: dict, fds: list[int], target: str) -> None:
    """In the forked child: adopt the shim's process context, run ``target``, never return."""
    code = 1
    try:
        _forget_project_modules()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for own, theirs in zip((0, 1, 2), fds, strict=False):
            os.dup2(theirs, own)
        for fd in fds:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        profile_dir = os.environ.get(PROFILE_ENV)
        profiler = None
        if profile_dir:  # a developer's switch: one cProfile file per ClientApp process
            profiler = cProfile.Profile()
            profiler.enable()
        try:
            _resolve(target)()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            if profiler is not None:
                profiler.disable()
                Path(profile_dir).mkdir(parents=True, exist_ok=True)
                profiler.dump_stats(str(Path(profile_dir) / f"clientapp-{os.getpid()}.prof"))
    except BaseException:  # noqa: BLE001 - the child must report, then leave through os._exit
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(
    socket_path: str | os.PathLike[str],
    *,
    target: str = DEFAULT_TARGET,
    preload: Sequence[str] = PRELOAD_MODULES,
    threads: int | None = None,
) -> None:
    """Import ``preload``, then fork one child per shim connection until SIGTERM/SIGINT.

    :param socket_path: Unix socket to listen on (a stale file there is replaced).
    :param target: ``module:function`` each child runs (Flower's ``flwr_clientapp``).
    :param preload: modules imported once before any fork.
    :param threads: torch intra-op threads of the children (``None``: torch's default).
    """
    for name in preload:
        importlib.import_module(name)
    if threads is not None:
        import torch  # heavy (torch): the launcher imports this module; only the warm starter needs torch

        torch.set_num_threads(threads)
    _resolve(target)  # fail here, not in every child
    # Flower's object pulls: 20 ms first retry, not 1 s (the children inherit the patched function)
    shorten_object_pull_backoff()
    # The imports' ~400k objects go to the permanent generation once, here: PyKEEN's per-epoch
    # gc.collect() in each forked child then skips them (0.38 s of a UMLS message otherwise), and
    # the children's collections do not touch (copy) the parent's pages.
    gc.collect()
    gc.freeze()

    path = Path(socket_path)
    if path.exists() or path.is_symlink():
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children: dict[int, socket.socket] = {}  # child pid -> its shim's connection
    print(f"[warm-start] ready on {path} (pid {os.getpid()})", flush=True)
    parent = os.getppid()
    try:
        while not stopping and os.getppid() == parent:  # orphaned (simskip-client killed): stop too
            try:
                readable, _, _ = select.select([listener, *children.values()], [], [], 0.1)
            except InterruptedError:
                continue
            for sock in readable:
                if sock is listener:
                    _accept(listener, children, target)
                    break  # ``children`` changed: select again
                _relay_signal(sock, children)
            _reap(children)
    finally:
        for pid in children:
            _kill(pid, signal.SIGTERM)
        listener.close()
        path.unlink(missing_ok=True)


def _accept(listener: socket.socket, children: dict[int, socket.socket], target: str) -> None:
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        while not data.endswith(b"\n"):
            more = conn.recv(1 << 20)
            if not more:
                raise ValueError("request cut short")
            data += more
        request = json.loads(data)
    except (OSError, ValueError) as err:
        print(f"[warm-start] bad request: {err}", file=sys.stderr, flush=True)
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    pid = os.fork()
    if pid == 0:  # the child keeps only the shim's descriptors
        for sock in (listener, conn, *children.values()):
            sock.close()
        _run_child(request, fds, target)
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    print(f"[warm-start] forked pid {pid} for a ClientApp process", flush=True)


def _relay_signal(conn: socket.socket, children: dict[int, socket.socket]) -> None:
    pid = next(p for p, c in children.items() if c is conn)
    try:
        data = conn.recv(64)
    except OSError:
        data = b""
    if not data:  # the shim died: its child must not outlive it
        _kill(pid, signal.SIGTERM)
        return
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("SIG "):
            _kill(pid, int(line.split()[1]))


def _reap(children: dict[int, socket.socket]) -> None:
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 1 << 8
        if done == 0:
            continue
        conn = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N
        try:
            conn.sendall(f"EXIT {code}\n".encode())
        except OSError:
            pass
        conn.close()


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m client.warm_start --socket PATH [--threads N]``: run the warm starter."""
    parser = argparse.ArgumentParser(prog="python -m client.warm_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--target", default=DEFAULT_TARGET, help="module:function each child runs")
    parser.add_argument("--preload", default=",".join(PRELOAD_MODULES), help="comma-separated modules to import once")
    args = parser.parse_args(argv)
    preload = [name for name in args.preload.split(",") if name]
    serve(args.socket, target=args.target, preload=preload, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
