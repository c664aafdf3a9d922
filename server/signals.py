"""SIGINT / SIGTERM for the long-running commands (``simskip-server``, ``simskip-sim``).

A signal becomes one exception that unwinds through every ``finally`` that stops a process,
but never in the middle of a process start: a signal between ``fork`` and the assignment of the
``Popen`` would leave a process nobody stops. Starts run inside :func:`deferred`, which keeps
the signal and raises it when the start is done. Signals after the first only print a line, so
a second Ctrl-C cannot cut the shutdown short.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["SignalGate", "deferred", "installed"]

HANDLED = (signal.SIGINT, signal.SIGTERM)


class SignalGate:
    """Turns SIGINT / SIGTERM into one exception, never in the middle of a :meth:`deferred` block.

    :param prog: the command's name, for the "already stopping" line.
    :param interrupt: builds the exception from the signal number.
    """

    def __init__(self, prog: str = "simskip", interrupt: Callable[[int], BaseException] | None = None) -> None:
        self.prog = prog
        self.interrupt = interrupt or (lambda signum: KeyboardInterrupt(signal.Signals(signum).name))
        self.raised = False
        self.pending: int | None = None
        self.depth = 0

    def handler(self, signum: int, _frame: Any) -> None:
        """The handler given to :func:`signal.signal`."""
        if self.raised or self.pending is not None:
            print(f"[{self.prog}] {signal.Signals(signum).name}: already stopping", file=sys.stderr, flush=True)
            return
        if self.depth:
            self.pending = signum
            return
        self.raised = True
        raise self.interrupt(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block during which a signal is kept, then raised as it ends."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0 and self.pending is not None and not self.raised:
                self.raised = True
                raise self.interrupt(self.pending)


#: the gate whose handler is installed (process-wide, like the signal handlers themselves)
_active = SignalGate()


@contextlib.contextmanager
def installed(prog: str, interrupt: Callable[[int], BaseException]) -> Iterator[SignalGate]:
    """Install a fresh :class:`SignalGate` for SIGINT / SIGTERM; restore the previous handlers after
    (commands may run in-process, e.g. in tests)."""
    global _active  # noqa: PLW0603 - the process has one signal gate at a time
    gate, saved = SignalGate(prog, interrupt), _active
    previous = {signum: signal.signal(signum, gate.handler) for signum in HANDLED}
    _active = gate
    try:
        yield gate
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _active = saved


def deferred() -> contextlib.AbstractContextManager[None]:
    """The installed gate's :meth:`SignalGate.deferred` (a harmless block when none is installed)."""
    return _active.deferred()
