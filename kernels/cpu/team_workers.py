"""The threads that run a team's other members (team.py), kept spinning between calls.

A thread blocked on a lock between calls starts the next member late: on the 2-core
development machine a team call started its second member ~90 us after the caller
(the futex wake of an idle core, then the GIL passed back and forth while both
threads run their Python part), and the first barrier made the caller wait for it.
So each member thread, once its part of a call is done, waits for the next call by
polling its mailbox outside the GIL (`wait_for_post`, compiled with `nogil`): for
SPIN_POLLS polls, then YIELD_POLLS more with a `sched_yield` between (a thread of
another process gets the core at once), and only then blocks on an event until the
next call wakes it. Calls in close succession, as a served model makes them, find
their members awake.

`acquire(count)` lends `count` member threads to one team call (a caller thread
holds them until `release`): two callers never share a member, so concurrent team
calls cannot wait on each other.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np
from numba import njit

from rshop_ir.kernels.cpu.pinning import pin_thread
from rshop_ir.kernels.cpu.team_sync import atomic_load, yield_core

# Measured on the development machine: 200,000 polls take ~0.07 ms, 2,000 polls with
# a sched_yield each ~0.46 ms.
SPIN_POLLS = 200_000     # polls without giving up the core ...
YIELD_POLLS = 2_000      # ... then with sched_yield between, then block
POSTED, SLEEPING, DONE = 0, 8, 16   # mailbox slots (a cache line apart)

_IDLE = []               # groups of member threads not lent to a call
_LOCK = threading.Lock()


@njit(cache=True, nogil=True)
def wait_for_change(mailbox, slot, seen, spin_polls, yield_polls):
    """True once mailbox[slot] != seen, False after the polls (see the module
    docstring); the GIL is free meanwhile."""
    for _ in range(spin_polls):
        if atomic_load(mailbox, slot) != seen:
            return True
    for _ in range(yield_polls):
        if atomic_load(mailbox, slot) != seen:
            return True
        yield_core()
    return False


class MemberThread:
    """A daemon thread running one function call at a time (`submit` -> Future)."""

    def __init__(self, name: str):
        self._mailbox = np.zeros(24, np.int64)
        self._task = None
        self._wake = threading.Event()
        self._core = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def stay_on(self, core) -> None:
        """Called by this thread: run on `core` only (None: anywhere) from now on; no
        system call when it is there already."""
        if core != self._core and (core is not None or self._core is not None):
            self._core = core if pin_thread(core) else None

    def submit(self, function, *arguments) -> Future:
        future = Future()
        self._task = (future, function, arguments)
        # Under the GIL: the task is stored before the post, and a member that went
        # to sleep (SLEEPING set before it checked POSTED) is woken.
        self._mailbox[POSTED] += 1
        if self._mailbox[SLEEPING]:
            self._wake.set()
        return future

    def wait(self, future: Future):
        """The exception of the call `future` stands for (None if it returned), once
        it ended. The caller polls without the GIL first (the member needs the GIL to
        finish, and a thread blocked on a lock wakes up late), then blocks."""
        if not future.done():
            wait_for_change(self._mailbox, DONE, self._mailbox[POSTED] - 1, SPIN_POLLS,
                            YIELD_POLLS)
        return future.exception()

    def _loop(self) -> None:
        seen = 0
        while True:
            while not wait_for_change(self._mailbox, POSTED, seen, SPIN_POLLS,
                                      YIELD_POLLS):
                self._mailbox[SLEEPING] = 1
                if self._mailbox[POSTED] == seen:
                    self._wake.wait()
                self._wake.clear()          # a stale wake only sends it polling again
                self._mailbox[SLEEPING] = 0
            seen += 1
            future, function, arguments = self._task
            self._task = None
            try:
                result = function(*arguments)
            except BaseException as error:   # handed to the caller
                future.set_exception(error)
            else:
                future.set_result(result)
            self._mailbox[DONE] = seen


def acquire(count: int) -> list:
    """`count` member threads for one team call; give them back with `release`."""
    with _LOCK:
        for index, group in enumerate(_IDLE):
            if len(group) == count:
                return _IDLE.pop(index)
    return [MemberThread(f"rshop_ir-team-{rank + 1}") for rank in range(count)]


def release(group: list) -> None:
    with _LOCK:
        _IDLE.append(group)
