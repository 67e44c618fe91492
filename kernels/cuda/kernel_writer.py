"""One generated `@cuda.jit` kernel being written: its arguments, lines and values.

Every kernel starts the same way: a block owns `ROWS` consecutive batch rows,
`row0 = blockIdx.x * ROWS`, `rows_here = min(ROWS, B - row0)` of them real (written
without `min`, which numba's CUDA typing rejects for an int literal and an int64), and
its threads stride over the elements of those rows:

    for e in range(tid, rows_here * SIZE, nthreads):
        r = e // SIZE          # the local row; the batch row is row0 + r
        ...                    # the element's indices, then the statement

Top-level kernels use ROWS = 1 (one block per batch row, one launch per eqn); the
persistent scan kernel (scan_kernel.py) uses the block layout it was built with. In the
group layout (`grouped=True`) G consecutive blocks (the kernel argument `G`) own the
same rows and stride over their elements together: `tid` and `nthreads` then count the
threads of the whole group, and `sync()` is the group's barrier (group_sync.py) instead
of the block's. Where
a value is stored is the writer's `allocate` hook (a workspace slot in a scan kernel, a
new device array in a top-level one); how each op is written is eqn_rendering.py.
"""

from __future__ import annotations

import numpy as np

from rshop_ir.errors import UnsupportedError
from rshop_ir.kernels.cpu.source import SourceWriter
from rshop_ir.kernels.cuda.values import Stored, product, unflatten


# A matmul by a weight in a scan kernel (eqn_rendering._split_matmul): the block's
# threads take SPLIT_LANES columns at a time (half the block's threads if fewer), in
# SPLIT_PARTS parts of the contraction at most.
SPLIT_LANES = 32
SPLIT_PARTS = 8


class KernelWriter:
    def __init__(self, name: str, names, rows_per_block: int, float_dtype: str,
                 allocate, sizes: dict, grouped: bool = False):
        self.name = name
        self.names = names                  # a Namespace for this kernel's locals
        self.rows_per_block = int(rows_per_block)
        self.float_dtype = float_dtype
        self.allocate_hook = allocate       # (writer, Var) -> Stored
        self.sizes = dict(sizes)            # symbolic dim -> runtime name ("T" -> "T")
        self.body = SourceWriter()
        self.values = {}                    # Var -> Stored | Mapped
        self.arguments = []                 # (name, "array", dtype) or (name, "int", None)
        self.needs_accumulator = False
        self.needs_error_flag = False
        self.grouped = bool(grouped)        # the group layout (module docstring)
        self.split_contractions = False     # matmuls by a weight split K (eqn_rendering)
        self.needs_partials = False         # ... and one did: `partials` in shared memory
        self.weight_slices = {}             # weight Var -> (shared array, tiles it holds)
        self.left_staging = None            # (shared array, elements): split matmuls'
                                            # left rows, staged (eqn_rendering)
        if self.grouped:                    # fixed names, reserved by the generator
            self.arguments += [("G", "int", None), ("arrivals", "array", "int64")]

    # ---- arguments and values ------------------------------------------------------------

    def array_argument(self, hint: str, dtype: str) -> str:
        name = self.names.fresh(hint)
        self.arguments.append((name, "array", np.dtype(dtype).name))
        return name

    def allocate(self, var) -> Stored:
        stored = self.allocate_hook(self, var)
        self.values[var] = stored
        return stored

    def dims(self, var) -> list:
        """The runtime dims of `var` after its batch dim (all of them if unbatched)."""
        shape = var.shape[1:] if is_batched(var) else var.shape
        for dim in shape:
            if isinstance(dim, str) and dim not in self.sizes:
                raise UnsupportedError(f"A value of shape {var.shape} with the symbolic dim "
                                       f"{dim!r} after the batch dim inside a CUDA kernel.")
        return [self.sizes.get(dim, dim) if isinstance(dim, str) else dim for dim in shape]

    # ---- loops --------------------------------------------------------------------------

    def open_elements(self, dims, batched: bool, hint: str = "i") -> list:
        """Open the thread-strided loop over every element of the block's rows of a
        value with per-row `dims`; returns the index list [row, i1, ...] (row only when
        batched). Close it with `close()`."""
        size = product(dims)
        flat = self.names.fresh("e")
        count = f"rows_here * {size}" if batched else size
        self.body.line(f"for {flat} in range(tid, {count}, nthreads):")
        self.body.depth += 1
        indices = []
        if batched:
            if size == "1":
                self.body.line(f"r = {flat}")
                inner = "0"
            else:
                self.body.line(f"r = {flat} // ({size})")     # size: `3 * T` is one term
                inner = self.names.fresh("flat")
                self.body.line(f"{inner} = {flat} - r * ({size})")
            indices.append("r")
        else:
            inner = flat
        names = [self.names.fresh(hint) for _ in dims]
        for name, expression in zip(names, unflatten(inner, dims)):
            self.body.line(f"{name} = {expression}")
        return indices + names

    def close(self, levels: int = 1) -> None:
        self.body.depth -= levels

    def sync_lines(self) -> list:
        """The lines that make every thread wait until the others' writes are visible:
        the block's barrier, or in the group layout the group's."""
        if not self.grouped:
            return ["cuda.syncthreads()"]
        return ["barrier_target += G", "group_barrier(arrivals, group, barrier_target)"]

    def sync(self) -> None:
        for line in self.sync_lines():
            self.body.line(line)

    # ---- the source ----------------------------------------------------------------------

    def header_lines(self) -> list:
        if self.grouped:
            lines = ["group = cuda.blockIdx.x // G",
                     "member = cuda.blockIdx.x - group * G",
                     "members = G",
                     "tid = member * cuda.blockDim.x + cuda.threadIdx.x",
                     "nthreads = G * cuda.blockDim.x",
                     "barrier_target = 0",
                     f"row0 = group * {self.rows_per_block}"]
        else:
            lines = ["member = 0",
                     "members = 1",
                     "tid = cuda.threadIdx.x",
                     "nthreads = cuda.blockDim.x",
                     f"row0 = cuda.blockIdx.x * {self.rows_per_block}"]
        lines += ["rows_here = B - row0",
                  f"if rows_here > {self.rows_per_block}:",
                  f"    rows_here = {self.rows_per_block}"]
        if self.needs_accumulator:
            lines.append(f"acc = cuda.local.array({self.rows_per_block}, "
                         f"np.{self.float_dtype})")
        if self.left_staging is not None:
            staging, elements = self.left_staging
            lines.append(f"{staging} = cuda.shared.array({elements}, np.{self.float_dtype})")
        if self.needs_partials:
            lines += [f"partials = cuda.shared.array({self.partials_size()}, "
                      f"np.{self.float_dtype})",
                      # at least 2 parts (small blocks too: tests run them)
                      "split_lanes = cuda.blockDim.x // 2",
                      f"if split_lanes > {SPLIT_LANES}:",
                      f"    split_lanes = {SPLIT_LANES}",
                      "if split_lanes < 1:",
                      "    split_lanes = 1",
                      "split_parts = cuda.blockDim.x // split_lanes",
                      f"if split_parts > {SPLIT_PARTS}:",
                      f"    split_parts = {SPLIT_PARTS}",
                      "lane = cuda.threadIdx.x % split_lanes",
                      "part = cuda.threadIdx.x // split_lanes"]
        return lines

    def partials_size(self) -> int:
        """Elements of the shared `partials` of split matmuls (eqn_rendering.py)."""
        return self.rows_per_block * SPLIT_PARTS * SPLIT_LANES

    def signature(self, leading=("B", "T")) -> list:
        return [*leading, *(name for name, _, _ in self.arguments)]

    def argument_types(self, leading=("B", "T")) -> list:
        """numba type names, in signature order, for compiling without a launch."""
        types = ["int64"] * len(leading)
        for _, kind, dtype in self.arguments:
            types.append("int64" if kind == "int" else
                         f"{'boolean' if dtype == 'bool' else dtype}[::1]")
        return types


def is_batched(var) -> bool:
    return len(var.shape) > 0 and var.shape[0] == "B"
