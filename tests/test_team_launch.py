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

ARGUMENTS = ["B", "T", "chunk", "threads", "affinities", "fail_rank", "team_rank",
             "team_size", "team_counter", "team_pool", "team_shared"]
STAND_IN = f'''
import numpy as np
from numba import get_thread_id, njit, prange
from rshop_ir.kernels.cpu.team_launch import get_affinity, pin_member, unpin_member
from rshop_ir.kernels.cpu.team_sync import team_leave, team_wait


@njit(cache=True, nogil=True)
def run({", ".join(ARGUMENTS)}):
    threads[team_rank] = get_thread_id()
    get_affinity(affinities[team_rank])
    if team_rank == fail_rank:
        raise ValueError("this member fails")
    team_wait(team_counter, team_size)
    team_leave(team_counter)
    return (threads, B + team_rank)


'''


def _module():
    source = STAND_IN + "\n".join(team_launch.launcher_source(ARGUMENTS)) + "\n"
    return load_module(source, {})


def _launch(fail_rank=-1):
    """team.launch_natively over the stand-in: (rank 0's results or None, the thread
    and the affinity each rank ran with)."""
    threads = np.full(2, -1, np.int64)
    affinities = np.zeros((2, team_launch.MASK_WORDS), np.uint64)
    kernel = SimpleNamespace(team_dtype="float32", team_columns=64,
                             team_shared_row_bytes=0, team_shared_buffers=0)
    module, leading = _module(), (7, 1, 1, threads, affinities, fail_rank)
    results = team.launch_natively(
        lambda *members: team_launch.compile_launcher(module, leading, members)(
            *leading, *members),
        team.TeamBuffers(kernel, 2), 1, 1)
    return results, threads, affinities


def _needs_native_launch():
    if not team_launch.native_launch_usable(2):
        pytest.skip(f"the native launcher needs Linux, Numba's OpenMP layer and 2+ "
                    f"threads (here: {numba.get_num_threads()} threads)")


def test_members_run_at_once_on_threads_and_cores_of_their_own():
    _needs_native_launch()
    before = os.sched_getaffinity(0)
    cores = member_cores(2)
    results, threads, affinities = _launch()
    # not None: nobody waited for a partner in vain; rank 0's results only
    assert results is not None and results[1] == 7
    assert threads[0] != threads[1] and min(threads) >= 0
    for rank, core in enumerate(cores):              # pinned to one core each ...
        expected = np.zeros(team_launch.MASK_WORDS, np.uint64)
        expected[core // 64] = np.uint64(1) << np.uint64(core % 64)
        np.testing.assert_array_equal(affinities[rank], expected)
    assert os.sched_getaffinity(0) == before         # ... for the call only


def test_unpinned_members_keep_their_affinity(monkeypatch):
    _needs_native_launch()
    monkeypatch.setattr(team, "member_cores", lambda members: None)
    results, _, affinities = _launch()
    assert results is not None
    allowed = os.sched_getaffinity(0)
    for rank in range(2):
        bits = [word >> np.uint64(bit) & np.uint64(1) for word in affinities[rank]
                for bit in range(64)]
        assert {core for core, bit in enumerate(bits) if bit} == allowed


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("fail_rank", [0, 1])
def test_a_failing_member_frees_the_others_and_yields_no_results(fail_rank):
    _needs_native_launch()
    results, threads, _ = _launch(fail_rank=fail_rank)
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
