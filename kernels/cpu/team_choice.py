"""Keeping the automatic team only while it is faster, judged by the calls' own times.

`team.auto_team_size` proposes a team of 2 from what it can know before a call: the
call's shape, the weights a step streams, whether other processes use the cores. What
it cannot know is how far apart this machine's cores are right now. On a virtual
machine that distance changes: on the 2-core development VM, moving a cache line from
one core to the other sometimes costs 3-4x more for seconds to minutes at a time (a
guess: the hypervisor places the virtual CPUs farther apart), and then a team's barriers make an attention
decoder at S2 take 0.57-0.83 ms a call instead of 0.33, while one thread takes 0.42
(BENCHMARKS.md run 21).

So a `TeamChoice` times the calls it decides, each call shape on its own. It runs
the calls on one choice (the team) and keeps the times of its last `WINDOW` calls.
The 1st call, and every `PROBE_EVERY`-th, starts a probe: calls run on the other
choice until `PROBE_CALLS` of them were timed (at most `PROBE_MAX_CALLS` calls), and
their times replace that choice's. It switches when the other choice's median is
smaller than the current one's by `MARGIN` or more.

The first probe comes first so that a program's first call compiles the one-thread
kernel only: a team's kernel takes several times longer to compile (an LSTM at S2
(1, 100, 128, 256), a fresh kernel cache, the 2-core Zen 4 VM: 6.7-7.8 s, against
1.3-1.9 s for one thread's; ad-hoc script, the first call and the second), and a
program called once or a few times never waits for it.

A switch away from the proposed team is often a slow spell of the machine that
passes: the team is probed again `PROBE_SOON` calls later, and while one thread stays
the faster, after twice as many calls each time, up to `PROBE_EVERY`. Probing only
every `PROBE_EVERY` calls could keep one thread for a benchmark case's whole few
hundred calls: in one harness run the attention decoder at S2 took 0.91-0.97 ms in all
seven samples, against the team's 0.57-0.59 in the next (the 2-core Zen 4 VM,
BENCHMARKS.md run 22).

Calls that start cold are not timed: those within `WARM_S` of the first call after a
change of choice, or after a pause of `IDLE_S` or more. On the development VM a core
left idle for a few milliseconds runs the next ~4 ms of calls up to 2x slower (a one
thread MGU call at S2 after the harness's 60 ms pause: 0.78, 0.46, 0.41, 0.38 ms,
then 0.31-0.33; a team call after 128 one-thread calls: 0.75, 0.59, 0.51 ms against
0.26-0.28 warm), so timing them would make the choice probed least look slower
than it is, and the calls would drift to the other. A choice getting slower shows
within a few of its calls. A team and one thread give the same numbers bit for bit
(team.py), so the choice changes only the time.
"""

from __future__ import annotations

import statistics
import threading
import time

PROBE_EVERY = 512       # calls between two probes of the other choice
PROBE_SOON = 16         # calls from leaving the proposed team to probing it again
PROBE_CALLS = 3         # calls a probe times ...
PROBE_MAX_CALLS = 32    # ... within this many calls (fewer when the calls pause)
WINDOW = 8              # times kept per choice
MARGIN = 0.05           # a switch needs the other choice 5% faster
IDLE_S = 0.001          # a pause between two calls that makes the next start cold
WARM_S = 0.004          # calls starting this soon after a cold start are not timed


class _Shape:
    """The timings of one call shape and its current choice."""

    def __init__(self, proposed: int):
        self.proposed = proposed
        self.current = proposed
        self.calls = 0
        self.probe_calls = None     # calls of the probe running, None when none
        self.probe_timed = 0
        self.last = None            # members of the last call recorded
        self.ended = None           # the clock when it ended
        self.warm_from = None       # the clock from which calls are timed
        self.times = {proposed: [], 1: []}
        self.next_probe = 1         # the count of the call starting the next probe
        self.interval = PROBE_EVERY  # counted calls from a probe to the next

    def other(self) -> int:
        return 1 if self.current == self.proposed else self.proposed

    def next_members(self) -> int:
        if self.probe_calls is not None:
            if self.probe_calls < PROBE_MAX_CALLS and self.probe_timed < PROBE_CALLS:
                self.probe_calls += 1
                return self.other()
            self.probe_calls = None
            if not self._decide():
                if self.current != self.proposed:   # one thread is still the faster
                    self.interval = min(2 * self.interval, PROBE_EVERY)
                self.next_probe = self.calls + self.interval
        self.calls += 1
        if self.calls == self.next_probe:
            self.probe_calls, self.probe_timed = 1, 0
            self.times[self.other()] = []
            return self.other()
        return self.current

    def record(self, members: int, started: float, ended: float) -> None:
        if members != self.last or started - self.ended >= IDLE_S:
            self.warm_from = started + WARM_S
        self.last, self.ended = members, ended
        if started < self.warm_from:
            return
        times = self.times[members]
        times.append(ended - started)
        del times[:-WINDOW]
        if self.probe_calls is None:
            self._decide()
        elif members == self.other():
            self.probe_timed += 1

    def _decide(self) -> bool:
        """Switch when the other choice is faster by MARGIN; True when it switched."""
        current, other = self.times[self.current], self.times[self.other()]
        if not (current and other and statistics.median(other)
                < (1 - MARGIN) * statistics.median(current)):
            return False
        self.current = self.other()
        self.interval = PROBE_EVERY if self.current == self.proposed else PROBE_SOON
        self.next_probe = self.calls + self.interval
        return True


class TeamChoice:
    """`choice.call(key, proposed, launch)` runs `launch(members)` on the members chosen
    for the call shape `key` (`proposed`, or 1) and records its time (`clock`).
    `ready(members)`, when given, says whether a team can run now: while it says no
    (its kernel compiles, background_compile.py) the team's calls run on one thread,
    untimed."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self._shapes = {}
        self._lock = threading.Lock()

    def call(self, key, proposed: int, launch, ready=None):
        members = self.members(key, proposed)
        if members > 1 and ready is not None and not ready(members):
            return launch(1)
        started = self.clock()
        results = launch(members)
        self.record(key, members, started, self.clock())
        return results

    def members(self, key, proposed: int) -> int:
        if proposed <= 1:
            return proposed
        with self._lock:
            shape = self._shapes.get(key)
            if shape is None or shape.proposed != proposed:
                shape = self._shapes[key] = _Shape(proposed)
            return shape.next_members()

    def record(self, key, members: int, started: float, ended: float) -> None:
        """A call of shape `key` on `members` ran from `started` to `ended` (`clock`)."""
        with self._lock:
            shape = self._shapes.get(key)
            if shape is not None and members in shape.times:
                shape.record(members, started, ended)

    def medians(self, key) -> dict:
        """members -> the median of the kept times (seconds), for the choices timed."""
        with self._lock:
            shape = self._shapes.get(key)
            if shape is None:
                return {}
            return {members: statistics.median(times)
                    for members, times in shape.times.items() if times}
