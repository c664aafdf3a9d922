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

__all__ = ["OBJECT_PULL_BACKOFF", "OBJECT_PULL_MAX_SECONDS", "PollSchedule", "expire_with_exchange", "send_and_receive", "shorten_object_pull_backoff"]

#: (first wait, longest wait) in seconds between retries of an object not yet available.
OBJECT_PULL_BACKOFF = (0.02, 0.5)
#: Give up on a message whose objects are still missing after this many seconds (Flower: 500
#: tries or 7,200 s, whichever first: about 80 minutes at its own backoff).
OBJECT_PULL_MAX_SECONDS = 60.0


def shorten_object_pull_backoff() -> bool:
    """Make Flower's object pulls retry after 20 ms (growing to 0.5 s) instead of 1 s (to 10 s).

    Why: Flower 1.42 moves a message's content as objects that each hop (SuperLink -> SuperNode
    -> ClientApp process, and back to the ServerApp) pulls with
    ``flwr.supercore.inflatable.inflatable_utils.pull_objects``; an object the previous hop has
    not stored yet is retried after ``PULL_INITIAL_BACKOFF`` = 1 s. A cProfile of a deployed UMLS
    round (``SIMSKIP_PROFILE_CLIENTAPP``) showed 1.0 s of a 1.8 s ClientApp message waiting there.
    The ClientApp process pulls through ``pull_and_inflate_object_from_tree``, which has its own
    copy of these defaults and passes them on explicitly, so both functions are changed: a
    timeline of a deployed UMLS round showed a ClientApp started by its SuperExec before the
    SuperNode had stored the message's last objects, then idle 0.87 s (one 1 s retry) with only
    ``pull_objects`` shortened.
    It also bounds the wait for a message whose objects never arrive (a party stopped between
    pushing its reply and pushing the reply's objects) to :data:`OBJECT_PULL_MAX_SECONDS`: measured
    on a loopback Kinships deployment, one such reply to the end-of-run notice held the ServerApp
    3 minutes past the run's end with the short backoff's 500 tries (Flower's: up to 80 minutes),
    far beyond the exchange's own 15 s timeout, because the pull happens inside ``pull_messages``.
    The defaults are keyword-only, bound at definition, so this sets the functions'
    ``__kwdefaults__`` (every caller in the process that leaves them unset gets them). Returns
    False, changing nothing, when Flower's functions no longer have them.
    """
    try:
        from flwr.supercore.inflatable import inflatable_utils
    except ImportError:
        return False
    functions = [getattr(inflatable_utils, name, None) for name in ("pull_objects", "pull_and_inflate_object_from_tree")]
    keys = {"initial_backoff", "backoff_cap", "max_time", "max_tries_per_object"}
    all_defaults = [getattr(function, "__kwdefaults__", None) or {} for function in functions]
    if not all(keys <= defaults.keys() for defaults in all_defaults):
        return False
    for defaults in all_defaults:
        defaults["initial_backoff"], defaults["backoff_cap"] = OBJECT_PULL_BACKOFF
        defaults["max_time"], defaults["max_tries_per_object"] = OBJECT_PULL_MAX_SECONDS, None
    return True


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
