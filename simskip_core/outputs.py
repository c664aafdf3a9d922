"""The one rule for what a command may write: never over what it was given, never over what it did not write.

Every command that writes (``simskip-data partition``, ``simskip-refine``, ``simskip-sim``,
``simskip-server``, the scripts) checks its outputs here before any work starts:

* an output that **is**, **contains** or **lies inside** an input is refused
  (:class:`OutputOverlapError`); paths are compared after resolving symbolic links, and an input
  that is no existing path (a PyKEEN dataset name such as ``UMLS``) is no path at all;
* a folder output that is the current folder or one of its ancestors is refused;
* a folder output is replaced (``--overwrite``) only when the project itself wrote it: the folder
  holds :data:`MARKER_FILE` (the command, the time and the files written) and nothing else than
  the files it lists (:class:`ForeignOutputError` otherwise); what is removed is listed on stderr
  before it is removed;
* a folder is written into a temporary sibling and renamed into place (:func:`staged_folder`), so
  the destination is the old folder or the complete new one, and no temporary or ``.old-*``
  folder stays behind, on success or failure.

Pure Python (no torch), modality-agnostic: :mod:`kg_datasets` and the server use it too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SimSkipError

__all__ = [
    "MARKER_FILE",
    "ForeignOutputError",
    "OutputOverlapError",
    "StagedFolder",
    "UnsafeOutputError",
    "check_file_outputs",
    "check_new_folder",
    "check_no_overlap",
    "new_folder",
    "plan_folder_replacement",
    "read_marker",
    "staged_folder",
]

#: The file that marks a folder as written by this project (a JSON manifest).
MARKER_FILE = ".simskip-output.json"
#: At most this many removed paths are listed one per line (then a count of the rest).
MAX_LISTED = 50


class UnsafeOutputError(SimSkipError, ValueError):
    """An output would destroy or mix with something the command did not write (an input error: exit 2)."""


class OutputOverlapError(UnsafeOutputError):
    """An output is, contains or lies inside one of the command's inputs."""


class ForeignOutputError(UnsafeOutputError):
    """``--overwrite`` was asked for a folder that the project did not write (no marker, or unlisted files)."""


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def check_no_overlap(
    output: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str] | None],
    *,
    what: str = "output",
) -> None:
    """Refuse an ``output`` that is, contains or lies inside one of ``inputs``.

    :param output: the path the command will write (a file or a folder; need not exist).
    :param inputs: what the command reads; ``None`` and strings that are no existing path
        (a dataset name such as ``"UMLS"``) are skipped.
    :param what: how to name the output in the message (e.g. ``"OUT"``, ``"--run-dir"``).
    :raises OutputOverlapError: naming both paths.
    """
    out = _resolved(output)
    for given in inputs:
        if given is None or not Path(given).expanduser().exists():
            continue
        source = _resolved(given)
        if out == source or (out.exists() and os.path.samefile(out, source)):
            relation = "is the input"
        elif source in out.parents:
            relation = "lies inside the input"
        elif out in source.parents:
            relation = "contains the input"
        else:
            continue
        raise OutputOverlapError(
            f"{what} {os.fspath(output)} {relation} {os.fspath(given)}: writing it would destroy what the "
            "command was given; choose an output outside the input"
        )


def _check_not_working_folder(out: Path, shown: str, what: str) -> None:
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        where = "is the current folder" if out == cwd else "contains the current folder"
        raise UnsafeOutputError(f"{what} {shown} {where}; choose a new folder below it (e.g. {Path(shown) / 'out'})")


def _entries(folder: Path) -> list[str]:
    """Every file and folder below ``folder``, relative, sorted (folders with a trailing ``/``)."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        found.append(rel + "/" if path.is_dir() and not path.is_symlink() else rel)
    return sorted(found)


def _count(items: list[str], one: str, many: str) -> str:
    return f"{len(items)} {one if len(items) == 1 else many}"


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a folder this project wrote, or ``None`` when it has none (or an unreadable one)."""
    try:
        data = json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("command"), str)
        or not isinstance(data.get("files"), list)
    ):
        return None
    return data


def plan_folder_replacement(
    output: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
    what: str = "output folder",
    overwrite_flag: str = "--overwrite",
) -> list[str]:
    """Check that ``output`` may be (re)written; return the entries a replacement would remove.

    :param output: the folder to write.
    :param inputs: the command's inputs (see :func:`check_no_overlap`).
    :param overwrite: whether replacing an existing non-empty folder was asked for.
    :param what: how to name the output in messages.
    :param overwrite_flag: the flag a user passes to replace a folder (named in messages).
    :return: relative paths under ``output`` (empty when it is missing or empty).
    :raises OutputOverlapError: ``output`` is, contains or lies inside an input.
    :raises ForeignOutputError: ``overwrite`` on a folder without :data:`MARKER_FILE`, or holding
        files its marker does not list.
    :raises UnsafeOutputError: ``output`` is the current folder or an ancestor, is not a folder,
        or is not empty and ``overwrite`` is False.
    """
    shown = os.fspath(output)
    check_no_overlap(output, inputs, what=what)
    out = _resolved(output)
    _check_not_working_folder(out, shown, what)
    if not out.exists():
        if Path(output).is_symlink():
            raise UnsafeOutputError(f"{what} {shown} is a broken symbolic link")
        return []
    if not out.is_dir():
        raise UnsafeOutputError(f"{what} {shown} exists and is not a folder")
    entries = _entries(out)
    if not entries:
        return []
    if not overwrite:
        raise UnsafeOutputError(
            f"{what} {shown} exists and is not empty ({_count(entries, 'entry', 'entries')}); choose a new folder, or pass "
            f"{overwrite_flag} to replace a folder that simskip wrote"
        )
    marker = read_marker(out)
    if marker is None:
        raise ForeignOutputError(
            f"{what} {shown} was not written by simskip (no readable {MARKER_FILE}): {overwrite_flag} replaces "
            f"only folders simskip wrote; its {_count(entries, 'entry', 'entries')} are left untouched "
            f"(e.g. {entries[0]})"
        )
    listed = {MARKER_FILE, *(str(f) for f in marker["files"])}
    listed |= {parent.as_posix() + "/" for f in listed for parent in Path(f).parents if parent != Path(".")}
    foreign = [e for e in entries if e not in listed]
    if foreign:
        raise ForeignOutputError(
            f"{what} {shown} holds {_count(foreign, 'entry', 'entries')} that simskip did not write (e.g. {foreign[0]}); "
            f"{overwrite_flag} would delete them: move them away first"
        )
    return entries


@dataclass
class StagedFolder:
    """The temporary folder a command writes into (see :func:`staged_folder`).

    :param path: where to write now.
    :param records: what the marker's ``records`` will hold (counts a run must keep, e.g. leaks).
    """

    path: Path
    records: dict[str, Any] = field(default_factory=dict)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _announce_removal(command: str, out: Path, entries: list[str], marker: Mapping[str, Any] | None, say) -> None:
    files = [e for e in entries if not e.endswith("/")]
    origin = f" (written by {marker.get('command')} at {marker.get('created')})" if marker else ""
    say(f"{command}: removing {len(files)} files of {out}{origin} to replace it:")
    for name in files[:MAX_LISTED]:
        say(f"  {name}")
    if len(files) > MAX_LISTED:
        say(f"  ... and {len(files) - MAX_LISTED} more")


@contextmanager
def staged_folder(
    output: str | os.PathLike[str],
    *,
    command: str,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
    what: str = "output folder",
    overwrite_flag: str = "--overwrite",
    say: Callable[[str], None] = _say,
) -> Iterator[StagedFolder]:
    """Write a folder atomically: check it (:func:`plan_folder_replacement`), yield a temporary
    sibling to fill, then write :data:`MARKER_FILE` into it and rename it into place.

    An existing folder (allowed by ``overwrite``) is listed through ``say`` and moved aside first,
    restored when the final rename fails, and deleted after it succeeds. Whatever happens, no
    temporary or ``.old-*`` folder is left beside ``output``.

    :param output: the folder to create or replace.
    :param command: the command's name, recorded in the marker (e.g. ``"simskip-data partition"``).
    :param inputs: the command's inputs (never overwritten, see :func:`check_no_overlap`).
    :param overwrite: replace an existing non-empty folder that simskip wrote.
    :param what: how to name the output in messages.
    :param overwrite_flag: how a user asks for ``overwrite`` (named in messages).
    :param say: where the list of removed files goes (default: stderr).
    :raises UnsafeOutputError: see :func:`plan_folder_replacement` (raised before anything is written).
    """
    removed = plan_folder_replacement(
        output, inputs=inputs, overwrite=overwrite, what=what, overwrite_flag=overwrite_flag
    )
    out = _resolved(output)
    with new_folder(out.parent):
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            yield from _fill_and_place(tmp, out, command=command, removed=removed, say=say)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _fill_and_place(
    tmp: Path, out: Path, *, command: str, removed: list[str], say: Callable[[str], None]
) -> Iterator[StagedFolder]:
    """:func:`staged_folder`'s body: yield ``tmp`` to fill, write the marker, rename into place."""
    trash: Path | None = None
    try:
        staged = StagedFolder(tmp)
        yield staged
        manifest = {
            "command": command,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "files": [e for e in _entries(tmp) if not e.endswith("/")],
            "records": staged.records,
        }
        (tmp / MARKER_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if out.exists():
            if removed:
                _announce_removal(command, out, removed, read_marker(out), say)
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(trash / "old", out)
                raise
        else:
            os.replace(tmp, out)
    finally:
        if trash is not None and trash.exists():
            shutil.rmtree(trash, ignore_errors=True)


def check_new_folder(
    output: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    taken: Iterable[str] | None = None,
    what: str = "run folder",
    hint: str = "choose a new folder",
) -> Path:
    """Check a folder a command will create and fill in place (a run folder); create nothing.

    :param output: the folder.
    :param inputs: the command's inputs (see :func:`check_no_overlap`).
    :param taken: names whose presence in ``output`` means it already holds what the command
        would write (an earlier run); ``None``: any entry does (the folder must be missing or empty).
    :param what: / hint: how to name the folder, and what to do instead, in messages.
    :return: the resolved folder.
    :raises OutputOverlapError: it is, contains or lies inside an input.
    :raises UnsafeOutputError: it exists and is not a folder, already holds an entry of ``taken``
        (or anything, with ``taken=None``), or is the current folder or an ancestor of it.
    """
    shown = os.fspath(output)
    check_no_overlap(output, inputs, what=what)
    out = _resolved(output)
    _check_not_working_folder(out, shown, what)
    if out.exists():
        if not out.is_dir():
            raise UnsafeOutputError(f"{what} {shown} exists and is not a folder")
        if taken is None:
            present = sorted(p.name for p in out.iterdir())
        else:
            present = [name for name in taken if (out / name).exists() or (out / name).is_symlink()]
        if present:
            raise UnsafeOutputError(
                f"{what} {shown} already holds {', '.join(present[:5])}{' ...' if len(present) > 5 else ''}; {hint}"
            )
    return out


@contextmanager
def new_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Create ``path`` (and its missing parents) for the block; when the block raises, remove those
    of them that are still empty, so that a failed start leaves no empty folder behind.

    :return: (yields) the resolved folder.
    """
    out = _resolved(path)
    created = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        _remove_empty(created)
        raise


def _remove_empty(folders: Iterable[Path]) -> None:
    """``rmdir`` each folder, deepest first, stopping at the first that is not empty (or gone)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def check_file_outputs(
    outputs: Mapping[str, str | os.PathLike[str] | None],
    inputs: Iterable[str | os.PathLike[str] | None],
    *,
    suffixes: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Check a command's output files before any work: each in an existing folder, not a folder
    itself, of an allowed type, not an input and not another output.

    :param outputs: what the user typed (e.g. ``"OUT"``, ``"--summary"``) -> the path (``None``: not asked for).
    :param inputs: the command's inputs.
    :param suffixes: per output name, the allowed suffixes (lower case, with the dot).
    :raises OutputOverlapError: an output is an input (or contains / lies inside one), or two outputs are one file.
    :raises UnsafeOutputError: a missing folder, a folder given as a file, or a wrong suffix.
    """
    inputs = list(inputs)
    seen: dict[Path, str] = {}
    for name, path in outputs.items():
        if path is None:
            continue
        path = Path(path)
        allowed = None if suffixes is None else suffixes.get(name)
        if allowed is not None:
            allowed = tuple(allowed)
            if path.suffix.lower() not in allowed:
                raise UnsafeOutputError(
                    f"{name} {path}: unknown file type {path.suffix!r}; use one of {', '.join(allowed)}"
                )
        check_no_overlap(path, inputs, what=name)
        parent = path.expanduser().parent
        if not parent.is_dir():
            raise UnsafeOutputError(f"{name} {path}: folder {parent} does not exist")
        if path.expanduser().is_dir():
            raise UnsafeOutputError(f"{name} {path} is a folder; give a file name")
        key = _resolved(path)
        if key in seen:
            raise OutputOverlapError(f"{name} {path} is the same file as {seen[key]}")
        seen[key] = name
