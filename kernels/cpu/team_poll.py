"""Asking whether the weights changed on a team member, while the others start the call.

A compiled Keras layer asks its weight reader before every call whether the variables
changed (rshop_ir/keras_variables.py): one TensorFlow op, ~12 us when TensorFlow's
code is in the core's cache, 45-60 us right after a kernel call has streamed its
weights through that cache. On a team call (team.py) that was time both cores
waited: the attention decoder, MGU and RWA at S2 took 0.49 / 0.40 / 0.44 ms a call
without the question, 0.55 / 0.46 / 0.49 with it (the 2-core Zen 4 VM, ad-hoc
script alternating both, medians of 10 rounds of 30 calls).

So on a team call the runtime hands the question to the team: the last member asks
it at the start of its kernel (`team_poll`), through a C function pointer to a
Python callable (`PollCallback`, a ctypes callback, which takes the GIL: every other
member runs `nogil`), while the other members start the chunk's input projection.
The members take the projection's rows in units from a shared counter
(codegen's `_team_projections`), so the member that asked takes fewer of them.
A kernel whose scan has an output layer after its steps (an epilogue: the
attention decoders) asks there instead, in the first chunk's, whose rows the
members also take in units (codegen's `_claimed_epilogue`): a team's steps go in
lockstep, so a question before them delayed every member by its whole length.
The attention decoders at S2 on a team of two: 0.643 -> 0.612 and 0.624 -> 0.590 ms
a call (medians of 4 fresh processes each, alternated; BENCHMARKS run 35). When the weights changed (or reading them failed), the member sets the team's abort
flag: the members stop at their next barrier and the runtime binds the new weights
and runs the call again on one thread (runtime.py). The next calls run on the team
as before.

A ctypes callback entered from a thread Python has never seen (Numba's OpenMP
threads run the other members) creates a Python thread state for the call and
deletes it afterwards: ~19 us a call. `call_poll` therefore gives such a thread a
thread state of its own at its first call and keeps it (`PyGILState_Ensure`, then
`PyEval_SaveThread` to give the GIL back): then a callback costs ~0.1 us (a
parallel region of two threads calling an empty callback: 21 us, 2.6 us once the
threads kept their states; ad-hoc).

Measured on the 2-core Zen 4 VM (ad-hoc script, the generated team kernels edited
this way, alternated with the serial question, medians of 10 rounds of 30 calls):
MGU at S2 455 -> 403 us a call, RWA 493 -> 451 us; without any question 387 / 436.

A call on one thread leaves the other core idle: there the question runs beside the
kernel. Every plain kernel module holds `launch_polled` (`polled_launcher_source`): a
parallel loop of two ranks, rank 0 (the calling thread) running the kernel, rank 1
(one of Numba's threads) asking. The call then takes the longer of the two instead of
their sum, and the question finds TensorFlow's code in the idle core's cache. The
runtime uses it only where it pays (runtime.py `_poll_beside_pays`): a weight reader
to ask, BLAS on one thread if at all (OpenBLAS's threads would meet the asking
thread's core, blas_threads.py),
two idle cores, the native launcher usable, a call following the previous one within
`BESIDE_MAX_PAUSE_S` (Numba's threads still spinning: one woken from its sleep would
start the question tens of microseconds late), from the `BESIDE_MIN_CALLS`-th call
that could: the launcher's compilation (0.5-0.7 s on the 2-core Zen 4 VM, once per
process where Numba's disk cache has it) never delays a first call. One such call runs
at a time in a process (Python threads calling at once would each start a Numba thread
to ask); a call whose `team_size` the caller gave keeps to the threads it asked for.
"""

from __future__ import annotations

import ctypes

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from rshop_ir.kernels.cpu.team_sync import ABORT, POLL_ADDRESS, atomic_add

UNCHANGED, CHANGED, FAILED = 0, 1, 2    # what a poll callback returns
BESIDE_MAX_PAUSE_S = 0.001   # a one-thread call asks beside its kernel after a pause
BESIDE_MIN_CALLS = 2         # ... this short, from the 2nd call that could on
POLLED_LAUNCHER_NAMES = ("launch_polled", "polled_member", "polled_results", "poll_rank",
                         "poll_counter", "team_poll", "prange")

_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int64)


@intrinsic
def call_poll(typing_context, address):
    """Call the C function `int64 f(void)` at `address` (a `PollCallback`), first giving
    the calling thread a Python thread state it keeps when it has none (see the
    module docstring)."""
    if not isinstance(address, types.Integer):
        return None
    signature = types.int64(address)

    def codegen(context, builder, sig, arguments):
        byte_pointer = ir.IntType(8).as_pointer()
        module = builder.module
        this_thread_state = cgutils.get_or_insert_function(
            module, ir.FunctionType(byte_pointer, []), "PyGILState_GetThisThreadState")
        ensure = cgutils.get_or_insert_function(
            module, ir.FunctionType(ir.IntType(32), []), "PyGILState_Ensure")
        save_thread = cgutils.get_or_insert_function(
            module, ir.FunctionType(byte_pointer, []), "PyEval_SaveThread")
        with cgutils.if_unlikely(builder, cgutils.is_null(builder,
                                                          builder.call(this_thread_state, []))):
            builder.call(ensure, [])       # a thread state for this thread, and the GIL
            builder.call(save_thread, [])  # the GIL back; the thread state stays
        function_type = ir.FunctionType(ir.IntType(64), [])
        target = context.cast(builder, arguments[0], sig.args[0], types.int64)
        return builder.call(builder.inttoptr(target, function_type.as_pointer()), [])
    return signature, codegen


@njit(cache=True, nogil=True)
def team_poll(counter, rank, size):
    """The last member of a team asks the runtime's `PollCallback` (its address in
    `counter[POLL_ADDRESS]`; 0: no question) and sets the abort flag when the weights
    changed or could not be read."""
    address = counter[POLL_ADDRESS]
    if rank == size - 1 and address != 0:
        if call_poll(address) != UNCHANGED:
            atomic_add(counter, ABORT, 1)


class PollCallback:
    """A C function pointer (`address`) calling `changed_weights()`, which returns the
    changed weights (a dict) or None; what the last call found is `outcome`: None
    (not called since `clear`), `UNCHANGED`, the new weights, or the exception raised.
    One per calling thread: a call's outcome is its own."""

    def __init__(self, changed_weights):
        self._changed_weights = changed_weights
        self.outcome = None
        # the ctypes object must live as long as its address may be called
        self._function = _CALLBACK_TYPE(self._call)
        self.address = ctypes.cast(self._function, ctypes.c_void_p).value

    def clear(self) -> None:
        self.outcome = None

    def found(self):
        """The new weights the last call found (a dict), None when it found them
        unchanged or was not called; raises the error reading them raised."""
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome if isinstance(self.outcome, dict) else None

    def _call(self) -> int:
        try:
            current = self._changed_weights()
        except BaseException as error:     # handed to the caller by the runtime
            self.outcome = error
            return FAILED
        if current is None:
            self.outcome = UNCHANGED
            return UNCHANGED
        self.outcome = current
        return CHANGED


def polled_launcher_source(arguments: list) -> list:
    """Source lines of a plain kernel module's `launch_polled(polled_member,
    *arguments, poll_counter)`: `polled_member` (`run` as a function pointer,
    team_launch.compile_with_member) runs on rank 0 with `arguments` (`run`'s) while
    rank 1 calls `team_poll` on `poll_counter` (team_sync's layout). It returns a list
    holding the kernel's results. A kernel that raises returns empty arrays through the
    function pointer (the runtime then runs the call again as usual)."""
    names = ", ".join(arguments)
    return [
        '@njit(cache=True, error_model="numpy", nogil=True, parallel=True)',
        f"def launch_polled(polled_member, {names}, poll_counter):",
        "    polled_results = []",
        "    for poll_rank in prange(2):",
        "        if poll_rank == 0:",
        f"            polled_results.append(polled_member({names}))",
        "        else:",
        "            team_poll(poll_counter, 1, 2)",
        "    return polled_results",
    ]
