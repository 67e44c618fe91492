"""Starting a team's members (team.py) from native code: one parallel loop over ranks.

Handing a call to a Python member thread costs a wake-up and two GIL handoffs: 40-90
us per call on the 2-core development machine's VM (`run_team` with members that do
nothing), against 33 us for a whole one-step LSTM call on one thread. A team kernel
module therefore also holds `launch_team` (codegen.py writes it): an `@njit(parallel=
True)` loop whose iteration `rank` runs `run(..., rank, ...)`, so Numba's threading
layer starts the members (a bare loop of two ranks meeting at a barrier: 4.5 us a
call, ad-hoc script), the other member waiting for its next loop spinning inside the OpenMP runtime
for a few milliseconds. A one-step LSTM H=256 call: 58 us on a team started this way,
135 us with Python members, 38 us on one thread (BENCHMARKS.md run 14). Each member not already on its core pins its
thread there for the call and restores the thread's affinity afterwards (`pin_member`
/ `unpin_member`, glibc's sched_getcpu and sched_setaffinity). A member whose kernel raises (it could only run out of
memory) never comes to its next barrier: the others wait there for a few seconds,
give up (team_sync.team_wait) and the runtime runs the call again on one thread, as
it does whenever a member gave up waiting.

The members meet at barriers, so they must run at once. `native_launch_usable` allows
the loop only where that holds: the OpenMP layer, whose static schedule gives each of
the first ranks a thread of its own, with at least as many threads as members (Numba's
`set_num_threads`), on Linux, and not in a process forked after OpenMP started (GNU
OpenMP does not survive a fork). Elsewhere the Python member threads of
team_workers.py run the team.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic


MASK_WORDS = 16          # a cpu_set_t: 1024 cores, in 64-bit words
_STATE = {"layer": None, "forked": False}


def _affinity_intrinsic(symbol: str):
    """An intrinsic `f(mask)` calling glibc's `symbol(0, bytes, mask)` on the calling
    thread; `mask` is a contiguous uint64 array of MASK_WORDS words."""

    def typer(typing_context, mask):
        if not (isinstance(mask, types.Array) and mask.dtype == types.uint64
                and mask.ndim == 1):
            return None

        def codegen(context, builder, sig, arguments):
            array = context.make_array(sig.args[0])(context, builder, arguments[0])
            byte_pointer = ir.IntType(8).as_pointer()
            function_type = ir.FunctionType(ir.IntType(32), [ir.IntType(32), ir.IntType(64),
                                                             byte_pointer])
            function = cgutils.get_or_insert_function(builder.module, function_type, symbol)
            return builder.call(function, [ir.Constant(ir.IntType(32), 0),
                                           ir.Constant(ir.IntType(64), MASK_WORDS * 8),
                                           builder.bitcast(array.data, byte_pointer)])
        return types.int32(mask), codegen

    typer.__name__ = symbol
    return intrinsic(typer)


get_affinity = _affinity_intrinsic("sched_getaffinity")
set_affinity = _affinity_intrinsic("sched_setaffinity")


@intrinsic
def current_core(typing_context):
    """The core the calling thread runs on (glibc's `sched_getcpu`: no system call
    where the kernel keeps it in the thread's rseq area), or -1."""

    def codegen(context, builder, sig, arguments):
        function_type = ir.FunctionType(ir.IntType(32), [])
        function = cgutils.get_or_insert_function(builder.module, function_type,
                                                  "sched_getcpu")
        return builder.call(function, [])
    return types.int32(), codegen


@njit(cache=True, nogil=True)
def pin_member(masks, rank, core):
    """Run the calling thread on `core` only, keeping its affinity in masks[rank, 0];
    True when it was pinned. A thread already on `core` (the caller's is, and a
    member thread of the last call mostly) is left as it is: two affinity changes
    and their restore cost ~9 us a call on the 2-core VM, and the scheduler does not
    move a busy thread onto a busy core. core < 0: never pinned."""
    if core < 0 or current_core() == core:
        return False
    get_affinity(masks[rank, 0])
    wanted = masks[rank, 1]
    wanted[:] = 0
    wanted[core // 64] = np.uint64(1) << np.uint64(core % 64)
    set_affinity(wanted)
    return True


@njit(cache=True, nogil=True)
def unpin_member(masks, rank, pinned):
    """Give the calling thread back the affinity `pin_member` kept, if it pinned it."""
    if pinned:
        set_affinity(masks[rank, 0])


@njit(cache=True, nogil=True, parallel=True)
def _start_threads(out):
    for index in prange(out.shape[0]):
        out[index] = index


def _threading_layer() -> str:
    import numba

    if _STATE["layer"] is None:
        try:
            _STATE["layer"] = numba.threading_layer()
        except ValueError:       # not started yet: a first parallel loop starts it
            _start_threads(np.zeros(2, np.int64))
            _STATE["layer"] = numba.threading_layer()
    return _STATE["layer"]


def native_launch_usable(members: int) -> bool:
    """Whether `launch_team` may run a team of `members` (see the module docstring)."""
    import numba

    if not sys.platform.startswith("linux") or _STATE["forked"]:
        return False
    return numba.get_num_threads() >= members and _threading_layer() == "omp"


def _after_fork_in_child() -> None:
    _STATE["forked"] = _STATE["layer"] is not None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def launcher_source(arguments: list) -> list:
    """Source lines of `launch_team`: `team_member` (`run` as a function pointer, see
    `compile_launcher`), `run`'s arguments without `team_rank`, then `team_cores` (a
    core per rank, -1: unpinned) and `team_masks` ((members, 2, MASK_WORDS) uint64).
    It returns a list holding rank 0's results. A member whose `run` raises never
    reaches `team_leave` (counter[FINISHED] stays short of the team size) and the
    others give up waiting for it at their next barrier (team_sync.ABANDON_LIMIT). The loop body has one
    exit, so Numba runs it in parallel (a `try` in it would make it a sequential
    loop, and the members would wait at their first barrier for a partner that never
    comes)."""
    member_arguments = ", ".join("np.int64(team_rank)" if name == "team_rank" else name
                                 for name in arguments)
    launcher_arguments = [name for name in arguments if name != "team_rank"]
    return [
        '@njit(cache=True, error_model="numpy", nogil=True, parallel=True)',
        f"def launch_team(team_member, {', '.join(launcher_arguments)}, team_cores, "
        f"team_masks):",
        "    team_results = []",
        "    for team_rank in prange(team_size):",
        "        pinned = pin_member(team_masks, team_rank, team_cores[team_rank])",
        f"        member_results = team_member({member_arguments})",
        "        unpin_member(team_masks, team_rank, pinned)",
        "        if team_rank == 0:",
        "            team_results.append(member_results)",
        "    return team_results",
    ]


def compile_launcher(module, leading: tuple, team: tuple):
    """`f(*leading, *team)` running the team of `module` (a generated team kernel
    module) for arguments of the types of these: `leading` are `run`'s arguments
    before `team_rank`, `team` the launcher's after it (team_size, team_counter,
    team_pool, team_shared, team_cores, team_masks).

    `launch_team` takes `run` as a function pointer (Numba's FunctionType): compiled
    with a dispatcher argument instead, it would link the whole kernel into the
    parallel loop's code and generate its machine code two or three times over
    (~10 s more for an LSTM's first team call; ~1 s this way)."""
    return compile_with_member(module.launch_team, module.run, (*leading, 0, *team[:4]),
                               (*leading, *team))


def compile_with_member(launcher, member, member_arguments: tuple,
                        launcher_arguments: tuple):
    """`f(*launcher_arguments)` calling the dispatcher `launcher` with, first, the
    dispatcher `member` compiled for arguments of the types of `member_arguments`, as a
    function pointer (see `compile_launcher`); both compiled for these types."""
    from numba import typeof

    from rshop_ir.kernels.cpu.optimization_level import kernel_optimization

    member_types = tuple(typeof(argument) for argument in member_arguments)
    with kernel_optimization():
        if member_types not in member.overloads:
            member.compile(member_types)
    compiled = member.overloads[member_types]
    launcher_types = (types.FunctionType(compiled.signature),
                      *(typeof(argument) for argument in launcher_arguments))
    with kernel_optimization():
        launcher.compile(launcher_types)
    entry = launcher.overloads[launcher_types].entry_point
    pointer = _FunctionPointer(compiled.library.get_pointer_to_function(
        compiled.fndesc.llvm_cfunc_wrapper_name))
    return lambda *arguments: entry(pointer, *arguments)


class _FunctionPointer:
    """A compiled function's C wrapper as Numba's FunctionType takes it (the wrapper
    address protocol): unboxing a dispatcher instead looks its compile result up at
    every call (~50-100 us). On an exception the C wrapper reports it as unraisable
    and returns zeros: the member never reached `team_leave`, so the runtime discards
    the call's results (team.launch_natively)."""

    def __init__(self, address: int):
        self._address = address

    def __wrapper_address__(self) -> int:
        return self._address


LAUNCHER_NAMES = ("launch_team", "team_member", "team_results", "member_results",
                  "team_cores", "team_masks", "prange", "pin_member", "unpin_member",
                  "pinned")
