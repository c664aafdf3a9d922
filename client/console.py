"""What of a Flower run's streamed log reaches the console: the user's lines, without framework noise.

Every line goes to the run log unchanged (:func:`client.launcher.run_app`); the console gets
:func:`console_text`'s version of it. Pure regular expressions, no Flower: the filter is tested on
recorded logs (``tests/fixtures/console/``).
"""

from __future__ import annotations

import re

__all__ = ["ANSI_CODES", "CONSOLE_NOISE", "QUIET_KEEP", "RAY_DEDUP_NOTE", "RAY_PREFIX", "console_line", "console_text"]

#: Third-party console lines that tell the user nothing actionable here (they stay in the run log):
#: Flower's note on the simulated federation size (we always pass it) and on the app bundle it
#: unpacked into the run folder, Ray's FutureWarning about accelerator variables (we set GPU
#: resources explicitly), each with its ``warnings.warn(`` tail, and log records with an empty
#: message. (torch 2.13's DeprecationWarning for ``torch.jit.script_method``, raised by torch's own
#: Inductor imports, is ignored where the fused kernels import Inductor: client.kge.candidate_scoring.)
CONSOLE_NOISE = re.compile(
    r"default simulated SuperNodes changed|To change federation size, use the following command"
    r"|flwr federation simulation-config|Ray will no longer override accelerator visible devices"
    r"|^Successfully installed \S+ to "
    r"|Manually terminating ClientAppActor"  # Flower's WARNING for every actor at a simulation's normal end
    r"|^\s*warnings\.warn\($"
    r"|^[A-Z]+\s*:\s*$"  # a log record with nothing in it (Flower ends a simulation's log with one)
)
#: Lines a ``--quiet`` console still shows: problems, the command's own lines and the server's
#: one-line result (``best round N; test overall ...``).
QUIET_KEEP = re.compile(r"WARNING|ERROR|Error|Traceback|Exception|^\[simskip-|best round \d+; test")
#: ANSI colour / style sequences (Flower colours its level names, Ray its worker prefixes).
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")
_ANSI = r"(?:\x1b\[[0-9;]*m)*"
#: What Ray adds to a line its driver forwards from a worker: the ``(ClientAppActor pid=N)`` prefix
#: (``, ip=...`` on a cluster) and the deduplication note (``[repeated 2x across cluster] (Ray
#: deduplicates logs by default ...)``), each with its colour codes. ``RAY_DEDUP_LOGS=0``
#: (:data:`client.launcher.QUIET_ENV`) turns the deduplication off; the pattern covers a driver started without it.
RAY_PREFIX = re.compile(rf"^{_ANSI}\((?:\w+ )?pid=\d+(?:, ip=[^)]*)?\){_ANSI}\s?")
RAY_DEDUP_NOTE = re.compile(rf"{_ANSI}\s*\[repeated \d+x across cluster\].*$")


def console_text(line: str, quiet: bool = False, color: bool = False) -> str | None:
    """The console's version of one line of the streamed run log, or ``None`` to leave it out.

    Every line goes to the log file unchanged; the console gets it without Ray's worker prefix and
    deduplication note, without colour codes unless ``color`` (a terminal), and not at all when it
    is :data:`CONSOLE_NOISE` or, with ``quiet``, not :data:`QUIET_KEEP`.

    :param line: one line as ``flwr run --stream`` printed it (ending in a newline or not).
    :param quiet: keep only problems and summary lines.
    :param color: keep Flower's ANSI colours (the console is a terminal).
    """
    text = RAY_DEDUP_NOTE.sub("", RAY_PREFIX.sub("", line.rstrip("\n")))
    plain = ANSI_CODES.sub("", text)
    if CONSOLE_NOISE.search(plain) or (quiet and not QUIET_KEEP.search(plain)):
        return None
    return (text if color else plain) + "\n"


def console_line(line: str, quiet: bool = False) -> bool:
    """Whether a line of the streamed run log goes to the console at all (:func:`console_text`)."""
    return console_text(line, quiet) is not None
