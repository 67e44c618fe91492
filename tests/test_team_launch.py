"""The native launcher of a team (kernels/cpu/team_launch.py).

`launch_team` is generated source: here it runs a stand-in `run` that records which
thread and cores each rank ran on and meets the other members at a barrier, or
raises in one member. If the
parallel loop ran its ranks one after the other, rank 0 would wait at the barrier until
it gave up (`ABANDON_LIMIT`) and set the abort flag: each test asserts it stayed clear.
A failing member must not hang the others, and the call must yield no results; the
runtime then gives the numbers of one thread.
"""

import os
from types import SimpleNamespace

import numba
import numpy as np
import pytest

import rshop_ir
from rshop_ir.bound import BoundProgram
from rshop_ir.interpret import interpret
from rshop_ir.kernels.cpu import runtime, team, team_launch
from rshop_ir.kernels.cpu.cache import load_module
from rshop_ir.kernels.cpu.pinning import member_cores
from rshop_ir.kernels.cpu.team_sync import ABORT
from test_kernel_parallel import _assert_close, _lstm

pytestmark = pytest.mark.usefixtures("kernel_cache")  # a fresh kernel disk cache

ARGUMENTS = ["B", "T", "chunk", "threads", "affinities", "ran_on", "fail_rank",
             "team_rank", "team_size", "team_counter", "team_pool", "team_shared"]
STAND_IN = f'''
import numpy as np
from numba import get_thread_id, njit, prange
from rshop_ir.kernels.cpu.team_launch import (current_core, get_affinity, pin_member,
                                              unpin_member)
from rshop_ir.kernels.cpu.team_sync import team_leave, team_wait


@njit(cache=True, nogil=True)
def run({", ".join(ARGUMENTS)}):
    threads[team_rank] = get_thread_id()
    get_affinity(affinities[team_rank])
    ran_on[team_rank] = current_core()
    if team_rank == fail_rank:
        raise ValueError("this member fails")
    team_wait(team_counter, team_size, team_rank)
    team_leave(team_counter)
    return (threads, B + team_rank)


'''


def _module():
    source = STAND_IN + "\n".join(team_launch.launcher_source(ARGUMENTS)) + "\n"
    return load_module(source, {})


def _launch(fail_rank=-1):
    """team.launch_natively over the stand-in: (rank 0's results or None, the thread,
    the affinity and the core each rank ran with)."""
    threads, ran_on = np.full(2, -1, np.int64), np.full(2, -1, np.int64)
    affinities = np.zeros((2, team_launch.MASK_WORDS), np.uint64)
    kernel = SimpleNamespace(team_dtype="float32", team_columns=64,
                             team_shared_row_bytes=0, team_shared_buffers=0,
                             team_run_row_bytes=0, team_run_buffers=0)
    module, leading = _module(), (7, 1, 1, threads, affinities, ran_on, fail_rank)
    results = team.launch_natively(
        lambda *members: team_launch.compile_launcher(module, leading, members)(
            *leading, *members),
        team.TeamBuffers(kernel, 2), 1, 1)
    return results, threads, affinities, ran_on


def _cores_of(mask) -> set:
    return {64 * word + bit for word, value in enumerate(mask) for bit in range(64)
            if int(value) >> bit & 1}


def _needs_native_launch():
    if not team_launch.native_launch_usable(2):
        pytest.skip(f"the native launcher needs Linux, Numba's OpenMP layer and 2+ "
                    f"threads (here: {numba.get_num_threads()} threads)")


def test_members_run_at_once_on_threads_and_cores_of_their_own(monkeypatch):
    _needs_native_launch()
    before = os.sched_getaffinity(0)
    given = []       # the cores the call gave its members
    monkeypatch.setattr(team, "member_cores",
                        lambda members: given.append(member_cores(members)) or given[0])
    results, threads, affinities, ran_on = _launch()
    cores = given[0]
    if cores is None:
        pytest.skip("fewer than 2 cores may be used here: nothing to pin to")
    # not None: nobody waited for a partner in vain; rank 0's results only
    assert results is not None and results[1] == 7
    assert threads[0] != threads[1] and min(threads) >= 0
    # each rank on its core: there already (its affinity left as it was), or pinned
    # there for the call
    assert list(ran_on) == cores
    for rank, core in enumerate(cores):
        assert _cores_of(affinities[rank]) in ({core}, before)
    assert os.sched_getaffinity(0) == before         # the caller's, after the call


def test_a_member_off_its_core_is_pinned_there_for_the_call(monkeypatch):
    """The caller's thread is given the other core: it moves there for the call (its
    affinity that core alone) and gets its own affinity back afterwards."""
    _needs_native_launch()
    before = os.sched_getaffinity(0)
    cores = member_cores(2)
    if cores is None:
        pytest.skip("fewer than 2 cores may be used here: nothing to pin to")
    swapped = cores[::-1]
    monkeypatch.setattr(team, "member_cores", lambda members: swapped)
    results, _, affinities, ran_on = _launch()
    assert results is not None
    assert ran_on[0] == swapped[0] and _cores_of(affinities[0]) == {swapped[0]}
    assert os.sched_getaffinity(0) == before


def test_unpinned_members_keep_their_affinity(monkeypatch):
    _needs_native_launch()
    monkeypatch.setattr(team, "member_cores", lambda members: None)
    results, _, affinities, _ = _launch()
    assert results is not None
    allowed = os.sched_getaffinity(0)
    for rank in range(2):
        assert _cores_of(affinities[rank]) == allowed


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("fail_rank", [0, 1])
def test_a_failing_member_frees_the_others_and_yields_no_results(fail_rank):
    _needs_native_launch()
    results, threads, _, _ = _launch(fail_rank=fail_rank)
    assert results is None
    assert min(threads) >= 0                          # both ranks ran, neither hung


def test_the_launcher_needs_a_thread_per_member():
    _needs_native_launch()
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert not team_launch.native_launch_usable(2)
    finally:
        numba.set_num_threads(threads)
    assert not team_launch.native_launch_usable(threads + 1)


def test_a_failed_team_call_runs_again_on_one_thread(monkeypatch):
    """Whichever launcher ran the team, a call whose team failed (None) is answered by
    one thread, with the interpreter's numbers."""
    program, weights, inputs = _lstm()
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    expected = interpret(program, *inputs, weights=weights)
    calls = []

    def failed(*arguments):
        calls.append(arguments)
        return None

    monkeypatch.setattr(runtime, "launch_natively", failed)
    monkeypatch.setattr(runtime, "run_team", failed)
    _assert_close(compiled(*inputs, team_size=2), expected)
    assert len(calls) == 1


def test_python_members_give_up_like_native_ones(monkeypatch):
    """Without the native launcher the Python member threads run the team: the same
    numbers as one thread, and None (a run on one thread) after an abort without a
    failure."""
    program, weights, inputs = _lstm()
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    single = compiled(*inputs, team_size=1)
    monkeypatch.setattr(runtime, "native_launch_usable", lambda members: False)
    for got, want in zip(compiled(*inputs, team_size=2), single):
        np.testing.assert_array_equal(got, want)
    buffers = team.TeamBuffers(compiled._team_kernel()[0], 2)

    def member(rank, size, counter, pool, shared):
        counter[ABORT] = 1       # as team_wait does when it gives up
        return [rank]

    assert team.run_team(member, buffers, 1, 1) is None
