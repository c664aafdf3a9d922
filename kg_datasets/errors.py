"""Errors and warnings raised by :mod:`kg_datasets`.

Every data problem is a :class:`KGDataError` (a ``ValueError``) whose message names the file and,
where there is one, the line; callers catch the base class.
"""

from __future__ import annotations


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


class KGDataWarning(UserWarning):
    """Questionable but loadable data (e.g. duplicate triples); the message names file and line."""
