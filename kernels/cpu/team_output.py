"""One output array every member of a team writes: rank 0's.

Each member of a team (team.py) runs the whole kernel with arrays of its own, and the
call returns rank 0's results. Work that ends in the output itself (the output layer
a scan runs after each chunk, codegen's `_epilogue`) can still be split between the
members: rank 0 publishes its output's address in a slot of the team's counter
(`publish_output`), the others wait for it (`published_output`) and view the same
memory (`output_at`), and each writes its own rows. A barrier after the last rows (written by codegen) keeps
rank 0 from reading the output before the others are done. The counter is fresh for
every call, so a slot holds 0 until rank 0 has published this call's output.
"""

from __future__ import annotations

from numba import carray, njit, types
from numba.extending import intrinsic

from rshop_ir.kernels.cpu.team_sync import (ABANDON_LIMIT, ABORT, SPIN_LIMIT, atomic_add,
                                            atomic_load, atomic_store, yield_core)

OUTPUT_SLOTS = (4, 5, 6, 7)     # counter slots free for outputs (team_sync's layout)


@intrinsic
def _pointer_at(typing_context, address, like):
    """A pointer to `like`'s dtype at the integer `address`."""
    if not (isinstance(address, types.Integer) and isinstance(like, types.Array)):
        return None
    signature = types.CPointer(like.dtype)(address, like)

    def codegen(context, builder, sig, arguments):
        value = context.cast(builder, arguments[0], sig.args[0], types.intp)
        return builder.inttoptr(value, context.get_value_type(sig.return_type))
    return signature, codegen


@njit(cache=True, nogil=True)
def publish_output(counter, slot, output):
    """Rank 0: make `output` the array the team's members write."""
    atomic_store(counter, slot, output.ctypes.data)


@njit(cache=True, nogil=True)
def published_output(counter, slot):
    """The address rank 0 published in `slot`, once it has; 0 when the run was aborted
    or rank 0 never published."""
    polls = 0
    while True:
        address = atomic_load(counter, slot)
        if address != 0:
            return address
        if atomic_load(counter, ABORT) != 0:
            return 0
        polls += 1
        if polls > SPIN_LIMIT:
            if polls > ABANDON_LIMIT:
                atomic_add(counter, ABORT, 1)
                return 0
            yield_core()


@njit(cache=True, nogil=True)
def output_at(address, like):
    """The array of `like`'s shape and dtype at `address` (rank 0's output)."""
    return carray(_pointer_at(address, like), like.shape)
