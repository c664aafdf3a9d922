"""PyKEEN datasets by name (``"Nations"``, ``"Kinships"``, ``"UMLS"`` are bundled and offline).

Other PyKEEN datasets download on first use; offline, the download failure becomes a
:class:`DatasetUnavailableError` naming the file to place in PyKEEN's cache.
"""

from __future__ import annotations

import numpy as np

from kg_datasets.errors import DatasetUnavailableError, KGDataError
from kg_datasets.model import KGSplit
from kg_datasets.triples import LocatedTriples


def pykeen_dataset_names() -> list[str]:
    from pykeen.datasets import dataset_resolver  # heavy (~200 modules, 0.15 s): PyKEEN dataset names only

    return sorted(cls.__name__ for cls in dataset_resolver)


def _unavailable(name: str, exc: BaseException, dataset=None) -> DatasetUnavailableError:
    """Describe what to place in PyKEEN's cache, from pystow's DownloadError or the dataset object."""
    url = getattr(exc, "url", None) or getattr(dataset, "url", None)
    path = getattr(exc, "path", None) or getattr(dataset, "path", None)
    if path is not None:
        where = f"download {url} and place it at {path}" if url else f"place the file at {path}"
    elif dataset is not None and hasattr(dataset, "_get_paths"):
        files = ", ".join(str(p) for p in dataset._get_paths())
        where = f"download {url} and extract it so that these files exist: {files}"
    else:
        where = f"place its files in PyKEEN's cache (PYSTOW_HOME / PYKEEN_HOME); cause: {exc}"
    return DatasetUnavailableError(f"PyKEEN dataset {name!r} is not available offline: {where}")


def load_pykeen_dataset(name: str) -> KGSplit:
    """Load a PyKEEN dataset by name as a :class:`KGSplit` (global ids = the dataset's ids).

    :raises DatasetUnavailableError: when it must be downloaded and cannot be.
    :raises KGDataError: when PyKEEN knows no such dataset.
    """
    from pykeen.datasets import dataset_resolver  # heavy (~200 modules, 0.15 s): PyKEEN dataset names only

    try:
        cls = dataset_resolver.lookup(name)
    except (KeyError, ValueError):
        raise KGDataError(
            f"{name!r} is neither an existing path nor a PyKEEN dataset name "
            f"(PyKEEN knows: {', '.join(pykeen_dataset_names())})"
        ) from None
    dataset = None
    try:
        dataset = cls()
        factories = {"train": dataset.training, "valid": dataset.validation, "test": dataset.testing}
    except (OSError, ConnectionError) as exc:  # pystow's DownloadError and requests' errors are OSErrors
        raise _unavailable(cls.__name__, exc, dataset) from exc
    if factories["valid"] is None:
        raise KGDataError(f"PyKEEN dataset {cls.__name__!r} has no validation split")
    train = factories["train"]
    splits = {
        key: LocatedTriples(np.asarray(f.mapped_triples.numpy(), dtype=np.int64), f"PyKEEN {cls.__name__} {key}")
        for key, f in factories.items()
    }
    return KGSplit(
        cls.__name__,
        dict(train.entity_to_id),
        dict(train.relation_to_id),
        splits["train"],
        splits["valid"],
        splits["test"],
    )
