"""The step barrier of a kernel run by a team of threads (see kernels/cpu/team.py).

Numba has no atomics for the CPU, so LLVM intrinsics supply them: `atomic_add`
(sequentially consistent fetch-and-add on an int64 array element), `atomic_load` (an
acquire load) and `atomic_store` (a release store). `team_wait` is the barrier every member calls after writing its
columns of a split matmul (`team_arrive` then `team_await`: an exchange of owned
columns runs the member's deferred work between the two, team_columns.py):

  * each member counts the barriers it reached in a slot of its own
    (`phase_slot(rank)`, a cache line apart from the others'), which only it
    writes: on arriving it stores the count plus one (a release store), then spins
    on acquire loads of every partner's slot until each reached the same count.
    Every member calls the barrier the same number of times, so no reset is needed,
    and the count before a barrier is the member's phase (which half of the double
    buffered exchange pool it writes, team_columns.py);
  * one shared arrivals counter bumped by every member instead cost a cache line
    transfer more per barrier (each member's add, then the poll, moved the line),
    and the per-member slots used to share one line. The attention decoder at S2
    (200 barriers a call) waited ~16 us a call at its barriers on the 2-core VM
    while the two cores were near, ~90 us while they were far apart; with a slot a
    member its call took 1.9% / 3.6% less time (BENCHMARKS.md run 20);
  * after `SPIN_LIMIT` polls a member yields its core on each poll (`sched_yield`),
    so a member whose partner lost its core to another process does not burn that
    core's time;
  * `counter[1]` != 0 is the abort flag: set when a member failed, or by a member
    that waited ABANDON_LIMIT polls; the waiting members then return False and stop,
    and the runtime runs the call again on one thread.
The release store publishes the member's earlier writes (its columns), the acquire
loads make the partners' writes visible.

`team_enter` / `team_leave` count the members whose kernel has started / ended
(`counter[STARTED]`, `counter[FINISHED]`); the launcher (team.py) waits for them with
`wait_for_count`, outside the GIL.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

ABORT = 1               # (counter[0] is not used)
STARTED = 2
FINISHED = 3
# counter[4:8]: team_output.OUTPUT_SLOTS
MAX_MEMBERS = 16
PHASE_BASE = 8          # counter[phase_slot(rank)]: barriers the member has reached
PHASE_STRIDE = 8        # int64s a cache line: each member's slot on a line of its own
# after the phase slots: the weight question's callback (team_poll.py), and on a line of
# its own the units of input-projection rows the members took (codegen's
# `_team_projections`)
POLL_ADDRESS = PHASE_BASE + PHASE_STRIDE * MAX_MEMBERS
CLAIMS = POLL_ADDRESS + PHASE_STRIDE
COUNTER_SIZE = CLAIMS + PHASE_STRIDE
SPIN_LIMIT = 20000
# Polls after which a member gives up waiting (each past SPIN_LIMIT yields the core:
# ~0.3 us each on the development machine with nothing else to run, so about three
# seconds or more): it sets the abort flag, and the runtime runs the call again on one
# thread (a member held up that long has lost its core anyway).
ABANDON_LIMIT = SPIN_LIMIT + 10_000_000


def _element_pointer(context, builder, array_type, array, index, index_type):
    structure = context.make_array(array_type)(context, builder, array)
    position = context.cast(builder, index, index_type, types.intp)
    return cgutils.get_item_pointer(context, builder, array_type, structure, [position])


@intrinsic
def atomic_add(typing_context, array, index, value):
    """array[index] += value atomically (int64 array); returns the old value."""
    if not (isinstance(array, types.Array) and array.dtype == types.int64):
        return None
    signature = types.int64(array, index, value)

    def codegen(context, builder, sig, arguments):
        pointer = _element_pointer(context, builder, sig.args[0], arguments[0],
                                   arguments[1], sig.args[1])
        amount = context.cast(builder, arguments[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", pointer, amount, "seq_cst")
    return signature, codegen


@intrinsic
def atomic_load(typing_context, array, index):
    """array[index] read with acquire ordering (int64 array)."""
    if not (isinstance(array, types.Array) and array.dtype == types.int64):
        return None
    signature = types.int64(array, index)

    def codegen(context, builder, sig, arguments):
        pointer = _element_pointer(context, builder, sig.args[0], arguments[0],
                                   arguments[1], sig.args[1])
        return builder.load_atomic(pointer, "acquire", 8)
    return signature, codegen


@intrinsic
def atomic_store(typing_context, array, index, value):
    """array[index] = value with release ordering (int64 array)."""
    if not (isinstance(array, types.Array) and array.dtype == types.int64):
        return None
    signature = types.void(array, index, value)

    def codegen(context, builder, sig, arguments):
        pointer = _element_pointer(context, builder, sig.args[0], arguments[0],
                                   arguments[1], sig.args[1])
        amount = context.cast(builder, arguments[2], sig.args[2], types.int64)
        builder.store_atomic(amount, pointer, "release", 8)
        return context.get_dummy_value()
    return signature, codegen


@intrinsic
def yield_core(typing_context):
    """sched_yield(): give the core to another runnable thread."""
    signature = types.int32()

    def codegen(context, builder, sig, arguments):
        function_type = ir.FunctionType(ir.IntType(32), [])
        function = cgutils.get_or_insert_function(builder.module, function_type,
                                                  "sched_yield")
        return builder.call(function, [])
    return signature, codegen


@njit(cache=True, nogil=True, inline="always")
def phase_slot(rank):
    """The counter slot where member `rank` counts the barriers it reached."""
    return PHASE_BASE + PHASE_STRIDE * rank


@njit(cache=True, nogil=True)
def team_arrive(counter, rank):
    """Member `rank` reached the next barrier: its count plus one, stored with release
    ordering (its earlier writes, its share of an exchange, are published with it)."""
    atomic_store(counter, phase_slot(rank), counter[phase_slot(rank)] + 1)


@njit(cache=True, nogil=True)
def team_await(counter, size, rank):
    """Wait until every partner of member `rank` reached the barrier it arrived at
    (`team_arrive`); False when the run was aborted. Work between the two, which reads
    nothing the partners write, overlaps the wait."""
    reached = counter[phase_slot(rank)]
    polls = 0
    for member in range(size):
        if member == rank:
            continue
        while atomic_load(counter, phase_slot(member)) < reached:
            if atomic_load(counter, ABORT) != 0:
                return False
            polls += 1
            if polls > SPIN_LIMIT:
                if polls > ABANDON_LIMIT:      # the partner never came: give up the call
                    atomic_add(counter, ABORT, 1)
                    return False
                yield_core()
    return True


@njit(cache=True, nogil=True)
def team_wait(counter, size, rank):
    """The barrier (see the module docstring) of member `rank`: `team_arrive`, then
    `team_await`; False when the run was aborted."""
    team_arrive(counter, rank)
    return team_await(counter, size, rank)


@njit(cache=True, nogil=True)
def team_enter(counter):
    """A member's kernel started (its first statement)."""
    atomic_add(counter, STARTED, 1)


@njit(cache=True, nogil=True)
def team_leave(counter):
    """A member's kernel is done with the team's buffers (its last statement)."""
    atomic_add(counter, FINISHED, 1)


@njit(cache=True, nogil=True)
def claim_unit(counter, rank, units):
    """The next of `units` units of work (rows of an input projection) that member
    `rank` takes from the team's shared count (`counter[CLAIMS]`), or -1 when all are
    taken. Between two barriers every member claims until it gets -1, so a phase of
    `units` units takes `units` + (members) counts, which every member adds to its
    own base (`end_claims`, kept on its phase slot's line, which only it writes)."""
    unit = atomic_add(counter, CLAIMS, 1) - counter[phase_slot(rank) + 1]
    return unit if unit < units else -1


@njit(cache=True, nogil=True)
def end_claims(counter, rank, size, units):
    """Member `rank` got -1 from `claim_unit` in a phase of `units` units."""
    counter[phase_slot(rank) + 1] += units + size


@njit(cache=True, nogil=True)
def wait_for_count(counter, slot, target, spin_polls, yield_polls):
    """Poll until counter[slot] >= target (True), the abort flag is set or the polls
    ran out (False): `spin_polls` polls, then `yield_polls` with sched_yield between."""
    for poll in range(spin_polls + yield_polls):
        if atomic_load(counter, slot) >= target:
            return True
        if atomic_load(counter, ABORT) != 0:
            return False
        if poll >= spin_polls:
            yield_core()
    return False
