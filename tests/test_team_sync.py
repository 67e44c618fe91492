"""The step barrier of a team (kernels/cpu/team_sync.py), run by real threads.

Each member writes the round it is in, then waits at the barrier, then reads every
member's round: had one member passed before the others arrived, it would read a
round behind its own. The members' counts of barriers reached are their phases, the
same on every member after each barrier.
"""

import threading

import numpy as np
import pytest
from numba import njit

from rshop_ir.kernels.cpu.team_sync import (ABORT, COUNTER_SIZE, PHASE_STRIDE, phase_slot,
                                            team_arrive, team_await, team_wait)


@njit(nogil=True)
def _member(counter, size, rank, rounds, seen, early):
    for round_index in range(1, rounds + 1):
        seen[rank] = round_index
        if not team_wait(counter, size, rank):
            return
        for member in range(size):
            if seen[member] < round_index:
                early[rank] += 1


@njit(nogil=True)
def _member_working_while_waiting(counter, size, rank, rounds, seen, early):
    """`_member` with the barrier split: work of its own between arriving and waiting
    (as a deferred product, team_columns.ColumnOwnership.defer)."""
    work = np.zeros(64)
    for round_index in range(1, rounds + 1):
        seen[rank] = round_index
        team_arrive(counter, rank)
        for index in range(64):
            work[index] += index * round_index
        if not team_await(counter, size, rank):
            return
        for member in range(size):
            if seen[member] < round_index:
                early[rank] += 1


def _run_team(size: int, rounds: int, counter=None, member=_member):
    counter = np.zeros(COUNTER_SIZE, np.int64) if counter is None else counter
    seen, early = np.zeros(size, np.int64), np.zeros(size, np.int64)
    member(np.zeros(COUNTER_SIZE, np.int64), 1, 0, 1, np.zeros(1, np.int64),
           np.zeros(1, np.int64))                   # compiled before the threads start
    threads = [threading.Thread(target=member, args=(counter, size, rank, rounds, seen,
                                                     early))
               for rank in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return counter, seen, early


@pytest.mark.parametrize("member", [_member, _member_working_while_waiting])
def test_no_member_passes_before_all_arrived(member):
    for size in (2, 3):
        counter, seen, early = _run_team(size, 2000, member=member)
        assert early.tolist() == [0] * size
        assert seen.tolist() == [2000] * size
        assert [counter[phase_slot(rank)] for rank in range(size)] == [2000] * size
        assert counter[ABORT] == 0


def test_each_member_counts_on_a_cache_line_of_its_own():
    slots = [phase_slot(rank) for rank in range(16)]
    assert PHASE_STRIDE * 8 >= 64
    assert all(b - a == PHASE_STRIDE for a, b in zip(slots, slots[1:]))
    assert slots[-1] < COUNTER_SIZE and min(slots) > ABORT


def test_an_abort_releases_a_member_waiting_for_a_partner_that_never_comes():
    counter = np.zeros(COUNTER_SIZE, np.int64)
    seen, early = np.zeros(2, np.int64), np.zeros(2, np.int64)
    waiting = threading.Thread(target=_member, args=(counter, 2, 0, 5, seen, early))
    waiting.start()
    waiting.join(timeout=0.5)
    assert waiting.is_alive() and seen[0] == 1      # held at its first barrier ...
    counter[ABORT] = 1                              # ... until a failed member says so
    waiting.join(timeout=60)
    assert not waiting.is_alive() and seen[0] == 1 and early[0] == 0
