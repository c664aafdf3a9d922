"""Named exceptions raised at the boundary of :mod:`simskip_core`.

Every error subclasses :class:`SimSkipError`, and also the built-in exception a caller would
naturally catch (``ValueError`` for bad input, ``RuntimeError`` for a diverged run), so both
``except SimSkipError`` and ``except ValueError`` work.
"""

from __future__ import annotations

from typing import Any

#: Longest quoted value in an error message (a value may be megabytes of text).
MAX_SHOWN = 200


def shown(value: Any) -> str:
    """``repr(value)`` for an error message: at most :data:`MAX_SHOWN` characters, and an integer too
    long to print in decimal named by its size (``repr`` of an int of over 4,300 digits raises
    ``ValueError``; TOML reads ``0xfff...`` of any length as one; found by tests/test_loader_fuzz.py)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1024:
        return f"<an integer of {value.bit_length()} bits>"
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}... ({len(text)} characters)"


class SimSkipError(Exception):
    """Base class of all errors raised by :mod:`simskip_core`."""


class ConfigError(SimSkipError, ValueError):
    """A configuration key is unknown, has the wrong type, or is out of range."""


class EmbeddingInputError(SimSkipError, ValueError):
    """An embedding matrix is malformed: wrong rank, empty, non-finite, or of the wrong width."""


class EmbeddingFileError(EmbeddingInputError):
    """An embedding file cannot be read or written; the message names the file (and line).

    :param message: what is wrong.
    :param path: the offending file.
    :param line: 1-based line number for text files, else ``None``.
    """

    def __init__(self, message: str, path: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


class WeightsMismatchError(SimSkipError, ValueError):
    """Imported weights do not match the model: names, order, shapes or dtypes differ."""


class TrainingDivergedError(SimSkipError, RuntimeError):
    """The contrastive loss became NaN or infinite.

    The optimizer step that would have applied the bad gradient is skipped, so the trainer's
    weights are those of the last finite step.

    :param message: what happened and where.
    :param losses: mean loss of each epoch completed in this ``fit`` call before the failure.
    """

    def __init__(self, message: str, losses: list[float]) -> None:
        super().__init__(message)
        self.losses = list(losses)
