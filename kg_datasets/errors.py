"""Errors and warnings raised by :mod:`kg_datasets`.

Every data problem is a :class:`KGDataError` (a ``ValueError``) whose message names the file and,
where there is one, the line; callers catch the base class.
"""

from __future__ import annotations

from simskip_core import outputs


def clip(text: str, limit: int = 120) -> str:
    """The first ``limit`` characters of ``text``: a field quoted in an error message is quoted only
    in part, so a 100,000-character label cannot make a 100,000-character message (found by
    ``tests/test_loader_fuzz.py``)."""
    return text[:limit]


class KGDataError(ValueError):
    """Bad or unusable knowledge-graph data; the message names the file and line where there is one."""


class DatasetUnavailableError(KGDataError):
    """A named PyKEEN dataset is neither bundled nor in PyKEEN's cache, and cannot be downloaded."""


class UnseenTripleError(KGDataError):
    """A valid/test triple holds an entity or relation that its client's train split lacks."""


class UnsafeOutputError(KGDataError, outputs.UnsafeOutputError):
    """An output folder would destroy or mix with what the command was given or did not write
    (:mod:`simskip_core.outputs`, the project's one rule for outputs)."""


class OutputOverlapError(UnsafeOutputError, outputs.OutputOverlapError):
    """The output folder is, contains or lies inside the source."""


class ForeignOutputError(UnsafeOutputError, outputs.ForeignOutputError):
    """``--overwrite`` on a folder that simskip did not write."""


#: :mod:`simskip_core.outputs` errors -> this package's (so that ``except KGDataError`` catches them).
OUTPUT_ERRORS: dict[type[Exception], type[UnsafeOutputError]] = {
    outputs.OutputOverlapError: OutputOverlapError,
    outputs.ForeignOutputError: ForeignOutputError,
    outputs.UnsafeOutputError: UnsafeOutputError,
}


class SplitLeakError(KGDataError):
    """A client's valid or test split holds triples of its train split (a leak that inflates metrics)."""


class KGDataWarning(UserWarning):
    """Questionable but loadable data (e.g. duplicate triples); the message names file and line."""


#: Library parameters named in this package's messages -> the ``simskip-data`` / ``simskip-sim``
#: flags a user types (the commands' boundary rewrites the messages with
#: :func:`simskip_core.cli_common.flag_names`).
PARAMETER_FLAGS = {
    "on_unseen='drop'": "--on-unseen drop",
    "on_unseen='keep'": "--on-unseen keep",
    " (allow_split_leaks=True)": "",
    "allow_split_leaks=True": "--allow-split-leaks",
    "partition='triple'": "--partition triple",
    "overwrite=True / --overwrite": "--overwrite",
    "overwrite=True": "--overwrite",
    "num_clients=": "--clients ",
    "num_clients": "--clients",
}
