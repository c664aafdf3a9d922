"""One exchange with the SuperNodes: push messages, pull the replies with a short, growing poll.

Flower 1.42's ``Grid.send_and_receive`` sleeps a fixed 3 s between pulls (the gRPC grid that
``flwr run`` and the simulation runtime give a ServerApp), so every exchange of a round that
ends in under 3 s still costs 3 s, and one that ends at 3.1 s costs 6 s. On UMLS a round has
two exchanges (train, then valid every ``eval-every`` rounds) around under a second of local
training: the sleep was most of the round. Flower offers the two primitives, ``push_messages``
and ``pull_messages``; this module polls them with an interval that starts at
``first_interval`` and grows by ``growth`` up to ``max_interval``, so a reply is picked up
within ``max_interval`` of its arrival (and within milliseconds on a short exchange), at the cost
of one cheap pull RPC per interval.

Each message's TTL is set to expire :data:`TTL_SLACK` seconds after the exchange gives up
(Flower's default is 12 h): a party that stalls past the timeout then finds its stale messages
dropped instead of working through them before it answers a current one, and its late reply is
refused by the SuperLink. The slack lets the exchange's own deadline come first, so a straggler
is recorded as a time-out, not as the "Message Unavailable" error the SuperLink answers for an
expired message (measured: with no slack the two raced and the error won).

A grid that has no ``push_messages`` (a test double, a third-party grid) is used through its
own ``send_and_receive``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flwr.app import Message

__all__ = ["PollSchedule", "expire_with_exchange", "send_and_receive"]


@dataclass(frozen=True)
class PollSchedule:
    """When to pull: ``first_interval`` s after the push, then each wait ``growth`` times longer,
    at most ``max_interval`` s.

    :param first_interval: the first wait (seconds).
    :param growth: factor between successive waits (>= 1).
    :param max_interval: the longest wait, i.e. the most a finished exchange can wait to be noticed.
    """

    first_interval: float = 0.005
    growth: float = 1.5
    max_interval: float = 0.1

    def __post_init__(self) -> None:
        if not (0 < self.first_interval <= self.max_interval) or self.growth < 1:
            raise ValueError(f"poll schedule needs 0 < first_interval <= max_interval and growth >= 1, got {self}")

    def waits(self) -> Iterable[float]:
        """The successive waits (an endless generator)."""
        wait = self.first_interval
        while True:
            yield wait
            wait = min(self.max_interval, wait * self.growth)


DEFAULT_POLL = PollSchedule()


#: Seconds a message outlives its exchange's deadline (see the module docstring).
TTL_SLACK = 5.0


def expire_with_exchange(messages: Iterable[Message], timeout: float, now: Callable[[], float] = time.time) -> None:
    """Set each message's TTL so that it expires ``timeout + TTL_SLACK`` s from now (its age included).

    :param messages: messages about to be pushed; their metadata is changed in place.
    :param timeout: the exchange's time-out in seconds (> 0).
    """
    for msg in messages:
        msg.metadata.ttl = max(0.0, now() - msg.metadata.created_at) + float(timeout) + TTL_SLACK


def send_and_receive(
    grid: object,
    messages: Iterable[Message],
    timeout: float | None,
    *,
    poll: PollSchedule = DEFAULT_POLL,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_poll: Callable[[int, int, float], None] | None = None,
) -> list[Message]:
    """Push ``messages`` and collect the replies until every message has one or ``timeout`` s pass.

    Same contract as Flower's ``Grid.send_and_receive`` (replies in arrival order; the missing
    ones are simply absent; ``timeout=None`` waits for all), with :class:`PollSchedule`'s waits
    instead of a fixed 3 s. The messages' ids are set by the push (in place), as Flower does;
    with a ``timeout``, each message's TTL is set (in place) to end when the exchange gives up.

    :param grid: a Flower ``Grid`` (or any object with ``send_and_receive``).
    :param messages: the messages of this exchange.
    :param timeout: the most seconds to wait for replies after the push; ``None``: no limit.
    :param poll: the wait schedule between pulls.
    :param sleep: ``time.sleep`` (a test passes a recorder).
    :param clock: ``time.monotonic`` (a test passes a fake clock).
    :param on_poll: called after every pull with (replies so far, messages sent, seconds since
        the push): a caller's progress line.
    """
    push = getattr(grid, "push_messages", None)
    pull = getattr(grid, "pull_messages", None)
    if push is None or pull is None:
        return list(grid.send_and_receive(messages, timeout=timeout))  # type: ignore[attr-defined]
    messages = list(messages)
    if timeout is not None:
        expire_with_exchange(messages, timeout)
    pending = set(push(messages))
    total = len(pending)
    pushed = clock()
    deadline = None if timeout is None else pushed + timeout
    replies: list[Message] = []
    for wait in poll.waits():
        if not pending:
            break
        got = list(pull(pending))
        replies.extend(got)
        pending.difference_update(reply.metadata.reply_to_message_id for reply in got)
        if on_poll is not None:
            on_poll(total - len(pending), total, clock() - pushed)
        if not pending:
            break
        if deadline is not None:
            left = deadline - clock()
            if left <= 0:
                break
            wait = min(wait, left)
        sleep(wait)
    return replies
