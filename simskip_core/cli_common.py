"""The one command-line convention of the five commands (``simskip-data``, ``simskip-refine``,
``simskip-sim``, ``simskip-server``, ``simskip-client``).

- Every error is one line on stderr, ``PROG: error: MESSAGE`` (argparse's own format), naming the
  flag the user typed, never a library parameter (:func:`flag_names`).
- Exit status 2 for usage and input errors (a bad option, a missing or malformed file, a bad
  run-config value), 1 for runtime failures (a child process that failed, a diverged run),
  130 on Ctrl-C (:func:`run_main`).
- Every warning is one line, ``PROG: warning: MESSAGE`` (:func:`warning_format`), instead of
  Python's ``path/to/file.py:204: KGDataWarning: ...``.
- ``--version`` on every command (:func:`add_version`), the version of the ``simskip-fedkge``
  distribution.
- Every option is checked by its parser before any work starts: ranges by the ``type=`` factories
  below (:func:`integer`, :func:`number`, :func:`port`, :func:`address`), whose message argparse
  prefixes with the flag (``--clients must be >= 2, got 0``).
- Each command's and subcommand's ``--help`` ends with a short example (:class:`CommandParser`
  keeps the epilog's line breaks).

Pure Python (argparse, warnings, socket, importlib.metadata): this module imports no torch (the
``simskip_core`` package's ``__init__`` does, as every command's own imports do anyway).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.metadata
import math
import re
import socket
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

__all__ = [
    "DISTRIBUTION",
    "INPUT_ERRORS",
    "RUN_CONFIG_FLAGS",
    "CommandParser",
    "UsageError",
    "add_version",
    "address",
    "check_port_free",
    "describe",
    "error_line",
    "exit_status",
    "flag_names",
    "integer",
    "number",
    "one_line",
    "path",
    "port",
    "report",
    "run_main",
    "split_address",
    "version",
    "warning_format",
]

#: The distribution whose version ``--version`` prints.
DISTRIBUTION = "simskip-fedkge"
#: Longest message printed (a value quoted in a message may be megabytes of text).
MAX_MESSAGE = 2000
#: What names the run-config options in a message about a run-config value.
RUN_CONFIG_FLAGS = "run config (--preset, --set)"
#: Exceptions that mean "bad input" (exit 2) for every command: the project raises ``ValueError``
#: subclasses for bad data and config (``KGDataError``, ``ConfigError``...), and a path given on the
#: command line that is missing is an ``OSError`` of these kinds.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    UnicodeError,
)
#: Root packages of this project: their exceptions' messages are printed as they are; any other
#: exception (a bug, a library's) is printed with its type name.
PROJECT_PACKAGES = frozenset({"client", "server", "kg_datasets", "simskip_core", "__main__"})


class UsageError(ValueError):
    """An option's value is out of range, inconsistent with another, or names a missing file; the
    message names the flag (``--port must be in 1..65535, got 99999``)."""


def version() -> str:
    """The installed version of :data:`DISTRIBUTION` (``unknown`` when it is not installed)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` as one printable line: line breaks (all that :meth:`str.splitlines` splits at) and
    other control characters escaped (``\\n``, ``\\x85``), at most ``limit`` characters."""
    text = re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", lambda m: repr(m.group(0))[1:-1], str(text))
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def error_line(prog: str, message: str, kind: str = "error") -> str:
    """``PROG: error: MESSAGE`` (or ``PROG: warning: MESSAGE``), one line."""
    return f"{prog}: {kind}: {one_line(message)}"


def report(prog: str, message: str, kind: str = "error", file: TextIO | None = None) -> None:
    """Print :func:`error_line` on stderr (or ``file``)."""
    print(error_line(prog, message, kind), file=file or sys.stderr, flush=True)


_ARGUMENT = re.compile(r"^argument (\S+?)(?:/(\S+))?: (.*)$", re.DOTALL)


def _flag_first(message: str) -> str:
    """argparse's ``argument --clients/-c: must be >= 2, got 0`` -> ``--clients must be >= 2, got 0``."""
    match = _ARGUMENT.match(message)
    if not match:
        return message
    flag = match.group(2) if match.group(2) and match.group(2).startswith("--") else match.group(1)
    rest = match.group(3)
    return f"{flag} {rest}" if rest.startswith(("must ", "is ", "needs ")) else f"{flag}: {rest}"


class CommandParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` of this project's commands.

    Its errors are one line, ``PROG: error: MESSAGE`` (no usage block; ``--help`` has it), exit 2;
    the description and epilog keep their line breaks (the epilog holds the examples).
    Subparsers made by :meth:`add_subparsers` are of this class too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE`` on stderr and exit 2 (a subcommand's errors too start with
        the command's name: ``simskip-data: error: ...``)."""
        self.exit(2, error_line(self.prog.split()[0], _flag_first(message)) + "\n")


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: print ``PROG VERSION`` and exit 0."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")


def _int(text: str) -> int:
    text = text.strip()
    if not re.fullmatch(r"[+-]?\d+", text):  # no "1_000", no 5,000-digit numbers (int() refuses those)
        raise argparse.ArgumentTypeError(f"must be an integer, got {one_line(text, 60)!r}")
    if len(text) > 30:
        raise argparse.ArgumentTypeError(f"must be an integer of at most 30 digits, got {len(text)} digits")
    return int(text)


def _range_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"in {minimum}..{maximum}"
    return f">= {minimum}" if minimum is not None else f"<= {maximum}"


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=``: an integer in ``[minimum, maximum]`` (either bound optional)."""

    def parse(text: str) -> int:
        value = _int(text)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {_range_text(minimum, maximum)}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(
    minimum: float | None = None, maximum: float | None = None, *, above: float | None = None
) -> Callable[[str], float]:
    """An argparse ``type=``: a finite float in ``[minimum, maximum]``, or ``> above``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {one_line(text, 60)!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {one_line(text, 60)!r}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be > {above}, got {value:g}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {_range_text(minimum, maximum)}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


def path(text: str) -> Path:
    """An argparse ``type=``: a file or folder path (no NUL character: the OS refuses those, and
    ``Path.resolve`` raises on them)."""
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"must be a path without a NUL character, got {one_line(text, 100)!r}")
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a path, got an empty value")
    return Path(text)


#: A TCP port.
port = integer(1, 65535)
port.__name__ = "port"


def split_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT`` too) -> ``(host, port)``.

    :raises ValueError: no port, an empty host, or a port outside 1..65535.
    """
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([^:]*)|([^\s:/\[\]]+):([^:]*)", text.strip())
    if not match:
        raise ValueError(f"must be HOST:PORT (e.g. 127.0.0.1:9092), got {one_line(text, 100)!r}")
    host = match.group(1) or match.group(3)
    digits = match.group(2) if match.group(1) else match.group(4)
    if not re.fullmatch(r"\d{1,5}", digits) or not 1 <= int(digits) <= 65535:
        raise ValueError(f"needs a port in 1..65535 after the ':', got {one_line(text, 100)!r}")
    return host, int(digits)


def address(text: str) -> str:
    """An argparse ``type=``: ``HOST:PORT`` (see :func:`split_address`), returned as given."""
    try:
        split_address(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text.strip()


def check_port_free(host: str, number_: int, flag: str, host_flag: str | None = None) -> None:
    """Bind ``host:number_`` for a moment: raise when another process listens there.

    :param flag: the option that chose the port, named in the message.
    :param host_flag: the option that chose the host (named when it is no address of this machine).
    :raises UsageError: the port is in use, or ``host`` is not an address of this machine.
    """
    where = f"{host_flag} {host}" if host_flag else host
    bind_host = "" if host in ("0.0.0.0", "::", "") else host
    try:
        infos = socket.getaddrinfo(bind_host or None, number_, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as err:
        raise UsageError(f"{where}: cannot listen there: {err}") from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: a port in TIME_WAIT is free
        try:
            sock.bind(sockaddr)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"{flag} {number_}: the port is in use on {host or '0.0.0.0'} (another process listens there)"
                ) from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise UsageError(f"{where} is not an address of this machine") from None
            raise UsageError(f"{flag} {number_}: cannot listen on {host}:{number_}: {err.strerror or err}") from None


def flag_names(message: str, parameters: Mapping[str, str]) -> str:
    """``message`` with each library parameter replaced by the flag a user types
    (``{"num_clients": "--clients"}``); longer names first."""
    for name in sorted(parameters, key=len, reverse=True):
        message = message.replace(name, parameters[name])
    return message


def _showwarning(prog: str) -> Callable[..., None]:
    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = str(message)
        if not issubclass(category, UserWarning) or category.__module__.split(".")[0] not in PROJECT_PACKAGES:
            text = f"{category.__name__}: {text}"  # a library's warning: say which kind
        with contextlib.suppress(OSError, ValueError):  # stderr closed: nothing to say it on
            print(error_line(prog, text, "warning"), file=file or sys.stderr, flush=True)

    return show


@contextlib.contextmanager
def warning_format(prog: str) -> Iterator[None]:
    """While inside, every Python warning prints as one line ``PROG: warning: MESSAGE``."""
    saved = warnings.showwarning, warnings.formatwarning
    show = _showwarning(prog)
    warnings.showwarning = show
    warnings.formatwarning = lambda message, category, *args, **kwargs: error_line(prog, str(message), "warning") + "\n"
    try:
        yield
    finally:
        warnings.showwarning, warnings.formatwarning = saved


def exit_status(error: BaseException, input_errors: Sequence[type[BaseException]] = INPUT_ERRORS) -> int:
    """2 for an input error (``input_errors``), 1 for any other failure."""
    return 2 if isinstance(error, tuple(input_errors)) else 1


def describe(error: BaseException) -> str:
    """The message of ``error``: as it is for this project's exceptions, with the type name for others."""
    text = str(error)
    root = type(error).__module__.split(".")[0]
    if root in PROJECT_PACKAGES and text:
        return text
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def run_main(
    prog: str,
    work: Callable[[], int],
    *,
    input_errors: Sequence[type[BaseException]] = INPUT_ERRORS,
    parameters: Mapping[str, str] | None = None,
) -> int:
    """The boundary of a command: run ``work()`` with :func:`warning_format` on; return its status,
    or report an exception as one line and return :func:`exit_status` (130 on Ctrl-C).

    :param input_errors: exceptions that mean bad input (exit 2).
    :param parameters: library parameter -> flag, for :func:`flag_names`.
    """
    with warning_format(prog):
        try:
            return work()
        except KeyboardInterrupt:
            report(prog, "interrupted")
            return 130
        except Exception as error:  # noqa: BLE001 - the command's boundary: one line, an exit status
            report(prog, flag_names(describe(error), parameters or {}))
            return exit_status(error, input_errors)
