"""FedE's server-side state: the global entity table, the best round's copy, and what a checkpoint holds.

:class:`FedEState` is the part of :class:`server.strategy.FedEStrategy` that a checkpoint saves
and a resume loads: the table (FedE) or each client's own rows (isolation), the best round's
table and rows, the loop state (:class:`~server.records.LoopState`) and the client-sampling RNG.
Rows are keyed by node id in memory and by client id on disk (a node id changes when a party's
SuperNode restarts).

With ``stopping = per-party`` (``docs/concepts/stopping.md``) each party has its own best round:
the best state is then each client's own rows as it evaluated them at its own best round
(``best_rows``, FedE too; no best table), and after :meth:`FedEState.use_best` every client gets
those rows.
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
    :param per_party: ``stopping = per-party``: one best round, and best rows, per client.
    """

    def __init__(self, members: Membership, setting: str, seed: int, per_party: bool = False) -> None:
        self.members = members
        self.setting = setting
        self.per_party = per_party
        self.rng = np.random.default_rng(seed)
        self.table: np.ndarray | None = None
        # Isolation keeps each client's own rows; FedE derives them from the table (until, per
        # party, use_best() gives every client its own best rows).
        self.client_rows: dict[int, np.ndarray] = {}
        self.own_rows = setting == "isolation"
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
        if not self.own_rows:
            return self.table[self.members.clients[node_id].global_ids]
        return self.client_rows[node_id]

    def keep_best(self) -> None:
        """The current table and rows are the best round's (copies: later rounds change them)."""
        self.best_table = self.table.copy()
        self.best_rows = {n: r.copy() for n, r in self.client_rows.items()}

    def keep_best_of(self, node_ids: list[int]) -> None:
        """Per party: the current rows of ``node_ids`` are their own best round's (copies)."""
        for node in node_ids:
            self.best_rows[node] = self.rows_for(node).copy()

    def use_best(self) -> None:
        """Make the best round's table / rows current (for the final test and the SimSkip phase).

        Per party: every client gets its own best round's rows (a client that never improved, its
        current ones, as the in-process runners test it).
        """
        if self.per_party:
            self.client_rows = {
                node: self.best_rows[node] if node in self.best_rows else self.rows_for(node)
                for node in self.members.clients
            }
            self.own_rows = True
            return
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
        ``best-rows/<client>``; keyed by client id since node ids change across restarts.
        Per party: ``table``, (isolation) ``rows/<client>`` and ``best-rows/<client>`` of every
        client that has a best round, no ``best-table``."""
        if self.per_party:
            arrays = {"table": self.table}
            for node, info in self.members.clients.items():
                if self.setting == "isolation":
                    arrays[f"rows/{info.client_id}"] = self.client_rows[node]
                if node in self.best_rows:
                    arrays[f"best-rows/{info.client_id}"] = self.best_rows[node]
            return {name: np.ascontiguousarray(array) for name, array in arrays.items()}
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
        self.own_rows = self.setting == "isolation"
        if self.per_party:
            self._restore_per_party(arrays)
        else:
            self._restore_best(arrays)
        self.rng.bit_generator.state = dict(state["rng"])
        values = {f.name: state[f.name] for f in fields(LoopState) if f.name in state}
        if values.get("best_mrr") is None:
            values["best_mrr"] = -math.inf
        self.loop = LoopState(**values)

    def _rows_array(self, arrays: Mapping[str, np.ndarray], name: str, num_rows: int) -> np.ndarray:
        rows = np.ascontiguousarray(arrays[name], dtype=np.float32)
        if rows.shape != (num_rows, self.members.entity_dim):
            raise FederationError(f"checkpoint {name} has shape {rows.shape}")
        return rows

    def _restore_per_party(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.best_table, self.best_rows = None, {}
        for node, info in self.members.clients.items():
            num_rows = info.global_ids.shape[0]
            if self.setting == "isolation":
                self.client_rows[node] = self._rows_array(arrays, f"rows/{info.client_id}", num_rows)
            if f"best-rows/{info.client_id}" in arrays:
                self.best_rows[node] = self._rows_array(arrays, f"best-rows/{info.client_id}", num_rows)

    def _restore_best(self, arrays: Mapping[str, np.ndarray]) -> None:
        clients = self.members.clients
        self.best_table = np.ascontiguousarray(arrays["best-table"], dtype=np.float32)
        if self.best_table.shape != self.table.shape:
            raise FederationError(
                f"checkpoint best-table has shape {self.best_table.shape}, expected {self.table.shape}"
            )
        self.best_rows = {}
        if self.setting == "isolation":
            for node, info in clients.items():
                for prefix, target in (("rows", self.client_rows), ("best-rows", self.best_rows)):
                    target[node] = self._rows_array(arrays, f"{prefix}/{info.client_id}", info.global_ids.shape[0])
