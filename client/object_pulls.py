"""Flower's object pulls with a short retry: one patch every process of a federation applies.

Flower 1.42 moves each message's content as objects that every hop pulls, retrying an object not
stored yet after 1 s (growing to 10 s). The SuperNode (``client/supernode.py``), the warm starter's
ClientApp processes (``client/warm_start.py``) and the ServerApp (``server/server_app.py``) call
:func:`shorten_object_pull_backoff` once at start. It lives here, in the client package, because
the server side may import the client side and not the other way round.
"""

from __future__ import annotations

__all__ = ["OBJECT_PULL_BACKOFF", "OBJECT_PULL_MAX_SECONDS", "shorten_object_pull_backoff"]

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
        from flwr.supercore.inflatable import inflatable_utils  # heavy (flwr): simskip-client imports this module
    except ImportError:
        return False
    functions = [
        getattr(inflatable_utils, name, None) for name in ("pull_objects", "pull_and_inflate_object_from_tree")
    ]
    keys = {"initial_backoff", "backoff_cap", "max_time", "max_tries_per_object"}
    all_defaults = [getattr(function, "__kwdefaults__", None) or {} for function in functions]
    if not all(keys <= defaults.keys() for defaults in all_defaults):
        return False
    for defaults in all_defaults:
        defaults["initial_backoff"], defaults["backoff_cap"] = OBJECT_PULL_BACKOFF
        defaults["max_time"], defaults["max_tries_per_object"] = OBJECT_PULL_MAX_SECONDS, None
    return True
