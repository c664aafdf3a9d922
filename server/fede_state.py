"""FedE's server-side state: the global entity table, the best round's copy, and what a checkpoint holds.

:class:`FedEState` is the part of :class:`server.strategy.FedEStrategy` that a checkpoint saves
and a resume loads: the table (FedE) or each client's own rows (isolation), the best round's
table and rows, the loop state (:class:`~server.records.LoopState`) and the client-sampling RNG.
Rows are keyed by node id in memory and by client id on disk (a node id changes when a party's
SuperNode restarts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import numpy as np

from server.membership import Membership
from server.records import FederationError, LoopState

__all__ = ["FedEState"]


class FedEState:
    """The table, the best round's copy, the loop state and the sampling RNG of one FedE run.

    :param members: the registered clients (their global ids, the vocabulary and entity width).
    :param setting: ``"fede"`` (rows come from the table) or ``"isolation"`` (each client's own).
    :param seed: seed of the client-sampling RNG.
    """

    def __init__(self, members: Membership, setting: str, seed: int) -> None:
        self.members = members
        self.setting = setting
        self.rng = np.random.default_rng(seed)
        self.table: np.ndarray | None = None
        # Isolation keeps each client's own rows; FedE derives them from the table.
        self.client_rows: dict[int, np.ndarray] = {}
        self.best_table: np.ndarray | None = None
        self.best_rows: dict[int, np.ndarray] = {}
        self.loop = LoopState()

    def set_table(self, table: np.ndarray) -> None:
        """Set the global entity table, float32 ``(len(vocabulary), entity_dim)``."""
        expected = (len(self.members.vocabulary), self.members.entity_dim)
        if table.shape != expected:
            raise FederationError(f"entity table has shape {table.shape}, expected {expected}")
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.client_rows = {node: self.table[info.global_ids] for node, info in self.members.clients.items()}

    def rows_for(self, node_id: int) -> np.ndarray:
        """The rows node ``node_id`` gets: float32 ``(n_k, entity_dim)`` in its local order."""
        if self.setting == "fede":
            return self.table[self.members.clients[node_id].global_ids]
        return self.client_rows[node_id]

    def keep_best(self) -> None:
        """The current table and rows are the best round's (copies: later rounds change them)."""
        self.best_table = self.table.copy()
        self.best_rows = {n: r.copy() for n, r in self.client_rows.items()}

    def use_best(self) -> None:
        """Make the best round's table / rows current (for the final test and the SimSkip phase)."""
        if self.best_table is not None:
            self.table = self.best_table
        if self.best_rows:
            self.client_rows = dict(self.best_rows)

    def rejoined(self, old_node: int, new_node: int) -> None:
        """A client is back under a new node id: its rows move with it (``Membership.on_rejoin``)."""
        for rows in (self.client_rows, self.best_rows):
            if old_node in rows:
                rows[new_node] = rows.pop(old_node)

    # ------------------------------------------------------------------ checkpoint
    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        """The loop's arrays: ``table``, ``best-table`` and (isolation) ``rows/<client>``,
        ``best-rows/<client>``; keyed by client id since node ids change across restarts."""
        arrays = {"table": self.table, "best-table": self.best_table if self.best_table is not None else self.table}
        if self.setting == "isolation":
            for node, info in self.members.clients.items():
                arrays[f"rows/{info.client_id}"] = self.client_rows[node]
                arrays[f"best-rows/{info.client_id}"] = self.best_rows.get(node, self.client_rows[node])
        return {name: np.ascontiguousarray(array) for name, array in arrays.items()}

    def checkpoint_state(self) -> dict[str, Any]:
        """The loop's JSON state: :class:`LoopState`'s fields, the sampling RNG, setting, clients."""
        state = {f.name: getattr(self.loop, f.name) for f in fields(LoopState)}
        state.update(
            {
                "phase": "fede",
                "setting": self.setting,
                "clients": sorted(info.client_id for info in self.members.clients.values()),
                "rng": self.rng.bit_generator.state,
            }
        )
        return state

    def restore_checkpoint(self, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any]) -> None:
        """Load what :meth:`checkpoint_arrays` / :meth:`checkpoint_state` returned (after the handshake).

        :raises FederationError: when the checkpoint is of another setting, other clients or
            another table shape.
        """
        clients = self.members.clients
        if not clients:
            raise FederationError("restore_checkpoint() called before handshake()")
        if state.get("setting") != self.setting:
            raise FederationError(f"checkpoint is of setting {state.get('setting')!r}, this run is {self.setting!r}")
        names = sorted(info.client_id for info in clients.values())
        if list(state.get("clients", [])) != names:
            raise FederationError(f"checkpoint holds clients {state.get('clients')}, connected are {names}")
        self.set_table(np.asarray(arrays["table"]))
        self.best_table = np.ascontiguousarray(arrays["best-table"], dtype=np.float32)
        if self.best_table.shape != self.table.shape:
            raise FederationError(
                f"checkpoint best-table has shape {self.best_table.shape}, expected {self.table.shape}"
            )
        self.best_rows = {}
        if self.setting == "isolation":
            for node, info in clients.items():
                for prefix, target in (("rows", self.client_rows), ("best-rows", self.best_rows)):
                    rows = np.ascontiguousarray(arrays[f"{prefix}/{info.client_id}"], dtype=np.float32)
                    if rows.shape != (info.global_ids.shape[0], self.members.entity_dim):
                        raise FederationError(f"checkpoint {prefix}/{info.client_id} has shape {rows.shape}")
                    target[node] = rows
        self.rng.bit_generator.state = dict(state["rng"])
        values = {f.name: state[f.name] for f in fields(LoopState) if f.name in state}
        if values.get("best_mrr") is None:
            values["best_mrr"] = -math.inf
        self.loop = LoopState(**values)
