"""Whether other processes keep this machine's cores busy: threads pay only on idle cores.

OpenBLAS's threads meet once per GEMM, every step. When another process holds a core,
each meeting waits for a scheduler slice and a call gets several times SLOWER
(measured: 3x at S4 on 2 busy cores), so blas_threads.py asks `others_idle()` first.

It measures, over the time since its previous sample (at least `WINDOW_S`), the CPU
time all processes used (/proc/stat: everything but idle and iowait; steal counts as
busy) minus the CPU time of this process (`time.process_time()`, all its threads): what
is left is the other processes' load, in cores. This process's own threads (its
kernels, TensorFlow's or ONNX Runtime's pools) never make it say "busy"; the 1-minute
load average, used before, counted them, so a busy benchmark process refused itself
threads. Between samples the answer is cached. Without /proc/stat (not Linux) the load
average decides.
"""

from __future__ import annotations

import os
import time

WINDOW_S = 0.1
OTHERS_MAX_CORES = 0.5      # other processes' load (in cores) above which no threads

_STATE = {"time": None, "busy": 0.0, "own": 0.0, "load": None}


def _busy_seconds():
    """CPU seconds all cores spent busy since boot, or None without /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def others_load():
    """Cores other processes used since the previous sample (None: no /proc/stat, or
    the first sample), sampling again only after `WINDOW_S`."""
    now = time.monotonic()
    state = _STATE
    if state["time"] is not None and now - state["time"] < WINDOW_S:
        return state["load"]
    busy, own = _busy_seconds(), time.process_time()
    load = None
    if busy is not None and state["time"] is not None:
        load = ((busy - state["busy"]) - (own - state["own"])) / (now - state["time"])
    state.update(time=now, busy=busy or 0.0, own=own, load=load)
    return load


def others_idle() -> bool:
    """True when other processes used at most `OTHERS_MAX_CORES` cores lately."""
    load = others_load()
    if load is not None:
        return load <= OTHERS_MAX_CORES
    if _STATE["busy"]:
        return True     # first sample: nothing to compare with yet
    try:
        return os.getloadavg()[0] <= (os.cpu_count() or 1) - 1
    except OSError:
        return False
