"""The member threads of a team (kernels/cpu/team_workers.py): they poll for the next
call, then sleep, and every call posted reaches them whichever state they are in."""

import threading
import time

import numpy as np
import pytest

from rshop_ir.kernels.cpu import team_workers


def test_member_thread_runs_calls_and_hands_back_errors():
    thread = team_workers.MemberThread("test-member")
    assert [thread.submit(pow, 2, n).result(timeout=30) for n in range(5)] == \
        [1, 2, 4, 8, 16]
    failing = thread.submit(int, "not a number")
    with pytest.raises(ValueError, match="not a number"):
        failing.result(timeout=30)
    assert thread.submit(len, "still running").result(timeout=30) == 13


def test_member_thread_sleeps_after_its_polls_and_wakes_for_the_next_call(monkeypatch):
    monkeypatch.setattr(team_workers, "SPIN_POLLS", 10)
    monkeypatch.setattr(team_workers, "YIELD_POLLS", 1)
    thread = team_workers.MemberThread("test-sleeper")
    for round_number in range(20):
        assert thread.submit(lambda value=round_number: value * 3).result(timeout=30) \
            == round_number * 3
        deadline = time.monotonic() + 10
        while not thread._mailbox[team_workers.SLEEPING]:   # it gave up polling
            assert time.monotonic() < deadline
            time.sleep(0.001)
    # and calls posted back to back, while it may be polling or going to sleep
    assert [thread.submit(abs, -n).result(timeout=30) for n in range(200)] == \
        list(range(200))


def test_wait_for_change_sees_a_post_and_gives_up_without_one():
    mailbox = np.zeros(16, np.int64)
    assert not team_workers.wait_for_change(mailbox, team_workers.POSTED, 0, 1000, 10)
    mailbox[team_workers.POSTED] = 1
    assert team_workers.wait_for_change(mailbox, team_workers.POSTED, 0, 1000, 10)
    assert not team_workers.wait_for_change(mailbox, team_workers.POSTED, 1, 1000, 10)


def test_concurrent_callers_get_member_threads_of_their_own():
    first = team_workers.acquire(2)
    second = team_workers.acquire(2)
    assert len(first) == len(second) == 2
    assert not {id(thread) for thread in first} & {id(thread) for thread in second}
    team_workers.release(first)
    team_workers.release(second)
    idle = list(team_workers._IDLE)
    again = team_workers.acquire(2)
    assert any(again is group for group in idle)    # an idle group is lent again
    team_workers.release(again)


def test_member_threads_are_daemons():
    group = team_workers.acquire(1)
    try:
        assert group[0]._thread.daemon and group[0]._thread.is_alive()
        assert group[0]._thread in threading.enumerate()
    finally:
        team_workers.release(group)
