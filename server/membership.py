"""Who takes part in a federation, and how one step's messages go out and come back.

:class:`Membership` is the part of the FedE server that both phases share (the KGE rounds of
:class:`server.strategy.FedEStrategy` and the SimSkip rounds and downstream evaluation of
:class:`server.simskip_strategy.SimSkipStrategy`): the handshake that fixes the global
vocabulary, the wait for ``min-clients``, the rejoin of a restarted party under a new node id
and the restore of its private state, the exchange of one step's messages with replies
attributed to the node each request went to, the record of every party left out, and the
end-of-run notice. The failure semantics are documented in :mod:`server.strategy`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from client.kge.aggregation import AggregationError, build_vocabulary
from client.protocol import (
    CLIENT_INFO_KEY,
    CONFIG_KEY,
    FINISH_TYPE,
    HANDSHAKE_TYPE,
    METRICS_KEY,
    RESTORE_TYPE,
)
from server.grid_io import send_and_receive
from server.records import ClientInfo, FederationError, LoopState, RoundReport

__all__ = ["FINISH_TIMEOUT", "POLL_SECONDS", "PROGRESS_SECONDS", "Membership"]

#: Seconds the end-of-run notice waits for the parties' acknowledgements.
FINISH_TIMEOUT = 15.0
#: Seconds between two looks at the connected nodes while waiting for clients.
POLL_SECONDS = 1.0

#: Longest silence of a long exchange's progress line (seconds).
PROGRESS_SECONDS = 15.0


class _ProgressLine:
    """``on_poll`` of :func:`server.grid_io.send_and_receive`: one log line per reply and at
    least every :data:`PROGRESS_SECONDS` s, with an estimate of the time left.

    The estimate assumes the clients still working need as long as the ones done took on
    average (they run side by side as far as the machines allow); before the first reply there
    is none.
    """

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.done = 0
        self.last = 0.0

    def __call__(self, done: int, total: int, elapsed: float) -> None:
        if done == self.done and elapsed - self.last < PROGRESS_SECONDS:
            return
        self.done, self.last = done, elapsed
        left = "" if not done or done == total else f", about {elapsed / done * (total - done):.0f} s left"
        log(INFO, "%s: %s of %s clients done after %.0f s%s", self.phase, done, total, elapsed, left)


class Membership:
    """The registered parties of one federation and the exchange of messages with them.

    :param min_clients: registered clients that must be connected before the handshake and at
        the start of every step.
    :param min_clients_timeout: seconds to wait for ``min_clients`` before giving up with
        :class:`~server.records.FederationError`.
    :param loop_state: the current :class:`~server.records.LoopState` (its round, best round and
        federation id go into restore and finish messages).
    :param on_rejoin: called as ``on_rejoin(old_node, new_node)`` when a registered party is
        back under a new node id (the owner of per-node state re-keys it).

    :attr:`best_round_for` (node id -> the best round whose state that client keeps; the loop
    state's one best round unless the owner sets it: ``stopping = per-party``) goes into restore
    messages.
    """

    def __init__(
        self,
        *,
        min_clients: int,
        min_clients_timeout: float,
        loop_state: Callable[[], LoopState],
        on_rejoin: Callable[[int, int], None] | None = None,
    ) -> None:
        self.min_clients = int(min_clients)
        self.min_clients_timeout = float(min_clients_timeout)
        self.loop_state = loop_state
        self.on_rejoin = on_rejoin
        self.best_round_for: Callable[[int], int] = lambda node_id: self.loop_state().best_round
        self.clients: dict[int, ClientInfo] = {}
        self.vocabulary: list[str] = []
        self.entity_dim: int | None = None
        #: the round in progress: its failures are recorded in this report
        self.report: RoundReport | None = None
        #: seconds a rejoin or restore exchange waits (the run's round timeout once it is known)
        self.exchange_timeout = 3600.0
        #: nodes whose handshake was refused (unknown client id, other labels): never asked again
        self._refused_nodes: set[int] = set()
        # where failures outside a KGE round go (see collecting_failures)
        self._failure_sink: list[str] | None = None

    def connected(self, grid: Grid) -> list[int]:
        """The registered nodes that are connected now, sorted."""
        connected = set(grid.get_node_ids())
        return sorted(n for n in self.clients if n in connected)

    def client_name(self, node_id: int) -> str:
        """The client id of a registered node, else ``"node <id>"``."""
        info = self.clients.get(node_id)
        return info.client_id if info is not None else f"node {node_id}"

    def record_failure(self, name: str, reason: str, phase: str = "") -> str:
        """Log and record one client's failure in the current round's report (else in the list
        of :meth:`collecting_failures`); return the text."""
        text = f"{name}: {phase + ': ' if phase else ''}{reason}"
        log(WARNING, "client %s", text)
        sink = self.report.failures if self.report is not None else self._failure_sink
        if sink is not None:
            sink.append(text)
        return text

    @contextlib.contextmanager
    def collecting_failures(self) -> Iterator[list[str]]:
        """A block whose failures (:meth:`exchange`, :meth:`record_failure`) go to the list it
        yields: a step outside the KGE rounds (a SimSkip round, the downstream evaluation)."""
        failures: list[str] = []
        self._failure_sink = failures
        try:
            yield failures
        finally:
            self._failure_sink = None

    # ------------------------------------------------------------------ exchange
    def exchange(
        self, grid: Grid, messages: Sequence[Message], timeout: float, phase: str = "", progress: bool = False
    ) -> list[tuple[int, Message]]:
        """Send ``messages``, wait at most ``timeout`` s, return ``(node id, reply)`` pairs.

        A reply is attributed to the node its *request* went to (Flower's own "node
        unavailable" replies come from the SuperLink's node id); replies to messages of another
        exchange, second replies from one node and replies from nodes that got no message are
        dropped (logged). A node without a reply is recorded as a ``timeout`` failure.

        Flower's Grid pulls replies by the ids of this exchange's messages only, so a straggler's
        late reply stays on the SuperLink (``tests/test_straggler_deployment.py``); the checks
        here guard against grids that do not (and are unit-tested with one).

        With ``progress`` (a long step: the downstream evaluation) a line says how many clients
        have replied, the elapsed time and an estimate of what is left, whenever a reply comes and
        at least every :data:`PROGRESS_SECONDS` s (:class:`_ProgressLine`).
        """
        messages = list(messages)
        if not messages:
            return []
        sent_to = [m.metadata.dst_node_id for m in messages]
        replies = send_and_receive(grid, messages, timeout, on_poll=_ProgressLine(phase) if progress else None)
        # The grid sets each message's id when it pushes it (in place); a fake grid may not.
        by_message_id = {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}
        attributed: dict[int, Message] = {}
        for reply in replies:
            reply_to = reply.metadata.reply_to_message_id
            if by_message_id and reply_to:
                node = by_message_id.get(reply_to)
                if node is None:
                    log(
                        WARNING,
                        "dropped a reply to a message of another round (from node %s)",
                        reply.metadata.src_node_id,
                    )
                    continue
            else:
                node = reply.metadata.src_node_id
            if node not in sent_to:
                self.record_failure(f"node {node}", "reply from a node that got no message", phase)
                continue
            if node in attributed:
                log(WARNING, "dropped a second reply of client %s", self.client_name(node))
                continue
            attributed[node] = reply
        for node in sent_to:
            if node not in attributed:
                self.record_failure(self.client_name(node), f"timeout (no reply within {timeout:g} s)", phase)
        return sorted(attributed.items(), key=lambda pair: (self.client_name(pair[0]), pair[0]))

    # ------------------------------------------------------------------ end of the run
    def finish(
        self, grid: Grid, status: str, reason: str = "", run_dir: str = "", timeout: float = FINISH_TIMEOUT
    ) -> list[int]:
        """Tell every registered party that this run is over (``query.finish``).

        A party writes ``federation.json`` and its ``simskip-client`` exits 0 on ``completed``
        (it stays up on ``failed``, for a resumed run). Best effort: a party that does not
        answer within ``timeout`` s is only logged; nothing is recorded as a round failure.

        :param status: ``completed`` or ``failed``.
        :param reason: one line for a failed run.
        :returns: the node ids that acknowledged.
        """
        config = {
            "status": status,
            "reason": reason,
            "federation-id": self.loop_state().federation_id,
            "run-dir": run_dir,
        }
        messages = _config_messages(sorted(self.clients), FINISH_TYPE, config)
        if not messages:
            return []
        with self.collecting_failures() as failures:  # not a round's failures: only logged
            try:
                replies = self.exchange(grid, messages, timeout, phase="finish")
            except Exception as err:  # noqa: BLE001 - the run's result is already on disk; only the notice is lost
                log(WARNING, "could not tell the parties that the run %s: %s", status, err)
                return []
        if failures:
            log(WARNING, "the end of the run was not acknowledged: %s", failures)
        return sorted(node for node, reply in replies if not reply.has_error())

    # ------------------------------------------------------------------ handshake
    def _handshake_messages(self, node_ids: Iterable[int]) -> list[Message]:
        return _config_messages(node_ids, HANDSHAKE_TYPE, {"server-round": 0})

    def configure_handshake(self, grid: Grid, wait_timeout: float | None = None) -> list[Message]:
        """Wait for ``min_clients`` nodes (at most ``wait_timeout`` s) and ask each for its labels.

        :param wait_timeout: default ``min_clients_timeout``.
        :raises FederationError: when fewer than ``min_clients`` nodes connected in time.
        """
        wait_timeout = self.min_clients_timeout if wait_timeout is None else wait_timeout
        started = time.monotonic()
        last_logged = -1
        while len(connected := sorted(grid.get_node_ids())) < self.min_clients:
            if time.monotonic() - started > wait_timeout:
                raise FederationError(
                    f"handshake: {len(connected)} of {self.min_clients} clients connected "
                    f"after {wait_timeout:g} s (min-clients-timeout)"
                )
            if len(connected) != last_logged:
                log(INFO, "waiting for clients: %s of %s connected", len(connected), self.min_clients)
                last_logged = len(connected)
            time.sleep(POLL_SECONDS)
        return self._handshake_messages(connected)

    def register_clients(self, replies: Iterable[Message]) -> list[str]:
        """Build the global vocabulary from the handshake replies.

        :returns: the global entity labels (sorted union; global id = position).
        :raises FederationError: when a client failed, two share an id, or entity widths differ.
        """
        infos, labels = [], []
        for msg in replies:
            if msg.has_error():
                raise FederationError(f"handshake: node {msg.metadata.src_node_id} failed: {msg.error.reason}")
            record = msg.content.config_records[CLIENT_INFO_KEY]
            infos.append((msg.metadata.src_node_id, record))
            labels.append(list(record["entity-labels"]))
        if not infos:
            raise FederationError("handshake: no client replied")
        client_ids = [str(record["client-id"]) for _, record in infos]
        if len(set(client_ids)) != len(client_ids):
            raise FederationError(f"handshake: duplicate client ids {sorted(client_ids)}")
        widths = {int(record["entity-dim"]) for _, record in infos}
        if len(widths) != 1:
            raise FederationError(f"handshake: clients disagree on the entity width: {sorted(widths)}")
        try:
            vocabulary, index_arrays = build_vocabulary(labels)
        except AggregationError as err:
            raise FederationError(f"handshake: {err}") from err
        self.vocabulary = vocabulary
        self.entity_dim = widths.pop()
        self.clients = {
            node_id: ClientInfo(
                node_id=node_id,
                client_id=str(record["client-id"]),
                global_ids=ids,
                num_train=int(record["num-train"]),
                num_valid=int(record["num-valid"]),
                num_test=int(record["num-test"]),
            )
            for (node_id, record), ids in zip(infos, index_arrays, strict=True)
        }
        return vocabulary

    def handshake(self, grid: Grid, timeout: float = 3600.0) -> list[str]:
        """Run the handshake round trip; see :meth:`register_clients`.

        :param timeout: seconds to wait for the replies (waiting for ``min_clients`` to
            connect is bounded by ``min_clients_timeout``).
        """
        self.exchange_timeout = timeout
        replies = send_and_receive(grid, self.configure_handshake(grid), timeout)
        return self.register_clients(replies)

    # ------------------------------------------------------------------ rejoin
    def admit(self, grid: Grid, node_ids: Sequence[int], timeout: float) -> list[int]:
        """Ask unregistered nodes for their labels; re-map those that are a known client.

        A restarted SuperNode gets a new node id: it is accepted as client ``c`` when it says
        it is ``c`` and its labels (in its local order) and entity width are exactly what
        ``c`` registered. Other nodes are refused (logged) and not asked again.

        :returns: the newly admitted node ids.
        """
        by_client = {info.client_id: info for info in self.clients.values()}
        admitted = []
        for node, reply in self.exchange(grid, self._handshake_messages(node_ids), timeout, phase="rejoin"):
            if reply.has_error():
                log(WARNING, "rejoin: node %s failed its handshake: %s", node, reply.error.reason)
                continue
            record = reply.content.config_records.get(CLIENT_INFO_KEY)
            known = by_client.get(str(record["client-id"])) if record is not None else None
            reason = None
            if known is None:
                reason = "it is no client of this federation" if record is not None else "no client record"
            elif int(record["entity-dim"]) != self.entity_dim:
                reason = f"entity width {int(record['entity-dim'])} != {self.entity_dim}"
            elif list(record["entity-labels"]) != [self.vocabulary[i] for i in known.global_ids]:
                reason = f"its entity labels differ from those client {known.client_id} registered"
            if reason is not None:
                log(WARNING, "rejoin: refused node %s: %s", node, reason)
                self._refused_nodes.add(node)
                continue
            del self.clients[known.node_id]
            self.clients[node] = ClientInfo(
                node, known.client_id, known.global_ids, known.num_train, known.num_valid, known.num_test
            )
            if self.on_rejoin is not None:
                self.on_rejoin(known.node_id, node)
            by_client[known.client_id] = self.clients[node]
            log(INFO, "rejoin: client %s is back as node %s (was node %s)", known.client_id, node, known.node_id)
            admitted.append(node)
        return admitted

    def restore_clients(self, grid: Grid, node_ids: Sequence[int], timeout: float, *, strict: bool) -> dict[str, int]:
        """Tell clients to restore their private state as of ``loop.round`` (``query.restore``).

        :param strict: resume (a client without its checkpoint fails the run) rather than a
            rejoin (the client starts afresh, logged).
        :returns: client id -> round restored (-1: started afresh).
        :raises FederationError: in strict mode, when a client failed or did not answer.
        """
        loop = self.loop_state()
        config = {"resume-round": loop.round, "federation-id": loop.federation_id, "strict": strict}
        messages = [  # each client's own best round (per-party stopping: not the same for all)
            message
            for node in node_ids
            for message in _config_messages([node], RESTORE_TYPE, {**config, "best-round": self.best_round_for(node)})
        ]
        restored, failed, answered = {}, [], set()
        replies = self.exchange(grid, messages, timeout, phase="restore")
        for node, reply in replies:
            name = self.client_name(node)
            answered.add(name)
            if reply.has_error():
                failed.append(f"{name}: {reply.error.reason}")
                continue
            try:
                restored[name] = int(reply.content.metric_records[METRICS_KEY]["restored-round"])
            except (KeyError, TypeError, ValueError) as err:  # a malformed reply fails that client only
                failed.append(f"{name}: malformed restore reply ({type(err).__name__}: {err})")
                continue
            log(INFO, "client %s restored its private state of round %s", name, restored[name])
        missing = sorted({self.client_name(n) for n in node_ids} - answered)
        failed += [f"{name}: no reply" for name in missing]
        if failed:
            text = f"restoring the clients' state of round {loop.round} failed: {failed}"
            if strict:
                raise FederationError(text)
            log(WARNING, text)
        return restored

    def await_clients(self, grid: Grid, context: str) -> list[int]:
        """Admit rejoined nodes and wait until ``min_clients`` registered clients are connected.

        :param context: what is waiting (for messages), e.g. ``"round 3"``.
        :returns: the connected registered node ids, sorted.
        :raises FederationError: naming how many of how many after ``min_clients_timeout`` s.
        """
        started = time.monotonic()
        last_logged = None
        asked: set[int] = set()  # a node whose handshake failed is asked again next round, not in a loop
        while True:
            connected = set(grid.get_node_ids())
            newcomers = sorted(connected - set(self.clients) - self._refused_nodes - asked)
            if newcomers:
                asked.update(newcomers)
                admitted = self.admit(grid, newcomers, self.exchange_timeout)
                if admitted and self.loop_state().round > 0:
                    self.restore_clients(grid, admitted, self.exchange_timeout, strict=False)
                continue  # the admitted nodes count now; look again
            live = sorted(n for n in self.clients if n in connected)
            if len(live) >= self.min_clients:
                return live
            waited = time.monotonic() - started
            if waited > self.min_clients_timeout:
                missing = sorted(info.client_id for n, info in self.clients.items() if n not in connected)
                raise FederationError(
                    f"{context}: {len(live)} of {self.min_clients} required clients connected after "
                    f"waiting {waited:.0f} s (min-clients-timeout {self.min_clients_timeout:g} s); "
                    f"not connected: {missing}"
                )
            if last_logged != len(live):
                log(
                    WARNING,
                    "%s: %s of %s required clients connected; waiting up to %g s",
                    context,
                    len(live),
                    self.min_clients,
                    self.min_clients_timeout,
                )
                last_logged = len(live)
            time.sleep(POLL_SECONDS)

    def clients_for_last_step(self, grid: Grid, context: str) -> list[int]:
        """:meth:`await_clients`, but when ``min_clients`` do not connect in time, the registered
        clients that are connected (a last step such as the test reports the missing ones
        rather than losing the others' results)."""
        try:
            return self.await_clients(grid, context)
        except FederationError as err:
            log(WARNING, "%s; going on with the clients that are connected", err)
            connected = set(grid.get_node_ids())
            return sorted(n for n in self.clients if n in connected)


def _config_messages(node_ids: Iterable[int], message_type: str, config: Mapping[str, Any]) -> list[Message]:
    """One message of ``message_type`` per node, each with its own ConfigRecord ``config`` (no payload)."""
    return [
        Message(
            content=RecordDict({CONFIG_KEY: ConfigRecord(dict(config))}), message_type=message_type, dst_node_id=node
        )
        for node in node_ids
    ]
