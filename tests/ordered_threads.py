"""Run generated CUDA kernels with their threads in a chosen, deterministic order.

Numba's simulator runs the threads of a block as Python threads interleaved at random,
and the blocks of a grid one after another. That can neither show a missing barrier
reliably nor run a group of blocks that wait for each other (kernels/cuda/group_sync.py).
This executor can: it runs every thread of a block, or of a whole group of blocks,
ONE AT A TIME from barrier to barrier, in increasing or decreasing thread order (the
thread index across the group: block-major); `syncthreads` waits for the thread's
block, `group_barrier` for the whole group, and threads waiting at barriers that can
never all be passed raise an error instead of hanging. With "reverse", a thread that reads what
a lower thread writes in the same phase (no barrier in between) runs first and reads the
old value; with "forward", a thread that overwrites what a higher thread still had to
read runs first. Either way the numbers come out wrong, every time.

    module = load(compiled.source, order="reverse")   # then compiled.module = module

Runs inside the simulator (NUMBA_ENABLE_CUDASIM=1): the kernels' math functions
(kernels/cuda/mathlib.py) are plain Python there.
"""

import threading
import types

import numpy as np


class _Dim:
    def __init__(self, x):
        self.x = x


class _Thread(threading.Thread):
    """One simulated GPU thread; runs only while it holds its turn."""

    def __init__(self, executor, kernel, arguments, block, thread, block_dim):
        super().__init__(daemon=True)
        self.executor, self.kernel, self.arguments = executor, kernel, arguments
        self.block, self.thread, self.block_dim = block, thread, block_dim
        self.turn = threading.Semaphore(0)
        self.shared_calls = 0
        self.error = None

    def run(self):
        self.turn.acquire()
        try:
            self.executor.current.thread = self
            self.kernel(*self.arguments)
        except BaseException as error:     # reported by the launch
            self.error = error
        finally:
            self.executor.finished(self)


class _Executor:
    """The fake `cuda` module the generated source sees, and its scheduler."""

    def __init__(self, order: str):
        if order not in ("forward", "reverse"):
            raise ValueError(f"order must be 'forward' or 'reverse', not {order!r}")
        self.order = order
        self.current = threading.local()       # .thread: the running _Thread
        self.back = threading.Semaphore(0)     # a thread gave its turn back
        self.shared_arrays = {}
        self.lock = threading.Lock()
        self.local = types.SimpleNamespace(array=lambda shape, dtype: np.zeros(shape, dtype))
        self.shared = types.SimpleNamespace(array=self._shared_array)

    # ---- what kernels read ------------------------------------------------------------

    @property
    def threadIdx(self):
        return _Dim(self.current.thread.thread)

    @property
    def blockIdx(self):
        return _Dim(self.current.thread.block)

    @property
    def blockDim(self):
        return _Dim(self.current.thread.block_dim)

    def _shared_array(self, shape, dtype):
        thread = self.current.thread
        key = (thread.block, thread.shared_calls)
        thread.shared_calls += 1
        with self.lock:
            if key not in self.shared_arrays:
                self.shared_arrays[key] = np.zeros(shape, dtype)
            return self.shared_arrays[key]

    def syncthreads(self):
        self._wait("block")

    def group_barrier(self, arrivals, group, target):
        self._wait("group")

    def _wait(self, kind):
        thread = self.current.thread
        thread.waiting = kind
        self.back.release()
        thread.turn.acquire()

    def jit(self, function=None, device=False):
        if function is None:
            return lambda inner: self.jit(inner, device)
        return function if device else _Launcher(self, function)

    # ---- scheduling -------------------------------------------------------------------

    def finished(self, thread):
        thread.done = True
        self.back.release()

    def launch(self, kernel, grid: int, block_dim: int, arguments):
        """Run `grid` blocks; blocks that meet at group barriers (their kernel takes
        `G` after B and steps) run together, others one after another."""
        names = kernel.__code__.co_varnames[:kernel.__code__.co_argcount]
        group = int(arguments[names.index("G")]) if "G" in names else 1
        self.shared_arrays = {}
        for first in range(0, int(grid), group):
            threads = [_Thread(self, kernel, arguments, block, thread, block_dim)
                       for block in range(first, first + group)
                       for thread in range(block_dim)]
            for thread in threads:
                thread.done, thread.waiting = False, None
                thread.start()
            self._schedule(threads if self.order == "forward" else threads[::-1])
            for thread in threads:
                thread.join()
                if thread.error is not None:
                    raise thread.error

    def _schedule(self, ordered):
        """Run the threads one at a time, in order, each up to its next barrier. Block
        by block (in the same order): a block runs on, its own barriers released as all
        its live threads reach one, until they all wait at the group barrier; then the
        next block. So in a group, one block runs a whole phase before the next starts,
        which any missing group barrier shows. The group barrier is released when every
        live thread of the group waits at it."""
        blocks = list(dict.fromkeys(thread.block for thread in ordered))
        while True:
            for block in blocks:
                members = [thread for thread in ordered if thread.block == block]
                runnable = [thread for thread in members
                            if not thread.done and thread.waiting is None]
                while runnable:
                    for thread in runnable:
                        thread.turn.release()
                        self.back.acquire()
                    live = [thread for thread in members if not thread.done]
                    runnable = []
                    if live and all(thread.waiting == "block" for thread in live):
                        for thread in live:
                            thread.waiting = None
                        runnable = live
            live = [thread for thread in ordered if not thread.done]
            if not live:
                return
            if not all(thread.waiting == "group" for thread in live):
                raise RuntimeError("the threads deadlocked: they wait at different "
                                   "barriers " + str(sorted({(thread.block, thread.waiting)
                                                             for thread in live})))
            for thread in live:
                thread.waiting = None


class _Launcher:
    def __init__(self, executor, function):
        self.executor, self.function = executor, function

    def __getitem__(self, configuration):
        grid, block_dim = configuration
        return lambda *arguments: self.executor.launch(self.function, grid, block_dim,
                                                       arguments)


def load(source: str, order: str):
    """The generated module `source`, its kernels run by the ordered executor."""
    executor = _Executor(order)
    text = source.replace("from rshop_ir.kernels.cuda.device import cuda\n", "")
    text = text.replace("from rshop_ir.kernels.cuda.group_sync import group_barrier\n", "")
    module = types.ModuleType("ordered_threads_module")
    module.__dict__.update(cuda=executor, group_barrier=executor.group_barrier)
    exec(compile(text, "<generated kernels>", "exec"), module.__dict__)
    return module
