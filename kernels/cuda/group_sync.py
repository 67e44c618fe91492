"""The barrier of a group of blocks that share one scan's batch rows (scan_kernel.py).

In the group layout, G consecutive blocks own the same batch rows and split every
step's elements (the matmul columns, the gate math) between them, so after each eqn
the G blocks must meet before any reads what another wrote. `group_barrier` is that
meeting, built like a cooperative grid sync but per group and without a cooperative
launch (which needs the CUDA runtime's device library linked in):

  * the block's threads meet (`syncthreads`); its thread 0 then makes the block's
    writes visible device-wide (`threadfence`), counts itself in `arrivals[group]`
    with an atomic add, and polls that counter with atomic reads until all G blocks of
    the group arrived at this barrier: `target` is G times the barriers passed so far,
    so the counter never needs resetting (it starts at 0 at every launch);
  * a second `threadfence` orders the block's later reads after the others' writes,
    and a final `syncthreads` releases the block's threads.

Every block of the grid must be resident at once (a block spinning here would wait
forever for one the GPU has not started), so the runtime launches at most one block
per streaming multiprocessor in this layout (runtime.py). Should a block still wait
longer than `MAX_POLLS` polls (seconds; a step takes microseconds), e.g. because
another program holds multiprocessors, it sets the flag in the last element of
`arrivals` and stops waiting; every later barrier of the launch then passes at once,
and the host raises an error instead of returning the call's numbers
(`check_barriers`), rather than hanging. Numba's simulator runs blocks
one after another, so there a group has one block only (G = 1: the barrier passes
at once); groups of several blocks run on a real GPU only.
"""

from __future__ import annotations

from rshop_ir.kernels.cuda.device import cuda


MAX_POLLS = 1 << 22


@cuda.jit(device=True)
def group_barrier(arrivals, group, target):
    """Wait until `arrivals[group]` reaches `target`, or the launch's timeout flag
    (the last element) is set (see the module docstring)."""
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        flag = arrivals.shape[0] - 1
        cuda.threadfence()
        cuda.atomic.add(arrivals, group, 1)
        polls = 0
        while cuda.atomic.add(arrivals, group, 0) < target:
            if cuda.atomic.add(arrivals, flag, 0) != 0:
                break
            polls += 1
            if polls > MAX_POLLS:
                cuda.atomic.max(arrivals, flag, 1)
                break
        cuda.threadfence()
    cuda.syncthreads()


class GroupBarrierTimeout(RuntimeError):
    """A launch's group barrier timed out: that call's results were dropped."""


def check_barriers(arrivals_on_host) -> None:
    """Raise when a launch's group barrier timed out (its flag, the last element)."""
    if int(arrivals_on_host[-1]):
        raise GroupBarrierTimeout(
            "A group of CUDA blocks waited too long at its step barrier (are other "
            "programs using this GPU's multiprocessors?), so this call's results were "
            "dropped. Set blocks_per_group=0 on the compiled object to run one block per "
            "batch rows, which never waits for other blocks.")
