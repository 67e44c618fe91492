"""Compiling on a thread of its own what calls will want, while they run without it.

Two things a program's calls come to want take long to compile, and the call that
first wanted them used to wait:
- the automatic team's kernel (team_choice.py runs a program's first calls on one
  thread, then tries the team): several times one thread's compile (an LSTM at S2
  (1, 100, 128, 256), the 2-core Zen 4 VM: 6.7-8.0 s against 1.9-2.2 s, BENCHMARKS.md
  run 26), with its native launcher, or alone where Python member threads run the
  team (team_workers.py: no OpenMP layer);
- the launcher that asks whether a Keras layer's weights changed on the idle core
  beside a one-thread kernel (team_poll.py; the `parallel=True` launch_polled), which
  a compiled Keras model wants from its BESIDE_MIN_CALLS-th call: ~0.5-0.8 s.
Now the call that first wants one starts its compile on a `BackgroundCompile` thread
and runs without it (on one thread; asking about the weights itself), as the calls
after it do until it is there. Numbers are the same either way (a team gives one
thread's, bit for bit; the question is asked in the call either way).

A compile holds Python's GIL for its typing and lowering (LLVM's work releases it),
so the calls meanwhile can wait for the GIL a few milliseconds each; they no longer
wait seconds for the compile. The thread is not a daemon: a process that ends during
a compile waits for it (it would have waited in the call before), and Numba's disk
cache keeps the result. A fork waits for the compiles too: a child forked during one
would find Numba's compiler lock held by a thread it does not have, and its first
compile would wait forever.

`BACKGROUND = False` compiles in the call that first wants it, as before (tests that
count what each call runs use it). `wait_all()` waits for every compile started so
far (the benchmarks time no call beside one).
"""

from __future__ import annotations

import logging
import os
import threading

BACKGROUND = True

_LOG = logging.getLogger(__name__)
_STARTED = []            # the compile threads started in this process
_STARTED_LOCK = threading.Lock()


class BackgroundCompile:
    """`ready(key, done, build)`: whether what a call wants (`key`: what and for which
    argument types) can run now without compiling. When `done()` says it is not
    compiled yet, the first asking starts `build()` on a thread and the answer is False
    until that thread ends; then it is True, and the call compiles whatever `build`
    left (nothing, unless it failed: the call then meets the same error in the
    caller's thread)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._threads = {}       # key -> the thread that compiled or compiles for it

    def ready(self, key, done, build) -> bool:
        if not BACKGROUND:
            return True
        with self._lock:
            thread = self._threads.get(key)
            if thread is not None:
                return not thread.is_alive()
            if done():
                return True
            thread = self._threads[key] = threading.Thread(
                target=_build, args=(build,), name="rshop_ir compile")
            with _STARTED_LOCK:
                _STARTED[:] = [started for started in _STARTED if started.is_alive()]
                _STARTED.append(thread)
            thread.start()
            return False

    def running(self) -> bool:
        """Whether one of its compiles is running now."""
        with self._lock:
            return any(thread.is_alive() for thread in self._threads.values())

    def wait(self, timeout: float = None) -> bool:
        """Wait for the compiles started so far; True when none is still running."""
        with self._lock:
            threads = list(self._threads.values())
        return _join(threads, timeout)


def wait_all(timeout: float = None) -> bool:
    """Wait for every compile started so far in the process (each up to `timeout`
    seconds); True when none is still running."""
    with _STARTED_LOCK:
        threads = list(_STARTED)
    return _join(threads, timeout)


def _join(threads: list, timeout) -> bool:
    threads = [thread for thread in threads if thread is not threading.current_thread()]
    for thread in threads:
        thread.join(timeout)
    return not any(thread.is_alive() for thread in threads)


def _build(build) -> None:
    try:
        build()
    except Exception:   # the call that next wants it compiles it and meets the error
        _LOG.debug("A background compile failed", exc_info=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=wait_all)
