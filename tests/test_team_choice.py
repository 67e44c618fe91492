"""kernels/cpu/team_choice.py: the automatic team is kept only while its calls are
faster than one thread's, judged by the calls' own times (fed here by a fake clock)."""

import math

import numpy as np
import pytest

import rshop_ir
from rshop_ir import examples
from rshop_ir.bound import BoundProgram
from rshop_ir.kernels.cpu import background_compile, runtime
from rshop_ir.kernels.cpu.team_choice import (IDLE_S, PROBE_CALLS, PROBE_EVERY,
                                              PROBE_MAX_CALLS, PROBE_SOON, WARM_S, WINDOW,
                                              TeamChoice)


class FakeLaunches:
    """A clock that advances by `cost[members]` at each launch it runs."""

    def __init__(self, cost):
        self.cost = dict(cost)
        self.now = 0.0
        self.members = []

    def clock(self):
        return self.now

    def launch(self, members):
        self.members.append(members)
        self.now += self.cost[members]
        return members


def run_calls(choice, launches, count, key=("B", "T")):
    start = len(launches.members)
    for _ in range(count):
        choice.call(key, 2, launches.launch)
    return launches.members[start:]


TEAM, ALONE = 3.3e-4, 4.5e-4    # seconds a call, as an attention decoder at S2


def warm_calls(cost):
    """Calls of `cost` seconds that start within WARM_S of the first."""
    return math.ceil(WARM_S / cost)


def probe_positions(members, alone=1):
    """1-based positions of the calls that ran on `alone` members."""
    return [index for index, used in enumerate(members, start=1) if used == alone]


def test_a_faster_team_is_kept_and_one_thread_probed():
    """The 1st counted call and every PROBE_EVERY-th after it start a probe: calls on
    one thread until PROBE_CALLS are timed, those within WARM_S of its first not."""
    choice, launches = TeamChoice(), FakeLaunches({2: TEAM, 1: ALONE})
    choice.clock = launches.clock
    members = run_calls(choice, launches, 2 * PROBE_EVERY + 40)
    probe = warm_calls(ALONE) + PROBE_CALLS          # calls a probe runs
    # a probe's calls after its first are not counted
    starts = [1, PROBE_EVERY + 1 + (probe - 1), 2 * PROBE_EVERY + 1 + 2 * (probe - 1)]
    assert probe_positions(members) == [start + offset for start in starts
                                        for offset in range(probe)]
    assert choice.medians(("B", "T")) == pytest.approx({2: TEAM, 1: ALONE})


def test_a_team_that_slows_down_gives_way_to_one_thread_and_comes_back():
    choice, launches = TeamChoice(), FakeLaunches({2: TEAM, 1: ALONE})
    choice.clock = launches.clock
    run_calls(choice, launches, 40)                     # both choices timed
    launches.cost[2] = 2 * TEAM                         # the team's barriers got slow
    members = run_calls(choice, launches, PROBE_EVERY)
    # once the median of the last WINDOW team times is the slower: one thread, but
    # for probes of the team (still slow) PROBE_SOON counted calls later, then after
    # twice as many calls each time, up to PROBE_EVERY
    switch = members.index(1)
    assert switch <= WINDOW // 2 + 1 and members[:switch] == [2] * switch
    probe = warm_calls(2 * TEAM) + PROBE_CALLS          # calls a probe runs
    expected, start, interval = [], PROBE_SOON, PROBE_SOON
    while start + probe <= len(members) - switch:
        expected += range(start, start + probe)
        interval = min(2 * interval, PROBE_EVERY)
        start += probe - 1 + interval       # the probe's first call is the counted one
    assert probe_positions(members[switch:], alone=2) == expected
    assert len(expected) == 4 * probe and members[-1] == 1   # 16, 32, 64, 128 calls apart
    launches.cost[2] = TEAM                             # fast again
    members = run_calls(choice, launches, PROBE_EVERY + 40)
    back = members.index(2)        # the next probe sees it: the team from then on,
    after = members[back:]         # but for its own probes of one thread
    assert back < PROBE_EVERY and after[:40] == [2] * 40
    ones = probe_positions(after)     # then one thread only in its next probe's calls
    assert not ones or (ones[0] > PROBE_EVERY and len(ones) <= warm_calls(ALONE) + PROBE_CALLS
                        and ones == list(range(ones[0], ones[0] + len(ones))))


def test_outliers_do_not_decide_and_shapes_are_apart():
    """First calls that compiled (1 s here) are not timed, nor does one team call
    slowed once (preempted) hand the calls to one thread; each call shape keeps its
    own times; a proposal of one thread is never second-guessed."""
    choice, launches = TeamChoice(), FakeLaunches({2: 1.0, 1: 1.0})
    choice.clock = launches.clock
    # the first call runs on one thread: a program called once compiles no team kernel
    assert run_calls(choice, launches, 1, key="a") == [1]
    launches.cost[1] = ALONE
    assert run_calls(choice, launches, PROBE_CALLS + 1, key="a") == [1] * PROBE_CALLS + [2]
    launches.cost[2] = TEAM                 # the team's first call compiled its kernel
    assert run_calls(choice, launches, 20, key="a") == [2] * 20
    launches.cost[2] = 10 * TEAM
    assert run_calls(choice, launches, 1, key="a") == [2]
    launches.cost[2] = TEAM
    assert run_calls(choice, launches, 8, key="a") == [2] * 8
    assert choice.medians("a") == pytest.approx({2: TEAM, 1: ALONE})
    assert choice.medians("b") == {}
    assert choice.call("c", 1, launches.launch) == 1 and choice.medians("c") == {}


def test_calls_after_a_pause_are_not_timed():
    """After a pause of IDLE_S or more, the calls starting within WARM_S (threads
    waking up, a lower clock; 3x slower here) are not timed: the team is kept."""
    choice, launches = TeamChoice(), FakeLaunches({2: TEAM, 1: ALONE})
    choice.clock = launches.clock
    run_calls(choice, launches, 40)
    members = []
    for _ in range(WINDOW):
        launches.now += 10 * IDLE_S
        launches.cost[2] = 3 * TEAM
        members += run_calls(choice, launches, 2)        # 1.8 ms: within WARM_S
        launches.cost[2] = TEAM
        members += run_calls(choice, launches, warm_calls(TEAM))
    assert members == [2] * (WINDOW * (2 + warm_calls(TEAM)))
    assert choice.medians(("B", "T")) == pytest.approx({2: TEAM, 1: ALONE})


def test_a_probe_of_calls_that_all_start_cold_ends():
    """Calls apart by more than IDLE_S are never timed: a probe then ends after
    PROBE_MAX_CALLS calls, and the calls go back to the proposed team."""
    choice, launches = TeamChoice(), FakeLaunches({2: TEAM, 1: ALONE})
    choice.clock = launches.clock
    members = []
    for _ in range(PROBE_MAX_CALLS + 10):
        launches.now += 10 * IDLE_S
        members += run_calls(choice, launches, 1)
    assert members == [1] * PROBE_MAX_CALLS + [2] * 10
    assert choice.medians(("B", "T")) == {}


def test_a_compiled_programs_automatic_team_follows_the_times(monkeypatch):
    """The runtime: calls that do not ask for a team size go through the choice when
    the automatic team proposes one; whichever runs, the outputs are one thread's, bit
    for bit."""
    program = examples.lstm_program(8, 64, return_sequences=True)
    weights = examples.random_weights(program, scale=0.5)
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    x = np.random.default_rng(1).standard_normal((1, 40, 8)).astype(np.float32)
    alone = compiled(x, team_size=1)
    monkeypatch.setattr(runtime, "auto_team_size", lambda kernel, batch, steps: 2)
    monkeypatch.setattr(background_compile, "BACKGROUND", False)   # the team compiles in the call
    launches = FakeLaunches({2: 1.0, 1: 2.0})
    original = compiled._launch

    def timed_launch(arrays, batch, steps, chunk_steps, team_size=None, chosen=False):
        if team_size is not None:
            launches.launch(team_size)
        return original(arrays, batch, steps, chunk_steps, team_size, chosen)

    monkeypatch.setattr(compiled, "_launch", timed_launch)
    compiled._team_choice.clock = launches.clock
    for call in range(24):
        if call == 12:
            launches.cost[2] = 3.0
        result = compiled(x)
        for got, expected in zip(result, alone):
            np.testing.assert_array_equal(got, expected)
    probe = 1 + PROBE_CALLS           # its first call is not timed
    assert launches.members[:12] == [1] * probe + [2] * (12 - probe)
    switch = launches.members.index(1, 12)      # the team got slow at call 12
    assert switch - 12 <= WINDOW and launches.members[switch:] == [1] * (24 - switch)
