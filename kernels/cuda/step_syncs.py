"""Which barriers a step of the persistent scan kernel needs (scan_kernel.py).

Every thread strides over the elements of a value the same way: element e of a loop
over `rows_here * SIZE` elements belongs to the thread with `tid == e % nthreads`
(kernel_writer.py). So when an element-wise eqn reads a value written since the last
barrier by another element-wise eqn over the same elements (same per-row dims, read at
the same index: no broadcast, no view), each thread reads only what it wrote itself,
and no barrier is needed in between. Anything else read before a barrier (a matmul's
or a reduction's output, a view, a broadcast, another element count) may come from
another thread, or in the group layout from another block.

For an LSTM step this leaves two barriers out of four: after the recurrent matmul, and
at the end of the step (the next matmul reads every unit); the two element-wise gate
regions and the commit of the new states follow each other without one. That matters
most in the group layout, where a barrier is a round trip through the device's atomics.
"""

from __future__ import annotations

from rshop_ir.ir import Var
from rshop_ir.kernels import lowering
from rshop_ir.kernels.cuda.kernel_writer import is_batched


class StepSyncs:
    """Emits a barrier (`writer.sync()`) only before a read that needs one.

    `pending` maps each value written since the last barrier to the element domain of
    the loop that wrote it, `(per-row dims, batched)`, or None when its elements were
    not written one per thread in that order.
    """

    def __init__(self, writer, view_ops):
        self.writer = writer
        self.view_ops = tuple(view_ops)
        self.pending = {}

    def domain(self, var) -> tuple:
        return tuple(str(dim) for dim in self.writer.dims(var)), is_batched(var)

    def before_eqn(self, eqn) -> None:
        """Sync first if `eqn` reads a pending value other than element by element."""
        if eqn.op in self.view_ops or eqn.op == "constant":
            return
        elementwise = lowering.is_elementwise(eqn) and len(eqn.outputs) == 1
        out = eqn.outputs[0] if eqn.outputs else None
        reads = [(atom, self.domain(out) if elementwise else None,
                  elementwise and atom.shape == out.shape)
                 for atom in eqn.inputs if isinstance(atom, Var)]
        self.before_reads(reads)

    def before_reads(self, reads) -> None:
        """`reads`: (var, reader's element domain or None, read at the reader's own
        element index); syncs when any pending var is read otherwise."""
        for var, domain, same_index in reads:
            if var in self.pending and not (
                    same_index and domain is not None and self.pending[var] == domain):
                self.sync()
                return

    def after_eqn(self, eqn, wrote: bool) -> None:
        if eqn.op == "constant":
            return
        if eqn.op in self.view_ops:          # a view of a pending value is pending too
            if any(isinstance(atom, Var) and atom in self.pending for atom in eqn.inputs):
                for var in eqn.outputs:
                    self.pending[var] = None
            return
        if not wrote:
            return
        elementwise = lowering.is_elementwise(eqn) and len(eqn.outputs) == 1
        for var in eqn.outputs:
            self.pending[var] = self.domain(var) if elementwise else None

    def sync(self) -> None:
        """A barrier now (also at the end of every step, whatever is pending)."""
        self.writer.sync()
        self.pending.clear()
