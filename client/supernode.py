"""``flower-supernode`` with a short idle poll: the party's SuperNode as ``simskip-client`` starts it.

Flower 1.42's SuperNode asks the SuperLink for a message, and when there is none it sleeps a
fixed 3 s (``flwr.supernode.start_client_internal``, the ``time.sleep(3)`` of its pull loop)
before asking again. Every message of a round therefore waited 1.5 s on average, 3 s at worst,
before the party even saw it; with a train and a valid exchange per round that was most of a
loopback round's framework overhead (8 s a round on UMLS against about 1 s of training).

Once it has handed a message to its ClientApp, the same loop checks its own in-memory node state
for the reply every 0.5 s (``_push_messages``: ``time.sleep(0.5)``, also while a reply's objects
are still being stored), so a finished reply sat there 0.25 s on average before it was pushed,
and the round waited for the slowest of its parties: about 0.37 s a round with three.

Flower has no setting for either, so this entry point runs Flower's own SuperNode command
unchanged except for those two waits: the idle wait shortened to :data:`IDLE_POLL_SECONDS` (one
cheap pull RPC to the SuperLink per interval while idle), the reply wait to
:data:`REPLY_POLL_SECONDS` (a local lookup, no RPC). Every other sleep of the module is left as
it is.

Usage is ``flower-supernode``'s: ``python -m client.supernode --superlink HOST:PORT ...``.
"""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

from flwr.supernode import start_client_internal
from flwr.supernode.cli import flower_supernode

from client.object_pulls import shorten_object_pull_backoff

__all__ = [
    "FLOWER_IDLE_SECONDS",
    "FLOWER_REPLY_SECONDS",
    "IDLE_POLL_SECONDS",
    "REPLY_POLL_SECONDS",
    "main",
    "patched_time",
]

#: Flower's idle wait between two pulls that found no message (seconds).
FLOWER_IDLE_SECONDS = 3
#: Ours.
IDLE_POLL_SECONDS = 0.2
#: Flower's wait between two looks at its node state for the ClientApp's reply (seconds).
FLOWER_REPLY_SECONDS = 0.5
#: Ours.
REPLY_POLL_SECONDS = 0.02


def patched_time() -> SimpleNamespace:
    """A stand-in for the ``time`` module whose ``sleep`` shortens only Flower's idle and reply waits."""
    shortened = {FLOWER_IDLE_SECONDS: IDLE_POLL_SECONDS, FLOWER_REPLY_SECONDS: REPLY_POLL_SECONDS}

    def sleep(seconds: float) -> None:
        time.sleep(shortened.get(seconds, seconds))

    names = {name: getattr(time, name) for name in dir(time) if not name.startswith("__")}
    return SimpleNamespace(**{**names, "sleep": sleep})


def main() -> int:
    """Run Flower's ``flower-supernode`` with the short idle poll; returns its exit status."""
    if getattr(start_client_internal, "time", None) is not time:
        # a Flower whose pull loop no longer uses the module this way: run it as it is
        print("[simskip-client] note: Flower's SuperNode loop changed; keeping its own idle poll", file=sys.stderr)
    else:
        start_client_internal.time = patched_time()

    shorten_object_pull_backoff()
    sys.argv[0] = "flower-supernode"
    return flower_supernode() or 0


if __name__ == "__main__":
    sys.exit(main())
