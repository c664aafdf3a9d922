"""The party's Flower ClientApp, as ``pyproject.toml`` names it (``clientapp = "client.app:app"``).

One ``ClientApp`` carries the KGE handlers (:mod:`client.client_app`: handshake, train, evaluate,
queries) and the SimSkip phase's handlers (:mod:`client.refinement_app`: ``train.simskip``,
``evaluate.downstream``). Importing :mod:`client.refinement_app` registers its handlers on the
same object; the two modules import one way (``refinement_app`` -> ``client_app``), and this
module, above both, is the only one that needs them together.
"""

from __future__ import annotations

from client import refinement_app as _simskip_handlers  # noqa: F401 - registers train.simskip, evaluate.downstream
from client.client_app import app

__all__ = ["app"]
