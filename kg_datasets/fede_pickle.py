"""FedE's federated pickle format, read with a restricted unpickler.

The file is a list with one dict per client: ``{"train"|"valid"|"test": {"edge_index": int64
[2, n] local ids, "edge_type": int64 [n] local relation ids, "edge_index_ori": int64 [2, n]
global entity ids, "edge_type_ori": int64 [n] global relation ids}}``. The ``*_ori`` arrays are
the global truth; the file's own local ids are checked to be a consistent relabelling of them.
Global ids are re-numbered densely (sorted original id -> 0..E-1) and the labels are the original
ids as strings, since the file holds no labels.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np

from kg_datasets.errors import KGDataError, clip
from kg_datasets.triples import SPLITS, LocatedTriples

# Globals a numpy-array pickle needs (lists, dicts and tuples need no global); anything else
# (os.system, builtins.eval, ...) is refused.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # Pickle protocols 0-2 have no bytes opcode: an array's data is rebuilt as
    # _codecs.encode(text, "latin1"), so without this a valid protocol-2 FedE pickle was refused
    # (found by tests/test_loader_fuzz.py). It turns a str into bytes and calls nothing else.
    ("_codecs", "encode"),
    # Protocol 5 (Python 3.14's default) rebuilds an array with numpy's _frombuffer(buffer, dtype,
    # shape, order): a view of bytes already in the file (found by tests/test_loader_fuzz.py).
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


def _empty_bytes(*args):
    """``bytes()`` as protocols 0-2 write an empty array's data; never ``bytes(n)``, which would
    allocate n bytes."""
    if args:
        raise pickle.UnpicklingError("bytes() with arguments")
    return b""


#: Callables resolved to a restricted stand-in (Python 3 writes ``bytes`` as ``__builtin__.bytes``
#: in protocols 0-2).
_STAND_INS = {("__builtin__", "bytes"): _empty_bytes, ("builtins", "bytes"): _empty_bytes}
_ARRAY_KEYS = ("edge_index", "edge_type", "edge_index_ori", "edge_type_ori")


def _plain_dtype_state(state: object) -> bool:
    """Whether ``state`` is what numpy pickles for a plain numeric dtype: ``(3, byte order, None,
    None, None, -1, -1, 0)`` (no subarray, fields, names or custom size)."""
    return (
        type(state) is tuple
        and len(state) == 8
        and all(type(item) is int for item in (state[0], *state[5:]))
        and state[0] == 3
        and state[1] in ("<", ">", "|", "=")
        and state[2:5] == (None, None, None)
        and state[5:] == (-1, -1, 0)
    )


class _NumpyOnlyUnpickler(pickle._Unpickler):
    """Unpickler that resolves only numpy array reconstruction and plain containers.

    It is the pure-Python unpickler (``pickle._Unpickler``; the C one offers no hook per opcode)
    so that BUILD can be checked: numpy's ``dtype.__setstate__`` crashes the interpreter
    (segmentation fault) on a malformed state such as ``(3, '<', None, -1, -1, 0)``, found by
    tests/test_loader_fuzz.py (``SIMSKIP_FUZZ_EXPLORE=1 --hypothesis-seed=402``). A dtype may only
    get the state of a plain numeric dtype, which is all a FedE pickle holds. The files are small
    numbers of opcodes around large byte strings, so the pure-Python loop costs little.
    """

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path

    def _load_build(self) -> None:
        state, target = self.stack[-1], self.stack[-2]
        if isinstance(target, np.dtype) and not _plain_dtype_state(state):
            raise KGDataError(
                f"{self._path}: refusing a numpy dtype state other than a plain numeric one ({clip(repr(state), 120)})"
            )
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build

    def find_class(self, module: str, name: str):
        if (module, name) in _STAND_INS:
            return _STAND_INS[module, name]
        if (module, name) not in _ALLOWED_GLOBALS:
            raise KGDataError(
                f"{self._path}: refusing to unpickle {module}.{name} (only numpy arrays and plain "
                f"containers are allowed in a FedE pickle)"
            )
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core.") :]  # numpy 2 moved numpy.core
        return super().find_class(module, name)


def safe_load_pickle(path: Path) -> object:
    """Unpickle ``path`` allowing only numpy arrays and plain containers.

    :raises KGDataError: on a forbidden global or a corrupt file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KGDataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    stream = io.BytesIO(data)
    try:
        obj = _NumpyOnlyUnpickler(stream, path).load()
    except KGDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - pickle raises many types on corrupt input
        raise KGDataError(f"{path}: not a readable pickle ({type(exc).__name__}: {clip(str(exc), 200)})") from None
    # load() stops at the first STOP opcode: bytes after it (a second pickle appended, a corrupt
    # tail) would be silently ignored (found by tests/test_loader_fuzz.py).
    if stream.tell() != len(data):
        raise KGDataError(
            f"{path}: {len(data) - stream.tell()} trailing byte(s) after the pickle (corrupt or concatenated file)"
        )
    return obj


def _check_relabelling(local: np.ndarray, original: np.ndarray, where: str) -> None:
    """The file's local ids must map one-to-one onto original ids."""
    pairs = np.unique(np.stack([local.ravel(), original.ravel()], axis=1), axis=0)
    for column, a, b in ((0, "local", "global"), (1, "global", "local")):
        values, counts = np.unique(pairs[:, column], return_counts=True)
        if (counts > 1).any():
            raise KGDataError(f"{where}: {a} id {int(values[counts > 1][0])} maps to several {b} ids")


def read_fede_pickle(path: Path) -> tuple[dict[str, int], dict[str, int], list[dict[str, LocatedTriples]]]:
    """Read a FedE pickle.

    :return: ``(entity_to_id, relation_to_id, [ {"train"|"valid"|"test": LocatedTriples}, ... ])``
        with dense global ids; labels are the original ids as strings.
    :raises KGDataError: wrong structure, shapes or dtypes, inconsistent local/global ids (naming
        file, client, split and key).
    """
    path = Path(path)
    obj = safe_load_pickle(path)
    if not isinstance(obj, (list, tuple)) or not obj:
        raise KGDataError(f"{path}: expected a non-empty list of per-client dicts, found {type(obj).__name__}")
    raw: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
    for k, client in enumerate(obj):
        if not isinstance(client, dict) or not set(SPLITS) <= set(client):
            raise KGDataError(f"{path}: client {k}: expected a dict with keys {list(SPLITS)}")
        splits = {}
        for name in SPLITS:
            where = f"{path}: client {k}, {name}"
            part = client[name]
            if not isinstance(part, dict) or not set(_ARRAY_KEYS) <= set(part):
                raise KGDataError(f"{where}: expected a dict with keys {list(_ARRAY_KEYS)}")
            try:
                arrays = {key: np.asarray(part[key]) for key in _ARRAY_KEYS}
            except (ValueError, TypeError) as exc:  # e.g. ragged nested lists (found by tests/test_loader_fuzz.py)
                raise KGDataError(f"{where}: not an array of ids ({clip(str(exc), 200)})") from None
            for key, arr in arrays.items():
                if not np.issubdtype(arr.dtype, np.integer):
                    raise KGDataError(f"{where}: {key} has dtype {arr.dtype}, expected integers")
            n = arrays["edge_type_ori"].shape[0] if arrays["edge_type_ori"].ndim == 1 else -1
            expected = {"edge_index": (2, n), "edge_index_ori": (2, n), "edge_type": (n,), "edge_type_ori": (n,)}
            for key, shape in expected.items():
                if arrays[key].shape != shape:
                    raise KGDataError(f"{where}: {key} has shape {arrays[key].shape}, expected {shape}")
            _check_relabelling(arrays["edge_index"], arrays["edge_index_ori"], f"{where}, edge_index")
            _check_relabelling(arrays["edge_type"], arrays["edge_type_ori"], f"{where}, edge_type")
            splits[name] = (arrays["edge_index_ori"].astype(np.int64), arrays["edge_type_ori"].astype(np.int64))
        raw.append(splits)
    entity_orig = np.unique(np.concatenate([s[0].ravel() for c in raw for s in c.values()]))
    relation_orig = np.unique(np.concatenate([s[1] for c in raw for s in c.values()]))
    if (entity_orig.size and entity_orig[0] < 0) or (relation_orig.size and relation_orig[0] < 0):
        raise KGDataError(f"{path}: negative ids")
    entity_to_id = {str(g): i for i, g in enumerate(entity_orig.tolist())}
    relation_to_id = {str(g): i for i, g in enumerate(relation_orig.tolist())}
    clients = []
    for k, c in enumerate(raw):
        out = {}
        for name, (edge_index, edge_type) in c.items():
            ids = np.stack(
                [
                    np.searchsorted(entity_orig, edge_index[0]),
                    np.searchsorted(relation_orig, edge_type),
                    np.searchsorted(entity_orig, edge_index[1]),
                ],
                axis=1,
            )
            out[name] = LocatedTriples(ids, f"{path} client {k} {name}")
        clients.append(out)
    return entity_to_id, relation_to_id, clients
