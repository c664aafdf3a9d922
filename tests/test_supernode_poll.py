"""The SuperNode entry point shortens only Flower's 3 s idle wait and 0.5 s reply wait (client/supernode.py)."""

from __future__ import annotations

import time

from client import supernode


def test_only_the_idle_and_reply_waits_are_shortened(monkeypatch):
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    shim = supernode.patched_time()
    shim.sleep(supernode.FLOWER_IDLE_SECONDS)
    shim.sleep(supernode.FLOWER_REPLY_SECONDS)
    shim.sleep(1.0)
    shim.sleep(0.25)
    assert waits == [supernode.IDLE_POLL_SECONDS, supernode.REPLY_POLL_SECONDS, 1.0, 0.25]
    assert shim.time is time.time and shim.monotonic is time.monotonic


def test_flowers_pull_loop_still_waits_through_its_time_module():
    """If a Flower upgrade stops calling ``time.sleep(3)`` in this module, the shim is a no-op: fail loudly here."""
    import inspect

    from flwr.supernode import start_client_internal

    assert start_client_internal.time is time
    source = inspect.getsource(start_client_internal)
    assert f"time.sleep({supernode.FLOWER_IDLE_SECONDS})" in source
    # the reply wait of _push_messages (and of its object-content loop)
    assert source.count(f"time.sleep({supernode.FLOWER_REPLY_SECONDS})") == 2
