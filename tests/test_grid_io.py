"""The exchange loop of :mod:`server.grid_io`: push once, pull on a short growing schedule."""

from __future__ import annotations

import uuid

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from server.grid_io import TTL_SLACK, PollSchedule, expire_with_exchange, send_and_receive

pytestmark = pytest.mark.usefixtures("task_identity")


class Clock:
    """A fake clock that only moves when the loop sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class PushPullGrid:
    """``push_messages`` / ``pull_messages`` with each reply ready at a given fake time."""

    def __init__(self, clock: Clock, ready_at: dict[int, float]) -> None:
        self.clock, self.ready_at = clock, ready_at
        self.inbox: dict[str, Message] = {}
        self.pulls = 0

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.inbox[message.metadata.message_id] = message
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        out = []
        for message_id in list(message_ids):
            message = self.inbox.get(message_id)
            if message is not None and self.clock.now >= self.ready_at[message.metadata.dst_node_id]:
                out.append(
                    Message(RecordDict({"c": ConfigRecord({"node": message.metadata.dst_node_id})}), reply_to=message)
                )
                del self.inbox[message_id]
        return out

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - must not be used
        raise AssertionError("the push/pull path must be used when the grid has it")


def _messages(nodes):
    return [
        Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=node, message_type="train") for node in nodes
    ]


def test_replies_are_collected_as_soon_as_the_schedule_reaches_them():
    clock = Clock()
    grid = PushPullGrid(clock, {1: 0.0, 2: 0.4, 3: 1.3})
    poll = PollSchedule(first_interval=0.01, growth=2.0, max_interval=0.25)
    replies = send_and_receive(grid, _messages([1, 2, 3]), timeout=30, poll=poll, sleep=clock.sleep, clock=clock)
    assert sorted(r.content.config_records["c"]["node"] for r in replies) == [1, 2, 3]
    assert max(clock.sleeps) <= 0.25  # never the fixed 3 s
    assert 1.3 <= clock.now < 1.3 + 0.25  # the last reply is noticed within one max interval
    assert clock.sleeps[:3] == [0.01, 0.02, 0.04]


def test_a_missing_reply_ends_the_exchange_at_the_timeout_with_the_others():
    clock = Clock()
    grid = PushPullGrid(clock, {1: 0.0, 2: float("inf")})
    replies = send_and_receive(grid, _messages([1, 2]), timeout=2.0, sleep=clock.sleep, clock=clock)
    assert [r.content.config_records["c"]["node"] for r in replies] == [1]
    assert clock.now == pytest.approx(2.0)  # the last wait is cut to the deadline


def test_pushed_messages_expire_with_the_exchange_not_after_flowers_12_hours():
    clock = Clock()
    grid = PushPullGrid(clock, {1: 0.0, 2: 0.0})
    messages = _messages([1, 2])
    assert all(m.metadata.ttl == 12 * 3600 for m in messages)  # Flower's default
    send_and_receive(grid, messages, timeout=23.0, sleep=clock.sleep, clock=clock)
    assert [m.metadata.ttl for m in grid.inbox.values()] == [] and all(
        23.0 + TTL_SLACK <= m.metadata.ttl < 24.0 + TTL_SLACK for m in messages
    )
    old = _messages([3])
    created = old[0].metadata.created_at
    expire_with_exchange(old, 10.0, now=lambda: created + 5.0)  # five seconds old at the push
    assert old[0].metadata.ttl == pytest.approx(15.0 + TTL_SLACK)
    untimed = _messages([4])
    send_and_receive(PushPullGrid(clock, {4: 0.0}), untimed, timeout=None, sleep=clock.sleep, clock=clock)
    assert untimed[0].metadata.ttl == 12 * 3600  # no time-out: Flower's TTL is left as it is


def test_all_replies_at_once_need_one_pull_and_no_sleep():
    clock = Clock()
    grid = PushPullGrid(clock, {1: 0.0, 2: 0.0})
    replies = send_and_receive(grid, _messages([1, 2]), timeout=5, sleep=clock.sleep, clock=clock)
    assert len(replies) == 2 and grid.pulls == 1 and clock.sleeps == []


def test_a_grid_without_push_and_pull_is_used_through_its_send_and_receive():
    class Plain:
        def send_and_receive(self, messages, *, timeout=None):
            return [Message(RecordDict(), reply_to=m) for m in messages]

    assert len(send_and_receive(Plain(), _messages([1, 2]), timeout=1)) == 2


@pytest.mark.parametrize("kwargs", [{"first_interval": 0}, {"growth": 0.5}, {"first_interval": 1, "max_interval": 0.5}])
def test_a_bad_schedule_is_refused(kwargs):
    with pytest.raises(ValueError, match="poll schedule"):
        PollSchedule(**kwargs)


def test_the_console_drops_third_party_noise_and_quiet_keeps_problems_and_summaries():
    from client.console import console_line

    noise = [
        "\x1b[93mWARNING \x1b[0m:   Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.\n",
        (
            "/x/ray/_private/worker.py:2051: FutureWarning: Tip: In future versions of Ray, Ray will no longer "
            "override accelerator visible devices env var if num_gpus=0\n"
        ),
        "  warnings.warn(\n",
        "\x1b[36m(ClientAppActor pid=2754)\x1b[0m   warnings.warn(\n",
        (
            "\x1b[36m(ClientAppActor pid=420)\x1b[0m \x1b[93mWARNING \x1b[0m:   Manually terminating "
            "ClientAppActor\x1b[32m [repeated 2x across cluster]\x1b[0m\n"
        ),
    ]
    assert not any(console_line(line) for line in noise)
    assert not any(console_line(line, quiet=True) for line in noise)
    progress = "\x1b[92mINFO \x1b[0m:      [round 3/10] 1.2s loss 0:2.1\n"
    problem = "\x1b[93mWARNING \x1b[0m:   parties ['1'] did not acknowledge the end of the run\n"
    assert console_line(progress) and console_line(problem)
    assert not console_line(progress, quiet=True) and console_line(problem, quiet=True)
    assert console_line("\x1b[92mINFO \x1b[0m:      best round 12; test overall mrr=0.71\n", quiet=True)


def test_progress_is_reported_after_each_pull_and_estimates_the_time_left(monkeypatch):
    import server.membership as membership

    clock = Clock()
    grid = PushPullGrid(clock, {1: 0.0, 2: 0.4, 3: 30.0})
    polls = []
    send_and_receive(
        grid,
        _messages([1, 2, 3]),
        timeout=60,
        sleep=clock.sleep,
        clock=clock,
        on_poll=lambda done, total, elapsed: polls.append((done, total)),
    )
    assert polls[0] == (1, 3) and polls[-1] == (3, 3) and (2, 3) in polls

    lines = []
    monkeypatch.setattr(membership, "log", lambda level, fmt, *args: lines.append(fmt % args))
    line = membership._ProgressLine("downstream")
    line(0, 3, 1.0)  # nothing new, not yet 15 s: silent
    line(1, 3, 10.0)  # a reply: a line with an estimate
    line(1, 3, 20.0)  # nothing new for 10 s: silent
    line(1, 3, 26.0)  # 16 s of silence: a line
    line(3, 3, 30.0)
    assert lines == [
        "downstream: 1 of 3 clients done after 10 s, about 20 s left",
        "downstream: 1 of 3 clients done after 26 s, about 52 s left",
        "downstream: 3 of 3 clients done after 30 s",
    ]


def test_object_pulls_retry_after_the_short_backoff(monkeypatch) -> None:
    from flwr.supercore.inflatable import inflatable_utils

    from client.object_pulls import OBJECT_PULL_BACKOFF, OBJECT_PULL_MAX_SECONDS, shorten_object_pull_backoff

    functions = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    for function in functions:
        monkeypatch.setattr(function, "__kwdefaults__", dict(function.__kwdefaults__))
    assert shorten_object_pull_backoff() is True
    # both: the ClientApp process pulls through pull_and_inflate_object_from_tree, which passes
    # its own defaults on to pull_objects
    for function in functions:
        defaults = function.__kwdefaults__
        assert (defaults["initial_backoff"], defaults["backoff_cap"]) == OBJECT_PULL_BACKOFF
        assert defaults["max_time"] == OBJECT_PULL_MAX_SECONDS and defaults["max_tries_per_object"] is None
    # and the pull still works: an object unavailable twice is fetched on the third try
    tries = {"n": 0}

    def pull(object_id: str) -> bytes:
        tries["n"] += 1
        if tries["n"] < 3:
            raise inflatable_utils.ObjectUnavailableError(object_id)
        return b"content"

    assert inflatable_utils.pull_objects(["a"], pull) == {"a": b"content"} and tries["n"] == 3


def test_a_flower_without_the_backoff_defaults_is_left_alone(monkeypatch) -> None:
    from flwr.supercore.inflatable import inflatable_utils

    from client.object_pulls import shorten_object_pull_backoff

    monkeypatch.setattr(inflatable_utils, "pull_objects", lambda object_ids, pull_object_fn: {})
    assert shorten_object_pull_backoff() is False
