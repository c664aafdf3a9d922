"""The party's own progress file and end-of-run notice (client.party_log, simskip-client's follower)."""

from __future__ import annotations

import json
import time

from client.cli import _follow
from client.party_log import FINISHED_FILE, PARTY_LOG, note, read_finished, write_finished


class FakeSuperNode:
    """``poll()`` returns ``None`` until ``exit_after`` polls, then ``code``."""

    def __init__(self, exit_after: int | None = None, code: int = 0, on_first_poll=None) -> None:
        self.polls, self.exit_after, self.code, self.on_first_poll = 0, exit_after, code, on_first_poll

    def poll(self):
        self.polls += 1
        if self.polls == 1 and self.on_first_poll is not None:
            self.on_first_poll()  # what the ClientApp writes while the party runs
        return self.code if self.exit_after is not None and self.polls > self.exit_after else None


def test_lines_append_and_nothing_is_written_without_an_output_folder(tmp_path):
    note(tmp_path, "round 1: trained")
    note(tmp_path, "round 2: trained")
    note(None, "nowhere")
    lines = (tmp_path / PARTY_LOG).read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["round 1: trained", "round 2: trained"]


def test_a_finish_record_counts_only_when_newer_than_the_launch(tmp_path):
    assert read_finished(tmp_path, 0.0) is None
    write_finished(tmp_path, {"status": "completed"})
    record = read_finished(tmp_path, 0.0)
    assert record["status"] == "completed"
    assert read_finished(tmp_path, record["finished_at"] + 1) is None  # an earlier run's notice
    (tmp_path / FINISHED_FILE).write_text("{not json")
    assert read_finished(tmp_path, 0.0) is None


def test_the_follower_prints_new_lines_and_returns_when_the_run_completed(tmp_path, capsys):
    note(tmp_path, "an earlier run's line")
    since = time.time()

    def run_happens():
        note(tmp_path, "round 1: trained 3 epochs")
        write_finished(tmp_path, {"status": "completed", "run-dir": "runs/x"})

    supernode = FakeSuperNode(on_first_poll=run_happens)
    assert _follow(supernode, tmp_path, since=since, stay=False, quiet=False, interval=0.0) is None
    out = capsys.readouterr().out
    assert "round 1: trained 3 epochs" in out and "earlier run" not in out
    assert "the server's run finished (runs/x)" in out


def test_a_failed_run_or_stay_keeps_the_party_up_until_its_supernode_ends(tmp_path, capsys):
    since = time.time()
    write_finished(tmp_path, {"status": "failed", "reason": "FederationError: no client update survived"})
    assert (
        _follow(FakeSuperNode(exit_after=3, code=7), tmp_path, since=since, stay=False, quiet=True, interval=0.0) == 7
    )
    assert "staying up" in capsys.readouterr().out
    write_finished(tmp_path, {"status": "completed"})
    assert _follow(FakeSuperNode(exit_after=3, code=0), tmp_path, since=since, stay=True, quiet=True, interval=0.0) == 0
    record = json.loads((tmp_path / FINISHED_FILE).read_text())
    assert record["status"] == "completed"
