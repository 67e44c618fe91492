"""The Numba CPU renderer: an optimised program -> the source of one Python module.

The module holds one `@njit` function per scan (`scan_0`, ...) running the WHOLE time
loop, and `run`, the program around the scans (embedding gathers, dense layers,
softmax, ...). A program that only runs one scan and returns its results (a compiled
RNN layer) gets the scan's body as `run` itself (`_run_as_scan`). Planning (which eqns
a scan absorbs, how a body value is stored, the scalar expression of every element-wise
op) comes from kernels/lowering.py and kernels/scalar_ops.py, shared with other
renderers; this file only writes Numba code.

Inside a scan function, per chunk of up to `chunk` steps: the absorbed input projection
is ONE GEMM (`np.dot`, BLAS) over the chunk's rows in time-major order (B rows per
step), then the element-wise eqns that followed it; then per step the recurrent
matmul(s) (register tiles over the weight packed in column blocks, kernels/cpu/
packed_product.py; `np.dot`; or a hand loop where BLAS call overhead dominates) and
each fused region as ONE loop nest, then the states, readout and output are committed
(keeping the old rows where the mask is False) by swapping double buffers. Weights,
prologue results and the packed copies of the recurrent weights are ARGUMENTS of
`run` (`KernelSource.weight_slots` says which), never constants of the source, so new
weights need no recompilation: the runtime packs a weight once per weight version.
Two variants are generated on demand: the team kernel (`team=True`, kernels/cpu/
team.py) and the wide-batch kernel (`merged=True`), whose recurrent products take the
step's input projection in instead of reading it from a chunk GEMM
(kernels/cpu/merged_projection.py).

    kernel = generate(optimized_program)
    print(kernel.source)     # the module text; kernel.globals: objects it reads
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from rshop_ir.errors import UnsupportedError
from rshop_ir.ir import Literal, Program, Var
from rshop_ir.shapes import normalize_axes, normalize_axis
from rshop_ir.kernels import lowering
from rshop_ir.passes.rewrite import count_uses, reader_positions
from rshop_ir.kernels.scalar_ops import ScalarContext
from rshop_ir.kernels.cpu import mathlib
from rshop_ir.kernels.cpu.factored_activation import (EXPONENTIAL_NAMES,
                                                      constant_exponentials_source,
                                                      factored_expression,
                                                      find_factored_activation,
                                                      step_exponential_count,
                                                      step_exponential_lines)
from rshop_ir.kernels.cpu.packed_product import (BLOCK_COLUMNS, PACK_MIN_ROW_STEPS,
                                                 TILE_SHAPES, aligned_start_source,
                                                 packing_source, row_buffer_size)
from rshop_ir.kernels.cpu.source import Namespace, SourceWriter, larger, smaller
from rshop_ir.kernels.cpu.team_columns import (ColumnOwnership, block_dot_applies,
                                               kept_states, owned_einsum_applies,
                                               product_segments)
from rshop_ir.kernels.cpu.team_launch import LAUNCHER_NAMES, launcher_source
from rshop_ir.kernels.cpu.team_poll import POLLED_LAUNCHER_NAMES, polled_launcher_source
from rshop_ir.kernels.cpu.team_output import OUTPUT_SLOTS
from rshop_ir.kernels.cpu.merged_projection import paired_matmul
from rshop_ir.kernels.cpu.values import (ArrayValue, ChunkRows, LastAxisView,
                                         MergedSequence, SequenceStep)

GENERATOR_VERSION = "numba-cpu/31"
JIT_DECORATOR = '@njit(cache=True, error_model="numpy", nogil=True)'
BLAS_MIN_BATCH = 8          # measured on 2 cores: np.dot pays at batch >= 8 ...
BLAS_MIN_CONTRACTION = 16   # ... or a contraction (hidden) size >= 16 (OpenBLAS's
                            # sgemm beat the hand loop from (1,16)x(16,64) up)

# The arguments `run` and the top-level scans take when a matmul splits over a team.
# `team_pool`: the exchange rows of the split products' blocks; `team_shared`: bytes
# every member sees (the input projection's chunk buffers, each member computing some
# of its steps).
TEAM_ARGUMENTS = ("team_rank", "team_size", "team_counter", "team_pool", "team_shared")
TEAM_MIN_COLUMNS = 32       # narrower matmuls are not worth a barrier
TEAM_MIN_CONTRACTION = BLAS_MIN_CONTRACTION
# A recurrent matmul by a constant of its scan, with at least this contraction and
# columns, runs as the packed product (kernels/cpu/packed_product.py: register tiles
# over the weight packed in column blocks). A weight passed to a top-level scan
# unchanged is packed by the runtime once per weight version (a `PackedWeight`
# argument); another constant is packed by the kernel at every call that has
# PACK_MIN_ROW_STEPS rows x steps or more (fewer run as np.dot).
PACKED_DTYPES = tuple(BLOCK_COLUMNS)
PACKED_MIN_CONTRACTION = BLAS_MIN_CONTRACTION
PACKED_MIN_COLUMNS = 16
# Rows of an input projection's packed product at a time: about 64, a multiple of the
# biggest tile's rows (64 with 8-row tiles, 60 with 6-row ones), so that a team's
# units of whole tiles put each row in a tile of the shape it has on one thread
# (`_team_projections`).
PROJECTION_PANEL_ROWS = 64 // TILE_SHAPES[0][0] * TILE_SHAPES[0][0]
# A product of `run` (outside the scans) by a weight: the packed product up to this many
# rows (one thread), np.dot (BLAS, maybe threaded) beyond. The attention decoder's keys,
# (16 x 128) @ (128 x 256) once a call at S2: 16 us of a 0.37 ms call with np.dot; the
# call 0.496 -> 0.488 ms packed (ad-hoc, one process, a team of two).
RUN_PACKED_MAX_ROWS = 64

_MATH_MODULE_NAMES = sorted({impl.split(".")[0] for pair in mathlib.FUNCTIONS.values()
                             for impl in pair if "." not in impl and impl != "abs"})
_FLOAT_FUNCTIONS = {"tanh", "sigmoid", "exp", "expm1", "log", "log1p", "sqrt", "sin",
                    "cos", "erf", "softplus"}


@dataclass(frozen=True)
class PackedWeight:
    """A scan argument: the weight `source` (a Var of `run`: a param or a prologue
    output) packed for the packed product, which `run` takes as an argument of its own
    (the runtime packs it once per weight version)."""

    source: Var


@dataclass
class KernelSource:
    """The generated module: text, the objects it reads from its globals, and how
    `run` takes its arguments."""

    source: str
    globals: dict
    entry: str
    input_names: tuple           # program inputs, in order
    weight_slots: tuple          # ("param", name), ("prologue", index) or ("packed",
                                 # one of those: the weight packed by pack_weight), in order
    projection_row_bytes: int    # extra bytes per (step x batch row) of chunk buffers
    step_flops_per_row: float = 0.0   # per step and batch row: the body's 2-D matmuls
    scan_functions: tuple = field(default_factory=tuple)
    team_columns: int = 0        # > 0: `run` takes the team arguments (kernels/cpu/team.py);
                                 # the widest matmul whose columns a team splits
    team_dtype: str = "float32"  # dtype of the team's exchange buffer
    fixed_steps: int = 0         # steps of the longest top-level scan of static length
    team_shared_row_bytes: int = 0   # team_shared bytes per (step x batch row) ...
    team_shared_buffers: int = 0     # ... in this many buffers (each 64-byte aligned)
    team_weight_bytes: int = 0   # the bytes of the weights a team would split (also set in
                                 # the plain kernel: the runtime's choice, team.py)
    blas_guard: str = ""         # a Python expression of B and T, true when a call may
                                 # run BLAS; "" when the kernel never does (blas_threads.py)
    team_run_row_bytes: int = 0  # team_shared bytes per batch row of `run`'s products
                                 # whose rows a team shares (`_team_run_buffer`) ...
    team_run_buffers: int = 0    # ... in this many buffers (each 64-byte aligned)
    merged_products: int = 0     # recurrent products taking their input projection in
                                 # (`generate(..., merged=True)`, merged_projection.py)
    named_arguments: tuple = ()  # `run`'s arguments named after the program's inputs and
                                 # weights (names a cache key leaves out: cache.py)


def blas_guard(guards: list) -> str:
    """One expression from the guards of a kernel's BLAS lines ("" for none)."""
    distinct = sorted(set(guards))
    if "True" in distinct:
        return "True"
    return " or ".join(f"({guard})" for guard in distinct)


def dtype_expression(dtype: str) -> str:
    return "np.bool_" if dtype == "bool" else f"np.{dtype}"


@dataclass
class _ScanParts:
    """A scan function as written: its writer (in `CpuGenerator.functions`), its
    parameter names after B, T and chunk, its docstring line and its body."""
    writer: SourceWriter
    parameters: tuple
    docstring: str
    body: SourceWriter
    team_used: bool


class CpuScalarContext(ScalarContext):
    special_float_module = "np"

    def call(self, function: str, dtype: str, *args: str) -> str:
        if function not in mathlib.FUNCTIONS:
            raise UnsupportedError(f"The Numba CPU renderer has no math function "
                                   f"{function!r}.")
        float32_impl, other_impl = mathlib.FUNCTIONS[function]
        impl = float32_impl if dtype == "float32" else other_impl
        if function in _FLOAT_FUNCTIONS and dtype in ("float32", "float64"):
            args = [f"np.{dtype}({arg})" for arg in args]
        return f"{impl}({', '.join(args)})"


class _Function:
    """The state of one generated function: its names, lines and value table."""

    def __init__(self, names: Namespace):
        self.names = names
        self.body = SourceWriter()
        self.preamble = None         # SourceWriter for buffers allocated before the loop
        self.values = {}
        self.weight_constants = {}   # those of them passed from weights unchanged -> the
                                     # weight (a Var of `run`)
        self.constants = {}          # in a scan: constant Var -> argument name
        self.argument = None         # in a scan: (outer atom, hint) -> its argument name
        self.top_level = False       # a scan called by `run`
        self.packed = {}             # constant Var -> (buffer, start, packed by the host)
        self.team_used = False       # a matmul of this function splits its columns
        self.abort_return = None     # the statement leaving a scan function early
        self.direct = {}             # in a scan: body output -> its loop's extra stores
        self.body_outputs = ()       # in a scan: the body's outputs
        self.readers = {}            # in a scan: body Var -> the body eqns reading it
        self.ownership = None        # in a team scan: its owned columns (team_columns.py)
        self.stable = set()          # in a scan: body inputs, unchanged during a step
        self.y_step = "step"         # in a scan: the index of the step's row in y_all
        self.splits_output = False   # in a team scan: members write rank 0's output
        self.merged = {}             # in a scan: the output Var of a recurrent matmul that
                                     # takes its input projection in -> (Projection, the
                                     # source's argument name, the staging buffer's name)
        self.split_bytes_before = 0  # in a scan: team_weight_bytes before its body
        # in a scan: the arrays bound once before its loops (its constant arguments,
        # the buffers allocated there, views of those): a view of one is made once
        self.fixed = set()
        # in a scan: (constant Var, scale) -> (exp(scale x) array, its "too far" flag),
        # made once before the loops (factored_activation.py)
        self.factored_constants = {}

    def alloc(self, var: Var, shape_text: str, hint: str = "buf") -> str:
        name = self.names.fresh(hint)
        target = self.preamble if (self.preamble is not None and "T" not in var.shape) \
            else self.body
        target.line(f"{name} = new_array({shape_text}, {dtype_expression(var.dtype)})")
        if target is self.preamble:
            self.fixed.add(name)
        return name

    def view(self, name: str, source: str, expression: str) -> None:
        """`name = expression`, a view of the array `source` (a reshape): made once
        before the loops when `source` is fixed there, else where the body is. A view
        made at every step costs a reference count taken and dropped (two atomic
        operations on the source's memory record): ~25 ns a view on the 2-core VM,
        0.2 us a step of the attention decoder's seven (ad-hoc script)."""
        if self.preamble is not None and source in self.fixed:
            self.preamble.line(f"{name} = {expression}")
            self.fixed.add(name)
        else:
            self.body.line(f"{name} = {expression}")


class CpuGenerator:
    def __init__(self, program: Program, team: bool = False, merged: bool = False):
        self.program = program
        self.team = team             # write the team variant (see `_team_matmul`)
        # write the wide-batch variant: recurrent products take in their step's input
        # projection where the step only adds the two (merged_projection.py)
        self.merged = merged and not team
        self.merged_products = 0
        reserved = {"np", "math", "njit", "wide_vectors", "new_array", "full_array",
                    "B", "T", "chunk", "phase_slot",
                    "team_wait", "team_arrive", "team_await", "output_at",
                    "publish_output", "published_output",
                    "team_enter", "team_leave", "team_poll", "claim_unit", "end_claims",
                    "row_sum", "row_squared_deviations", "row_dot", "packed_product", "steps",
                    "packed_pair_product",
                    "block_dot",
                    # the chunk and step loops' own names
                    "chunk_steps", "chunk_start", "chunk_stop", "rows", "time_low", "step",
                    "t", "row", "y_step", "y_out",
                    *TEAM_ARGUMENTS, *LAUNCHER_NAMES, *POLLED_LAUNCHER_NAMES,
                    *_MATH_MODULE_NAMES}
        self.names = Namespace(reserved=reserved)
        self.ctx = CpuScalarContext()
        self.globals = {}
        self.functions = []          # SourceWriters of module-level functions
        self.scan_functions = []
        self.projection_row_bytes = 0
        self.step_flops_per_row = 0.0
        self.team_columns = 0
        self.team_dtype = None       # the dtype of the matmuls a team splits (one only)
        self.packed_products = False  # a matmul may run as a packed product
        self.blas_guards = []        # per np.dot line: when it may run (`_blas_line`)
        self.block_dots = False      # a one-column matmul sums by blocks (block_dot.py)
        self.fixed_steps = 0         # the longest top-level scan of static length
        self.team_shared_row_bytes = 0
        self.output_slots = 0        # team_output.OUTPUT_SLOTS taken by scans' epilogues
        self.late_poll = False       # a team's weight question asked in an epilogue
        self.team_shared_buffers = 0
        self.team_weight_bytes = 0
        self.team_run_row_bytes = 0   # `run`'s products shared by a team (_team_run_buffer)
        self.team_run_buffers = 0
        self._run_after_scan = False  # `run`'s lines now follow a scan call
        self._weight_slot_of = {}     # a weight Var of `run` -> its weight slot
        self._packed_arguments = []   # (`run` argument, weight slot) of each packed copy
        self._run_arguments = []      # `run`'s argument names
        self._named_arguments = []    # ... of them, those named after inputs and weights
        self._scan_parts = {}         # scan function name -> _ScanParts
        self._top_scan_calls = []     # (scan name, argument names, output names) in `run`
        self.weight_vars = {var for _, var in program.params}
        if program.prologue is not None:
            self.weight_vars |= {var for var in program.prologue.outputs
                                 if isinstance(var, Var)}

    # ---- module --------------------------------------------------------------------

    def generate(self) -> KernelSource:
        plan = lowering.plan_program(self.program, row_norms=True, epilogues=True)
        run_writer, weight_slots = self._render_run(plan)
        header = SourceWriter()
        header.line(f'"""Generated by rshop_ir.kernels.cpu ({GENERATOR_VERSION}); '
                    f'do not edit."""')
        header.line("import math")
        header.line("import numpy as np")
        header.line("from numba import njit")
        header.line("from rshop_ir.kernels.cpu.vector_width import wide_vectors")
        header.line("from rshop_ir.kernels.cpu.new_array import full_array, new_array")
        if self.team:
            header.line("from numba import prange")
            header.line("from rshop_ir.kernels.cpu.team_sync import (claim_unit, end_claims, "
                        "phase_slot, team_arrive, team_await, team_enter, team_leave, "
                        "team_wait)")
            header.line("from rshop_ir.kernels.cpu.team_poll import team_poll")
            header.line("from rshop_ir.kernels.cpu.team_launch import pin_member, unpin_member")
            header.line("from rshop_ir.kernels.cpu.team_output import (output_at, "
                        "publish_output, published_output)")
        else:     # the one-thread call's launcher asking beside it (team_poll.py)
            header.line("from numba import prange")
            header.line("from rshop_ir.kernels.cpu.team_poll import team_poll")
        if self.packed_products:
            header.line("from rshop_ir.kernels.cpu.packed_product import packed_product")
        if self.merged_products:
            header.line("from rshop_ir.kernels.cpu.packed_product import packed_pair_product")
        if self.block_dots:
            header.line("from rshop_ir.kernels.cpu.block_dot import block_dot")
        header.line("from rshop_ir.kernels.cpu.reductions import row_dot, "
                    "row_squared_deviations, row_sum")
        header.line("from rshop_ir.kernels.cpu.mathlib import (")
        for name in _MATH_MODULE_NAMES:
            header.line(f"    {name},")
        header.line(")")
        if self.globals:
            header.line("")
            header.line("# Set by the loader before the first call: "
                        + ", ".join(sorted(self.globals)))
        chunks = [header.text()]
        for writer in self.functions + [run_writer]:
            chunks.append("\n\n" + writer.text())
        if self.team_columns:     # the team's native launcher (team_launch.py)
            chunks.append("\n\n\n" + "\n".join(launcher_source(self._run_arguments)) + "\n")
        elif not self.team:       # one thread's launcher asking beside it (team_poll.py)
            chunks.append("\n\n\n" + "\n".join(polled_launcher_source(self._run_arguments))
                          + "\n")
        source = "".join(chunks)
        if source.count("np.dot(") != len(self.blas_guards):
            raise RuntimeError("A BLAS call was generated without its guard "
                               "(CpuGenerator._blas_line): a generator bug.")
        return KernelSource(source, dict(self.globals), "run",
                            tuple(self.program.input_names), tuple(weight_slots),
                            self.projection_row_bytes, self.step_flops_per_row,
                            tuple(self.scan_functions), self.team_columns,
                            self.team_dtype or "float32",
                            self.fixed_steps, self.team_shared_row_bytes,
                            self.team_shared_buffers, self.team_weight_bytes,
                            blas_guard(self.blas_guards), self.team_run_row_bytes,
                            self.team_run_buffers, self.merged_products,
                            tuple(self._named_arguments))

    def _blas_line(self, body, line: str, guard: str = "True") -> None:
        """Write `line`, a call of BLAS (`np.dot`), and record `guard`: a Python
        expression of the call's B and T (or "True") that holds whenever the line may
        run (KernelSource.blas_guard)."""
        self.blas_guards.append(guard)
        body.line(line)

    def _render_run(self, plan):
        function = _Function(self.names.child())
        program = self.program
        read = {atom for eqn in program.eqns for atom in eqn.inputs if isinstance(atom, Var)}
        read |= {atom for atom in program.outputs if isinstance(atom, Var)}
        arguments = ["B", "T", "chunk"]
        for var, name in zip(program.inputs, program.input_names):
            arguments.append(self._bind_array(function, var, f"in_{name}"))
            self._named_arguments.append(arguments[-1])
        weight_slots = []
        for name, var in program.params:
            if var in read:
                weight_slots.append(("param", name))
                self._weight_slot_of[var] = weight_slots[-1]
                arguments.append(self._bind_array(function, var, f"w_{name}"))
                self._named_arguments.append(arguments[-1])
        if program.prologue is not None:
            for index, var in enumerate(program.prologue.outputs):
                if isinstance(var, Var) and var in read:
                    weight_slots.append(("prologue", index))
                    self._weight_slot_of[var] = weight_slots[-1]
                    arguments.append(self._bind_array(function, var, f"pre_{index}"))
        for kind, item in plan.steps:
            if kind == "scan":
                self._emit_scan_call(function, item, top_level=True)
            else:
                self._emit_eqn(function, item)
        for name, slot in self._packed_arguments:
            arguments.append(name)
            weight_slots.append(("packed", slot))
        if self.team_columns or self.team_run_buffers:
            arguments += list(TEAM_ARGUMENTS)
        self._run_arguments = arguments
        results = [self._output_array(function, atom) for atom in program.outputs]
        if self.team_columns:     # the launcher's start and end handshake (team.py)
            function.body.line("team_leave(team_counter)")
        function.body.line(f"return ({', '.join(results)},)")
        inlined = self._run_as_scan(plan, arguments, results)
        if inlined is not None:
            return inlined, weight_slots
        writer = SourceWriter()
        writer.line(JIT_DECORATOR)
        with writer.block(f"def run({', '.join(arguments)}):"):
            writer.line("wide_vectors()")
            if self.team_columns:
                writer.line("team_enter(team_counter)")
                if not self.late_poll:
                    # the last member asks whether the weights changed (team_poll.py)
                    writer.line("team_poll(team_counter, team_rank, team_size)")
            writer.extend(function.body)
        return writer, weight_slots

    def _run_as_scan(self, plan, arguments, results):
        """`run` written as its one scan's function, or None.

        When `run` only calls one scan and returns that scan's results as they are (a
        compiled RNN layer), the scan's body becomes `run`'s: Numba then compiles and
        optimises the scan once, not once alone and again linked into `run`, which
        took about a third of an LSTM's first compile (BENCHMARKS run 33). The scan's
        parameters are bound from `run`'s arguments in one tuple assignment, so a
        permutation of names cannot overwrite a value before it is read.
        """
        if (self.team or self.team_columns or self.team_run_buffers
                or len(plan.steps) != 1 or len(self._top_scan_calls) != 1):
            return None
        scan_name, call_arguments, outputs = self._top_scan_calls[0]
        parts = self._scan_parts[scan_name]
        if (parts.team_used or list(results) != list(outputs)
                or not all(re.fullmatch(r"\w+", name) for name in call_arguments)):
            return None
        used = set(re.findall(r"\w+", "\n".join(parts.body.lines)))
        passed_as_is = {"B", "T", "chunk", *parts.parameters}
        if any(name in used for name in arguments if name not in passed_as_is):
            return None     # a name of `run` would be shadowed in the scan's body
        writer = SourceWriter()
        writer.line(JIT_DECORATOR)
        with writer.block(f"def run({', '.join(arguments)}):"):
            writer.line(parts.docstring)
            writer.line("wide_vectors()")
            bound = [(parameter, argument)
                     for parameter, argument in zip(parts.parameters, call_arguments)
                     if parameter != argument]
            if bound:
                writer.line(f"{', '.join(p for p, _ in bound)}, = "
                            f"{', '.join(a for _, a in bound)},")
            writer.extend(parts.body)
        self.functions.remove(parts.writer)
        self.scan_functions.remove(scan_name)
        return writer

    def _bind_array(self, function, var: Var, hint: str) -> str:
        name = function.names.fresh(hint)
        function.values[var] = ArrayValue(name, var.ndim, contiguous=True)
        return name

    def _output_array(self, function, atom) -> str:
        if isinstance(atom, Literal):
            raise UnsupportedError("A program output that is a literal constant is not "
                                   "supported by the Numba CPU generator.")
        value = function.values[atom]
        if isinstance(value, ArrayValue) and value.contiguous:
            return value.name
        return f"np.ascontiguousarray({value.array()})"

    # ---- shapes ----------------------------------------------------------------------

    @staticmethod
    def shape_text(shape) -> str:
        dims = [str(dim) for dim in shape]
        return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"

    def _array(self, function, atom, contiguous: bool = False) -> str:
        """A whole-array expression for `atom` (made C-contiguous if asked)."""
        if isinstance(atom, PackedWeight):
            return self._packed_argument(function, atom)
        if isinstance(atom, Literal):
            raise UnsupportedError(f"A literal operand is not supported here ({atom}).")
        value = function.values[atom]
        if contiguous and not value.contiguous:
            name = function.names.fresh("contiguous")
            function.body.line(f"{name} = np.ascontiguousarray({value.array()})")
            return name
        return value.array()

    def _packed_argument(self, function, packed: PackedWeight) -> str:
        """The name of `run`'s argument holding `packed` (added at its first use)."""
        if packed not in function.values:
            name = function.names.fresh("packed")
            function.values[packed] = ArrayValue(name, 1, contiguous=True)
            self._packed_arguments.append((name, self._weight_slot_of[packed.source]))
        return function.values[packed].array()

    def _element(self, function, atom, indices, out_shape) -> str:
        if isinstance(atom, Literal):
            return self.ctx.const(atom.value, atom.dtype)
        return function.values[atom].element(
            lowering.broadcast_index(atom.shape, out_shape, indices))

    def _loops(self, function, shape, hint="i") -> list:
        """Open one `for` per dim of `shape`; the caller closes them with _close."""
        indices = []
        for dim in shape:
            index = function.names.fresh(hint)
            function.body.line(f"for {index} in range({dim}):")
            function.body.depth += 1
            indices.append(index)
        return indices

    @staticmethod
    def _close(function, count: int) -> None:
        function.body.depth -= count

    # ---- eqns --------------------------------------------------------------------------

    def _emit_eqn(self, function, eqn) -> None:
        if lowering.is_elementwise(eqn):
            self._emit_elementwise(function, eqn)
            return
        handler = getattr(self, f"_op_{eqn.op}", None)
        if handler is None:
            raise UnsupportedError(f"The Numba CPU kernel generator does not support the "
                                   f"op {eqn.op!r} yet.")
        handler(function, eqn)

    def _emit_elementwise(self, function, eqn, out_name=None) -> None:
        if len(eqn.outputs) != 1:
            raise UnsupportedError(f"A {eqn.op!r} with {len(eqn.outputs)} outputs.")
        out = eqn.outputs[0]
        body = lowering.elementwise_as_body(eqn)
        operands = lowering.elementwise_operands(eqn)
        if out_name is None:
            out_name = function.alloc(out, self.shape_text(out.shape), "v")
        indices = self._loops(function, out.shape)
        inputs = [self._element(function, atom, indices, out.shape) for atom in operands]
        statements, results = lowering.scalar_statements(
            body, inputs, self.ctx, function.names.fresh)
        for name, expression in statements:
            function.body.line(f"{name} = {expression}")
        target = ArrayValue(out_name, out.ndim).element(indices)
        function.body.line(f"{target} = {results[0]}")
        self._close(function, len(indices))
        function.values[out] = ArrayValue(out_name, out.ndim)

    def _define(self, function, var: Var, expression: str, contiguous=True, hint="v",
                view_of=None):
        """`var` = `expression` under a fresh name; `view_of`: the array the expression
        views (see `_Function.view`)."""
        name = function.names.fresh(hint)
        if view_of is None:
            function.body.line(f"{name} = {expression}")
        else:
            function.view(name, view_of, expression)
        function.values[var] = ArrayValue(name, var.ndim, contiguous)
        return name

    def _op_slice(self, function, eqn) -> None:
        (x,), (out,) = eqn.inputs, eqn.outputs
        axis = normalize_axis(eqn.params["axis"], x.ndim)
        dim = x.shape[axis]
        start, stop = eqn.params["start"], eqn.params["stop"]
        if isinstance(dim, int):
            start, stop, _ = slice(start, stop).indices(dim)
        if axis == x.ndim - 1 and isinstance(dim, int):
            function.values[out] = LastAxisView(function.values[x], start, max(stop - start, 0))
            return
        index = [":"] * x.ndim
        index[axis] = f"{start}:{stop}"
        self._define(function, out, f"{self._array(function, x)}[{', '.join(index)}]",
                     contiguous=False)

    def _reshaped(self, function, eqn) -> None:
        (x,), (out,) = eqn.inputs[:1], eqn.outputs
        source = self._array(function, x, contiguous=True)
        self._define(function, out, f"{source}.reshape({self.shape_text(out.shape)})",
                     view_of=source)

    _op_reshape = _reshaped
    _op_expand_dims = _reshaped
    _op_squeeze = _reshaped

    def _op_transpose(self, function, eqn) -> None:
        perm = tuple(eqn.params["perm"])
        source = self._array(function, eqn.inputs[0])
        self._define(function, eqn.outputs[0],
                     f"np.ascontiguousarray({source}.transpose({perm!r}))")

    def _op_reverse(self, function, eqn) -> None:
        x = eqn.inputs[0]
        axis = normalize_axis(eqn.params["axis"], x.ndim)
        index = [":"] * x.ndim
        index[axis] = "::-1"
        source = self._array(function, x)
        self._define(function, eqn.outputs[0],
                     f"np.ascontiguousarray({source}[{', '.join(index)}])")

    def _op_shift(self, function, eqn) -> None:
        """Zeros, then the entries that move in copied as one slice (the size along the
        axis may be symbolic: the slice bounds are computed in the kernel)."""
        (x,), (out,) = eqn.inputs, eqn.outputs
        axis = normalize_axis(eqn.params["axis"], x.ndim)
        offset = int(eqn.params["offset"])
        source = self._array(function, x)
        name = function.alloc(out, self.shape_text(out.shape), "shifted")
        body, names = function.body, function.names
        kept, start = names.fresh("kept"), names.fresh("start")
        body.line(f"{name}[...] = {self.ctx.const(0, out.dtype)}")
        body.line(f"{kept} = max({x.shape[axis]} - {abs(offset)}, 0)")
        body.line(f"{start} = {max(offset, 0)}")
        target, origin = [":"] * x.ndim, [":"] * x.ndim
        target[axis] = f"{start}:{start} + {kept}"
        origin[axis] = f"{start} - {offset}:{start} - {offset} + {kept}"
        body.line(f"{name}[{', '.join(target)}] = {source}[{', '.join(origin)}]")
        function.values[out] = ArrayValue(name, out.ndim)

    def _op_concatenate(self, function, eqn) -> None:
        """One copy loop nest per part into a buffer allocated once before a scan's
        time loop (np.concatenate would allocate at every step)."""
        out = eqn.outputs[0]
        axis = normalize_axis(eqn.params["axis"], out.ndim)
        name = function.alloc(out, self.shape_text(out.shape), "joined")
        offset = "0"
        for atom in eqn.inputs:
            if isinstance(atom, Literal):
                raise UnsupportedError(f"A literal operand is not supported here ({atom}).")
            indices = self._loops(function, atom.shape)
            target = list(indices)
            target[axis] = f"{offset} + {indices[axis]}" if offset != "0" else indices[axis]
            function.body.line(f"{name}[{', '.join(target)}] = "
                               f"{function.values[atom].element(indices)}")
            self._close(function, len(indices))
            offset = f"{offset} + {atom.shape[axis]}" if offset != "0" \
                else str(atom.shape[axis])
        function.values[out] = ArrayValue(name, out.ndim)

    def _op_broadcast_to(self, function, eqn) -> None:
        out = eqn.outputs[0]
        name = function.alloc(out, self.shape_text(out.shape), "v")
        indices = self._loops(function, out.shape)
        element = self._element(function, eqn.inputs[0], indices, out.shape)
        function.body.line(f"{name}[{', '.join(indices) or '()'}] = {element}")
        self._close(function, len(indices))
        function.values[out] = ArrayValue(name, out.ndim)

    def _copy_with_index(self, function, eqn, index_of) -> None:
        """out[idx] = x[index_of(idx)]: a loop nest over the output."""
        x, out = eqn.inputs[0], eqn.outputs[0]
        name = function.alloc(out, self.shape_text(out.shape), "v")
        indices = self._loops(function, out.shape)
        element = function.values[x].element(index_of(indices))
        function.body.line(f"{name}[{', '.join(indices) or '()'}] = {element}")
        self._close(function, len(indices))
        function.values[out] = ArrayValue(name, out.ndim)

    def _op_repeat(self, function, eqn) -> None:
        x = eqn.inputs[0]
        axis = normalize_axis(eqn.params["axis"], x.ndim)
        repeats = int(eqn.params["repeats"])
        self._copy_with_index(function, eqn, lambda idx: [
            f"{i} // {repeats}" if position == axis else i for position, i in enumerate(idx)])

    def _op_tile(self, function, eqn) -> None:
        x = eqn.inputs[0]
        self._copy_with_index(function, eqn, lambda idx: [
            f"{i} % {dim}" if count != 1 else i
            for i, dim, count in zip(idx, x.shape, eqn.params["repeats"])])

    def _op_fill(self, function, eqn) -> None:
        out = eqn.outputs[0]
        value = self.ctx.const(eqn.params["value"], out.dtype)
        self._define(function, out, f"full_array({self.shape_text(out.shape)}, {value})")

    def _op_constant(self, function, eqn) -> None:
        out = eqn.outputs[0]
        array = np.asarray(eqn.params["value"], dtype=out.dtype).reshape(out.shape)
        name = self.names.fresh("CONSTANT")
        self.globals[name] = np.ascontiguousarray(array)
        function.values[out] = ArrayValue(name, out.ndim)

    def _op_gather(self, function, eqn) -> None:
        table, ids = eqn.inputs
        out = eqn.outputs[0]
        if normalize_axis(eqn.params["axis"], table.ndim) != 0:
            raise UnsupportedError("The Numba CPU generator supports gather on axis 0 "
                                   "(embedding lookups) only.")
        names = function.names
        table_array = self._array(function, table, contiguous=True)
        ids_array = self._array(function, ids, contiguous=True)
        flat_ids, rows, result, index, row, column = (
            names.fresh(h) for h in ("ids_flat", "table_rows", "gathered", "n", "row", "k"))
        width = int(np.prod([d for d in table.shape[1:]], dtype=np.int64)) \
            if table.ndim > 1 else 1
        body = function.body
        body.line(f"{flat_ids} = {ids_array}.reshape({ids_array}.size)")
        body.line(f"{rows} = {table_array}.reshape(({table_array}.shape[0], {width}))")
        body.line(f"{result} = new_array(({flat_ids}.size, {width}), {rows}.dtype)")
        with body.block(f"for {index} in range({flat_ids}.size):"):
            body.line(f"{row} = {flat_ids}[{index}]")
            body.line(f"if {row} < 0:")            # counted from the end, as Keras's take
            body.line(f"    {row} += {rows}.shape[0]")
            body.line(f"if {row} < 0 or {row} >= {rows}.shape[0]:")
            body.line("    raise IndexError('gather: an index is out of range of the "
                      "table (an embedding id >= input_dim?)')")
            with body.block(f"for {column} in range({width}):"):
                body.line(f"{result}[{index}, {column}] = {rows}[{row}, {column}]")
        self._define(function, out, f"{result}.reshape({self.shape_text(out.shape)})")

    def _rows_view(self, function, x: Var, axes) -> tuple:
        """x with `axes` moved last, as a 2-D (rows, reduced) C array; returns
        (name, reduced size expression, kept shape)."""
        others = [axis for axis in range(x.ndim) if axis not in axes]
        perm = tuple(others + list(axes))
        source = self._array(function, x)
        if perm != tuple(range(x.ndim)):
            source = f"{source}.transpose({perm!r})"
        name = function.names.fresh("rows")
        reduced = " * ".join(str(x.shape[axis]) for axis in axes) or "1"
        if len(axes) > 1:       # one term: `total / (6 * 4)`, not `total / 6 * 4`
            reduced = f"({reduced})"
        kept = [x.shape[axis] for axis in others]
        kept_size = " * ".join(str(d) for d in kept) or "1"
        if source in function.fixed and function.values[x].contiguous:
            function.view(name, source, f"{source}.reshape(({kept_size}, {reduced}))")
        else:
            function.body.line(f"{name} = np.ascontiguousarray({source})"
                               f".reshape(({kept_size}, {reduced}))")
        return name, reduced, kept

    def _row_buffer(self, function, kept, reduced, dtype: str, hint: str) -> str:
        """A (kept rows, prod(reduced)) C array (kept alone when `reduced` is empty) of
        `dtype`, allocated once before a scan's time loop when its size is known there
        (`_Function.alloc`), not at every step."""
        kept_size = " * ".join(str(d) for d in kept) or "1"
        shape = [kept_size] if not reduced else \
            [kept_size, " * ".join(str(d) for d in reduced)]
        return function.alloc(Var(dtype, (*kept, *reduced)), self.shape_text(shape), hint)

    def _reduction(self, function, eqn, kind: str) -> None:
        x, out = eqn.inputs[0], eqn.outputs[0]
        if kind in ("argmax", "argmin"):
            axes = (normalize_axis(eqn.params["axis"], x.ndim),)
        else:
            axes = normalize_axes(eqn.params["axes"], x.ndim)
        rows, reduced, kept = self._rows_view(function, x, axes)
        names = function.names
        row, k, accumulator, value = (names.fresh(h) for h in ("r", "k", "acc", "x"))
        body = function.body
        buffer_dtype = "int64" if kind.startswith("arg") else out.dtype
        result = self._row_buffer(function, kept, (), buffer_dtype, "reduced")
        with body.block(f"for {row} in range({rows}.shape[0]):"):
            if kind.startswith("arg"):
                best = names.fresh("best")
                better = ">" if kind == "argmax" else "<"
                body.line(f"{accumulator} = 0")
                body.line(f"{best} = {rows}[{row}, 0]")
                with body.block(f"for {k} in range(1, {reduced}):"):
                    body.line(f"{value} = {rows}[{row}, {k}]")
                    body.line(f"if {best} != {best}:")
                    body.line("    break")
                    with body.block(f"if {value} {better} {best} or {value} != {value}:"):
                        body.line(f"{best} = {value}")
                        body.line(f"{accumulator} = {k}")
            else:
                start = {"reduce_sum": "0", "reduce_mean": "0", "reduce_prod": "1"}
                combine = {"reduce_sum": "{a} + {x}", "reduce_mean": "{a} + {x}",
                           "reduce_prod": "{a} * {x}",
                           "reduce_max": "maximum_any({a}, {x})",
                           "reduce_min": "minimum_any({a}, {x})"}[kind]
                if kind in ("reduce_sum", "reduce_mean") and x.dtype == out.dtype \
                        and out.dtype in ("float32", "float64"):
                    # vectorised (kernels/cpu/reductions.py)
                    body.line(f"{accumulator} = row_sum({rows}, {row}, "
                              f"{self.ctx.const(0, out.dtype)})")
                    first = None
                elif kind in start:
                    body.line(f"{accumulator} = {self.ctx.const(start[kind], out.dtype)}")
                    first = "0"
                else:
                    body.line(f"{accumulator} = {rows}[{row}, 0]")
                    first = "1"
                if first is not None:
                    with body.block(f"for {k} in range({first}, {reduced}):"):
                        body.line(f"{accumulator} = " + combine.format(
                            a=accumulator, x=f"{rows}[{row}, {k}]"))
                if kind == "reduce_mean":
                    body.line(f"{accumulator} = {accumulator} / {reduced}")
            body.line(f"{result}[{row}] = {accumulator}")
        typed = result if buffer_dtype == out.dtype else \
            f"{result}.astype({dtype_expression(out.dtype)})"   # astype copies: only if needed
        self._define(function, out,
                     f"{typed}.reshape({self.shape_text(out.shape) if out.ndim else '()'})",
                     view_of=result if typed == result else None)

    def _op_reduce_sum(self, function, eqn):
        self._reduction(function, eqn, "reduce_sum")

    def _op_reduce_mean(self, function, eqn):
        self._reduction(function, eqn, "reduce_mean")

    def _op_reduce_max(self, function, eqn):
        self._reduction(function, eqn, "reduce_max")

    def _op_reduce_min(self, function, eqn):
        self._reduction(function, eqn, "reduce_min")

    def _op_reduce_prod(self, function, eqn):
        self._reduction(function, eqn, "reduce_prod")

    def _op_argmax(self, function, eqn):
        self._reduction(function, eqn, "argmax")

    def _op_argmin(self, function, eqn):
        self._reduction(function, eqn, "argmin")

    @contextmanager
    def _rows_along_axis(self, function, eqn, hint: str):
        """For an op of `eqn` along one axis of its first input x (`params["axis"]`):
        open the loop over x's rows (`_rows_view`) and yield (rows, the axis's size,
        the row index, the (rows, size) result buffer); after the block, define the
        output from the buffer, the axis back in its place (`_define_from_rows`)."""
        x, out = eqn.inputs[0], eqn.outputs[0]
        axis = normalize_axis(eqn.params["axis"], x.ndim)
        rows, reduced, kept = self._rows_view(function, x, (axis,))
        row = function.names.fresh("r")
        result = self._row_buffer(function, kept, (x.shape[axis],), out.dtype, hint)
        with function.body.block(f"for {row} in range({rows}.shape[0]):"):
            yield rows, reduced, row, result
        self._define_from_rows(function, out, result, x, axis)

    def _softmax(self, function, eqn, log: bool) -> None:
        dtype = eqn.outputs[0].dtype
        k, top, total = (function.names.fresh(h) for h in ("k", "top", "total"))
        body = function.body
        with self._rows_along_axis(function, eqn, "softmax") as (rows, reduced, row, result):
            body.line(f"{top} = {rows}[{row}, 0]")
            with body.block(f"for {k} in range(1, {reduced}):"):
                body.line(f"{top} = maximum_any({top}, {rows}[{row}, {k}])")
            exponential = self.ctx.call("exp", dtype, f"{rows}[{row}, {k}] - {top}")
            with body.block(f"for {k} in range({reduced}):"):
                body.line(f"{result}[{row}, {k}] = {exponential}")
            body.line(f"{total} = row_sum({result}, {row}, {self.ctx.const(0, dtype)})")
            with body.block(f"for {k} in range({reduced}):"):
                if log:
                    body.line(f"{result}[{row}, {k}] = {rows}[{row}, {k}] - {top} "
                              f"- math.log({total})")
                else:
                    body.line(f"{result}[{row}, {k}] = {result}[{row}, {k}] / {total}")

    def _define_from_rows(self, function, out: Var, result: str, x: Var, axis: int) -> None:
        """Define `out` from `result`, the (rows, x.shape[axis]) buffer an op along
        `axis` of `x` filled from `_rows_view(function, x, (axis,))`: `axis` back in
        its place."""
        moved = [d for i, d in enumerate(x.shape) if i != axis] + [x.shape[axis]]
        restored = f"{result}.reshape({self.shape_text(moved)})"
        if axis != x.ndim - 1:
            perm = list(range(x.ndim - 1))
            perm.insert(axis, x.ndim - 1)
            restored = f"np.ascontiguousarray({restored}.transpose({tuple(perm)!r}))"
            self._define(function, out, restored)      # a copy: at every step
        else:
            self._define(function, out, restored, view_of=result)

    def _op_softmax(self, function, eqn):
        self._softmax(function, eqn, log=False)

    def _op_log_softmax(self, function, eqn):
        self._softmax(function, eqn, log=True)

    def _cumulative(self, function, eqn, start: int, operator: str) -> None:
        """A running sum or product along one axis, in order, as numpy's."""
        k, total = (function.names.fresh(h) for h in ("k", "running"))
        body = function.body
        with self._rows_along_axis(function, eqn, "running") as (rows, reduced, row, result):
            body.line(f"{total} = {self.ctx.const(start, eqn.outputs[0].dtype)}")
            with body.block(f"for {k} in range({reduced}):"):
                body.line(f"{total} = {total} {operator} {rows}[{row}, {k}]")
                body.line(f"{result}[{row}, {k}] = {total}")

    def _op_cumsum(self, function, eqn):
        self._cumulative(function, eqn, 0, "+")

    def _op_cumprod(self, function, eqn):
        self._cumulative(function, eqn, 1, "*")

    def _op_layer_norm(self, function, eqn) -> None:
        x, gamma, beta = eqn.inputs
        out = eqn.outputs[0]
        axes = normalize_axes(eqn.params["axis"], x.ndim)
        if list(axes) != list(range(x.ndim - len(axes), x.ndim)):
            raise UnsupportedError("layer_norm over non-trailing axes is not supported by "
                                   "the Numba CPU generator.")
        rows, reduced, kept = self._rows_view(function, x, axes)
        names = function.names
        row, k, mean, scale = (names.fresh(h) for h in ("r", "k", "mean", "scale"))
        body = function.body
        sizes = [x.shape[axis] for axis in axes]
        count = reduced     # divided by in the rows' dtype where it is a known size
        if all(isinstance(size, int) for size in sizes):
            count = self.ctx.const(int(np.prod(sizes)), out.dtype)
        # gamma and beta along the one normalised axis: scaled in the same loop
        direct = len(axes) == 1 and all(isinstance(atom, Literal) or atom.shape == (sizes[0],)
                                        for atom in (gamma, beta))
        if direct:
            name = function.alloc(out, self.shape_text(out.shape), "layer_norm")
            normal = names.fresh("layer_norm_rows")
            kept_size = " * ".join(str(d) for d in kept) or "1"
            function.view(normal, name, f"{name}.reshape(({kept_size}, {sizes[0]}))")
            gamma_k, beta_k = (self._element(function, atom, [k], (sizes[0],))
                               for atom in (gamma, beta))
        else:
            normal = self._row_buffer(function, kept, sizes, out.dtype, "normalized")
        with body.block(f"for {row} in range({rows}.shape[0]):"):
            self._row_moments(body, rows, row, count, out.dtype, eqn.params["epsilon"],
                              mean, scale)
            with body.block(f"for {k} in range({reduced}):"):
                normalized = f"({rows}[{row}, {k}] - {mean}) / {scale}"
                if direct:
                    body.line(f"{normal}[{row}, {k}] = {normalized} * {gamma_k} + {beta_k}")
                else:
                    body.line(f"{normal}[{row}, {k}] = {normalized}")
        if direct:
            function.values[out] = ArrayValue(name, out.ndim)
            return
        normalized_var = Var(out.dtype, x.shape)
        self._define(function, normalized_var,
                     f"{normal}.reshape({self.shape_text(x.shape)})", view_of=normal)
        name = function.alloc(out, self.shape_text(out.shape), "layer_norm")
        indices = self._loops(function, out.shape)
        terms = [self._element(function, atom, indices, out.shape)
                 for atom in (normalized_var, gamma, beta)]
        function.body.line(f"{name}[{', '.join(indices)}] = {terms[0]} * {terms[1]} "
                           f"+ {terms[2]}")
        self._close(function, len(indices))
        function.values[out] = ArrayValue(name, out.ndim)

    def _row_moments(self, writer, rows: str, row: str, count: str, dtype: str,
                     epsilon: float, mean: str, scale: str) -> None:
        """`mean` and `scale` = sqrt(variance + epsilon) of `rows[row, :]` (a layer
        norm's), from two vectorised sums (kernels/cpu/reductions.py)."""
        zero = self.ctx.const(0, dtype)
        writer.line(f"{mean} = row_sum({rows}, {row}, {zero}) / {count}")
        writer.line(f"{scale} = math.sqrt(row_squared_deviations({rows}, {row}, {mean}, "
                    f"{zero}) / {count} + {self.ctx.const(epsilon, dtype)})")

    def _op_einsum(self, function, eqn) -> None:
        from rshop_ir.ops.linalg import parse_einsum

        input_labels, output_labels = parse_einsum(eqn.params["equation"])
        out = eqn.outputs[0]
        sizes = {}
        for labels, atom in zip(input_labels, eqn.inputs):
            for label, dim in zip(labels, atom.shape):
                sizes.setdefault(label, dim)
        contracted = sorted({label for labels in input_labels for label in labels}
                            - set(output_labels))
        name = function.alloc(out, self.shape_text(out.shape), "einsum")
        names = function.names
        index = {label: names.fresh(f"i_{label}") for label in output_labels + "".join(
            contracted)}
        body = function.body
        zero = self.ctx.const(0, out.dtype)
        factors = [function.values[atom].element([index[label] for label in labels])
                   for labels, atom in zip(input_labels, eqn.inputs)]
        target = ", ".join(index[label] for label in output_labels) or "()"

        def open_loops(labels) -> None:
            for label in labels:
                body.line(f"for {index[label]} in range({sizes[label]}):")
                body.depth += 1

        if not output_labels or not contracted:
            accumulator = names.fresh("acc")
            open_loops(output_labels)
            body.line(f"{accumulator} = {zero}")
            open_loops(contracted)
            body.line(f"{accumulator} += {' * '.join(factors)}")
            body.depth -= len(contracted)
            body.line(f"{name}[{target}] = {accumulator}")
            body.depth -= len(output_labels)
        else:
            # The output's last axis innermost, under the contracted loops: each element
            # still sums its terms from zero in the contracted loops' order (the same
            # result bit for bit), and the innermost loop runs along contiguous rows,
            # so it vectorises (a scalar sum per element does not: its order is fixed).
            # In a team, a (B, n) result whose columns index one operand only is
            # computed by each member over its own columns (team_columns.py).
            *outer, last = output_labels
            ownership = function.ownership
            owned = ownership is not None and owned_einsum_applies(eqn)

            def open_last() -> None:
                if owned:
                    index[last] = ownership.open_loop(body, sizes[last])[1]
                else:
                    open_loops([last])

            open_loops(outer)
            open_last()
            body.line(f"{name}[{', '.join(index[label] for label in output_labels)}] "
                      f"= {zero}")
            body.depth -= 1
            open_loops(contracted)
            open_last()
            factors = [function.values[atom].element([index[label] for label in labels])
                       for labels, atom in zip(input_labels, eqn.inputs)]
            body.line(f"{name}[{', '.join(index[label] for label in output_labels)}] "
                      f"+= {' * '.join(factors)}")
            body.depth -= len(contracted) + 1
            body.depth -= len(outer)
            if owned:
                ownership.own(out, [ArrayValue(name, out.ndim)])
        function.values[out] = ArrayValue(name, out.ndim)

    def _op_matmul(self, function, eqn) -> None:
        a, b = eqn.inputs
        out = eqn.outputs[0]
        if out in function.merged:
            self._merged_matmul(function, eqn)
            return
        if isinstance(a, Literal) or isinstance(b, Literal):
            raise UnsupportedError("matmul of a literal.")
        is_float = out.dtype in ("float32", "float64") and a.dtype == b.dtype == out.dtype
        if is_float and b.ndim == 2 and b.shape[1] == 1 and isinstance(b.shape[0], int):
            self._one_column_matmul(function, eqn)
            return
        if a.ndim == 2 and b.ndim == 2:
            a_value, b_value = function.values[a], function.values[b]
            blas_ready = is_float and a_value.contiguous and b_value.contiguous
            contraction = a.shape[1]
            if function.preamble is not None and all(
                    isinstance(d, int) for d in (contraction, out.shape[1])):
                self.step_flops_per_row = max(self.step_flops_per_row,
                                              2.0 * contraction * out.shape[1])
            splits = blas_ready and self._team_splits(function, b, contraction, out)
            if splits:   # recorded in the plain kernel too: the automatic team's rule
                self.team_weight_bytes += contraction * out.shape[1] \
                    * np.dtype(out.dtype).itemsize
            segments = splits and self.team and function.ownership is not None \
                and product_segments(out, function.readers.get(out, []),
                                     BLOCK_COLUMNS[out.dtype])
            if segments:
                self._owned_matmul(function, a, a_value, b_value, out, contraction, b,
                                   segments)
                return
            claims = blas_ready and self._run_claims(function, a, b, out)
            name = self._team_run_buffer(function, out, claims) if claims \
                else function.alloc(out, self.shape_text(out.shape), "product")
            if splits and self.team:
                self._team_matmul(function, a_value, b_value, name, out, contraction, b)
            else:
                self._plain_matmul(function, a_value, b_value, name, out, contraction,
                                   blas_ready, b, claims)
            function.values[out] = ArrayValue(name, 2)
            return
        if not is_float:
            raise UnsupportedError(f"matmul of {a.dtype} x {b.dtype} beyond 2-D is not "
                                   f"supported by the Numba CPU generator.")
        a_array = self._array(function, a, contiguous=True)
        b_array = self._array(function, b, contiguous=True)
        claims = b.ndim == 2 and self._run_claims(function, a, b, out)
        name = self._team_run_buffer(function, out, claims) if claims \
            else function.alloc(out, self.shape_text(out.shape), "product")
        if b.ndim == 2:
            rows = " * ".join(str(d) for d in a.shape[:-1])
            self._run_product(function, f"{a_array}.reshape(({rows}, {a.shape[-1]}))",
                              b, b_array, f"{name}.reshape(({rows}, {b.shape[-1]}))",
                              rows, out, claims)
        elif a.ndim == 2 or (a.ndim == b.ndim and a.shape[:-2] == b.shape[:-2]):
            # one product per batch item; a 2-D `a` (a weight on the left, `W @ x`)
            # multiplies every item
            batch = " * ".join(str(d) for d in b.shape[:-2])
            left, right, result, index = (function.names.fresh(h) for h in
                                          ("left", "right", "result", "n"))
            body = function.body
            if a.ndim == 2:
                left_item = a_array
            else:
                body.line(f"{left} = {a_array}.reshape(({batch}, {a.shape[-2]}, "
                          f"{a.shape[-1]}))")
                left_item = f"{left}[{index}]"
            body.line(f"{right} = {b_array}.reshape(({batch}, {b.shape[-2]}, {b.shape[-1]}))")
            body.line(f"{result} = {name}.reshape(({batch}, {out.shape[-2]}, "
                      f"{out.shape[-1]}))")
            with body.block(f"for {index} in range({batch}):"):
                self._blas_line(body, f"np.dot({left_item}, {right}[{index}], "
                                      f"{result}[{index}])")
        else:
            raise UnsupportedError(f"matmul of {a.type} and {b.type} (broadcast batch "
                                   f"dims) is not supported by the Numba CPU generator.")
        function.values[out] = ArrayValue(name, out.ndim)

    def _one_column_matmul(self, function, eqn) -> None:
        """`a @ w` with w of shape (K, 1) (a Dense(1): the score of additive attention):
        BLAS's call costs more than such a product, and a hand loop is one chain of
        dependent adds. Where K is whole blocks of columns, each block's partial sum in a
        fixed order (block_dot.py), then the partials in block order: a team member
        owning columns of `a` computes its blocks and exchanges the partials. Else one
        vectorised dot a row (kernels/cpu/reductions.py)."""
        a, b = eqn.inputs
        out = eqn.outputs[0]
        contraction = b.shape[0]
        rows = " * ".join(str(d) for d in a.shape[:-1]) or "1"
        left, vector, result, row = (function.names.fresh(h) for h in
                                     ("left", "vector", "result", "r"))
        body = function.body
        name = function.alloc(out, self.shape_text(out.shape), "product")
        a_array = self._array(function, a, contiguous=True)
        b_array = self._array(function, b, contiguous=True)
        function.view(left, a_array, f"{a_array}.reshape(({rows}, {contraction}))")
        function.view(vector, b_array, f"{b_array}.reshape({contraction})")
        function.view(result, name, f"{name}.reshape({rows})")
        function.values[out] = ArrayValue(name, out.ndim)
        if not block_dot_applies(eqn):
            zero = self.ctx.const(0, out.dtype)
            with body.block(f"for {row} in range({left}.shape[0]):"):
                body.line(f"{result}[{row}] = row_dot({left}, {row}, {vector}, {zero})")
            return
        self.block_dots = True
        width = BLOCK_COLUMNS[out.dtype]
        blocks = contraction // width
        partials = function.alloc(Var(out.dtype, (*a.shape[:-1], blocks)),
                                  self.shape_text((rows, blocks)), "partials")
        ownership = function.ownership
        owned = ownership is not None and a in ownership.owned
        block, total = function.names.fresh("block"), function.names.fresh("total")
        if owned:
            _, low, count = ownership.partition(contraction)
            first = function.names.fresh("first_block")
            body.line(f"{first} = {low} // {width}")
            block_range = f"{first}, {first} + {count} // {width}"
        else:
            block_range = str(blocks)
        with body.block(f"for {row} in range({rows}):"):
            with body.block(f"for {block} in range({block_range}):"):
                body.line(f"{partials}[{row}, {block}] = block_dot({left}, {row}, "
                          f"{vector}, {block})")
        if owned:     # `a` stays owned: a later reader needing it whole gathers it
            row_count = int(np.prod([int(d) for d in a.shape[1:-1]]))
            ownership.exchange_partials(body, partials, rows, row_count, contraction)
        with body.block(f"for {row} in range({rows}):"):
            body.line(f"{total} = {partials}[{row}, 0]")
            with body.block(f"for {block} in range(1, {blocks}):"):
                body.line(f"{total} += {partials}[{row}, {block}]")
            body.line(f"{result}[{row}] = {total}")

    def _plain_matmul(self, function, a_value, b_value, name, out, contraction,
                      blas_ready: bool, weight: Var, claims: int = 0) -> None:
        """`name = a @ b` on one thread: the packed product (kernels/cpu/
        packed_product.py) for a scan's constant (one the kernel packs itself: when the
        call has enough rows x steps to repay the copy), BLAS, or a hand loop where
        BLAS's call costs more than the product (small batch and contraction inside a
        scan). `claims`: a product of `run` whose rows a team shares (`_run_claims`)."""
        body = function.body
        if blas_ready and self._packing_applies(function, weight, contraction, out):
            buffer, start, by_host = self._packed_weight(function, b_value, weight,
                                                         contraction, out)
            product = (f"packed_product({self._contiguous(a_value)}, {buffer}, {start}, "
                       f"{name})")
            if by_host:
                body.line(product)
                return
            with body.block(f"if {buffer}.size > 0:"):
                body.line(product)
            with body.block("else:"):
                self._blas_line(body, f"np.dot({a_value.array()}, {b_value.array()}, {name})")
        elif blas_ready and function.preamble is None:
            self._run_product(function, self._contiguous(a_value), weight, b_value.array(),
                              name, f"{a_value.array()}.shape[0]", out, claims)
        elif blas_ready and isinstance(contraction, int) \
                and contraction >= BLAS_MIN_CONTRACTION:
            self._blas_line(body, f"np.dot({a_value.array()}, {b_value.array()}, {name})")
        elif blas_ready:
            with body.block(f"if B >= {BLAS_MIN_BATCH}:"):
                self._blas_line(body, f"np.dot({a_value.array()}, {b_value.array()}, {name})",
                                f"B >= {BLAS_MIN_BATCH}")
            with body.block("else:"):
                self._hand_matmul(function, a_value, b_value, name, out, contraction)
        else:
            self._hand_matmul(function, a_value, b_value, name, out, contraction)

    def _run_packs(self, weight, out) -> bool:
        """Whether a product of `run` by `weight` runs as the packed product (up to
        RUN_PACKED_MAX_ROWS rows): a weight of `run` big enough to pack."""
        contraction, columns = (weight.shape if isinstance(weight, Var) else (None, None))
        return weight in self._weight_slot_of and out.dtype in PACKED_DTYPES \
            and isinstance(contraction, int) and contraction >= PACKED_MIN_CONTRACTION \
            and isinstance(columns, int) and columns >= PACKED_MIN_COLUMNS

    def _run_claims(self, function, a: Var, weight, out) -> int:
        """Rows per batch row of a product of `run` whose rows the members of a team
        take in units (`_claimed_rows`), else 0: in the team variant, a packed product
        of rows B x static dims. Every member computed the attention decoder's keys
        whole, and the member asking whether the weights changed (team_poll.py) then
        came late to the first exchange by its question and the GEMM; with the rows
        claimed, the other member takes most of them meanwhile (S2, team of two:
        -1.3% to -3.2% a call in four processes, in-process A/B, 16 alternated rounds
        of 40 calls; BENCHMARKS.md run 24).

        Only before the first scan: after it, a member's own copy of the scan's output
        may be partial (its members write rank 0's, `splits_output`), and a product of
        it would write rows of garbage into the buffer every member reads."""
        if not self.team or function.preamble is not None or self._run_after_scan \
                or not self._run_packs(weight, out) or a.shape[0] != "B" \
                or not all(isinstance(d, int) for d in out.shape[1:]):
            return 0
        return int(np.prod(a.shape[1:-1], dtype=np.int64))

    def _team_run_buffer(self, function, out: Var, rows_per_batch: int) -> str:
        """The buffer of a product of `run` whose rows a team shares: on a team (and
        rows few enough for the packed product), a view of the end of `team_shared`
        that every member sees (the scans' chunk buffers take its start); else
        private. Each such buffer lies below the previous one, 64-byte aligned."""
        body, names = function.body, function.names
        name, at = names.fresh("product"), names.fresh("team_run_at")
        row_bytes = int(np.prod(out.shape[1:], dtype=np.int64)) * np.dtype(out.dtype).itemsize
        self.team_run_row_bytes += row_bytes
        self.team_run_buffers += 1
        dtype, shape = dtype_expression(out.dtype), self.shape_text(out.shape)
        with body.block(f"if team_size > 1 and B * {rows_per_batch} <= "
                        f"{RUN_PACKED_MAX_ROWS}:"):
            body.line(f"{at} = (team_shared.size - B * {self.team_run_row_bytes} - "
                      f"{64 * self.team_run_buffers}) // 64 * 64")
            body.line(f"{name} = team_shared[{at}:{at} + B * {row_bytes}].view({dtype})"
                      f".reshape({shape})")
        with body.block("else:"):
            body.line(f"{name} = new_array({shape}, {dtype})")
        return name

    def _claimed_rows(self, function, left: str, buffer: str, start: str,
                      out_name: str, rows: str) -> None:
        """`out_name = left @ packed` with the rows taken by a team's members in units
        of the biggest tile (each row's sums are added as on one thread), then a
        barrier: all rows are written. The barrier's result is not needed: after an
        abort, the scan's first exchange returns, and the runtime discards the call."""
        body, names = function.body, function.names
        left_all, out_all = names.fresh("left_all"), names.fresh("out_all")
        with body.block("if team_size > 1:"):
            body.line(f"{left_all} = {left}")
            body.line(f"{out_all} = {out_name}")
            self._claim_units(function, rows, TILE_SHAPES[0][0], lambda low, high: body.line(
                f"packed_product({left_all}[{low}:{high}], {buffer}, {start}, "
                f"{out_all}[{low}:{high}])"))
            body.line("team_wait(team_counter, team_size, team_rank)")
        with body.block("else:"):
            body.line(f"packed_product({left}, {buffer}, {start}, {out_name})")

    @staticmethod
    def _claim_units(function, rows: str, unit: int, emit) -> None:
        """Claim `unit`-row units of `rows` rows from the team's shared count until none
        is left (team_sync.claim_unit), `emit(low, high)` writing each one's work."""
        loop, names = function.body, function.names
        units, claim, low, high = (names.fresh(hint) for hint in
                                   ("units", "claim", "row_low", "row_high"))
        loop.line(f"{units} = ({rows} + {unit - 1}) // {unit}")
        with loop.block("while True:"):
            loop.line(f"{claim} = claim_unit(team_counter, team_rank, {units})")
            with loop.block(f"if {claim} < 0:"):
                loop.line("break")
            loop.line(f"{low} = {claim} * {unit}")
            loop.line(f"{high} = {smaller(rows, f'{low} + {unit}')}")
            emit(low, high)
        loop.line(f"end_claims(team_counter, team_rank, team_size, {units})")

    def _run_product(self, function, left: str, weight, right: str, out_name: str,
                     rows: str, out, claims: int = 0) -> None:
        """`out_name = left @ right` (2-D C arrays) in `run`: by a weight of `run` big
        enough to pack, the packed product over the copy the runtime packs once per
        weight version for up to RUN_PACKED_MAX_ROWS rows (`claims`: its rows shared
        by a team's members, `_run_claims`), else np.dot."""
        body = function.body
        if not self._run_packs(weight, out):
            self._blas_line(body, f"np.dot({left}, {right}, {out_name})")
            return
        buffer = self._packed_argument(function, PackedWeight(weight))
        start = function.names.fresh("packed_start")
        body.line(f"{start} = {aligned_start_source(buffer, np.dtype(out.dtype).itemsize)}")
        with body.block(f"if {rows} <= {RUN_PACKED_MAX_ROWS}:"):
            if claims:
                self._claimed_rows(function, left, buffer, start, out_name, rows)
            else:
                body.line(f"packed_product({left}, {buffer}, {start}, {out_name})")
        with body.block("else:"):
            self._blas_line(body, f"np.dot({left}, {right}, {out_name})",
                            f"{rows} > {RUN_PACKED_MAX_ROWS}")
        self.packed_products = True

    def _packing_applies(self, function, weight: Var, contraction, out) -> bool:
        """A matmul inside a scan by one of the scan's constants, big enough to pack."""
        return function.preamble is not None and weight in function.constants \
            and out.dtype in PACKED_DTYPES \
            and isinstance(contraction, int) and contraction >= PACKED_MIN_CONTRACTION \
            and isinstance(out.shape[1], int) and out.shape[1] >= PACKED_MIN_COLUMNS

    @staticmethod
    def _contiguous(value) -> str:
        """The expression of a matmul's left operand typed C-contiguous (a view, e.g.
        rows of a chunk buffer, is copied), as the tile and row products need."""
        if isinstance(value, ArrayValue):
            return value.array()
        return f"np.ascontiguousarray({value.array()})"

    def _packed_weight(self, function, b_value, weight: Var, contraction, out) -> tuple:
        """(buffer, start, by_host): the names of the weight packed for the packed
        product (kernels/cpu/packed_product.py) and whether the runtime packed it. A
        weight passed to a top-level scan unchanged comes packed, as an argument
        (`PackedWeight`); another constant is copied in the preamble when the call has
        at least PACK_MIN_ROW_STEPS rows x steps (an empty buffer otherwise). One copy
        per weight, whatever number of matmuls use it."""
        if weight not in function.packed and weight in function.weight_constants:
            itemsize = np.dtype(out.dtype).itemsize
            buffer = function.argument(PackedWeight(function.weight_constants[weight]),
                                       "packed")
            start = function.names.fresh("packed_start")
            function.preamble.line(f"{start} = {aligned_start_source(buffer, itemsize)}")
            function.packed[weight] = (buffer, start, True)
            self.packed_products = True
        if weight not in function.packed:
            names, preamble = function.names, function.preamble
            buffer, start = names.fresh("row_weight"), names.fresh("row_weight_start")
            itemsize = np.dtype(out.dtype).itemsize
            size = row_buffer_size(contraction, out.shape[1], itemsize)
            preamble.line(f"{buffer} = new_array({size} if B * steps >= "
                          f"{PACK_MIN_ROW_STEPS} else 0, {dtype_expression(out.dtype)})")
            preamble.line(f"{start} = {aligned_start_source(buffer, itemsize)}")
            with preamble.block(f"if {buffer}.size > 0:"):
                for line in packing_source(
                        b_value.array(), "0", str(out.shape[1]), buffer, start, contraction,
                        itemsize, [names.fresh(h) for h in ("block", "k", "j", "row")]):
                    preamble.line(line)
            function.packed[weight] = (buffer, start, False)
            self.packed_products = True
        return function.packed[weight]

    def _team_splits(self, function, weight, contraction, out) -> bool:
        """A recurrent matmul of a top-level scan by a weight passed to the scan
        unchanged (packed by the runtime), with static sizes: its columns may be split
        over a team of threads (all split matmuls share one exchange buffer, so they
        must have one dtype)."""
        return weight in function.weight_constants \
            and self._packing_applies(function, weight, contraction, out) \
            and contraction >= TEAM_MIN_CONTRACTION and out.shape[1] >= TEAM_MIN_COLUMNS \
            and self.team_dtype in (None, out.dtype)

    def _team_matmul(self, function, a_value, b_value, name, out, contraction,
                     weight_var: Var) -> None:
        """`name = a @ b`, each member of the team computing its block of columns.

        Member `team_rank` owns whole column blocks of the packed weight (kernels/cpu/
        packed_product.py lays each block's columns out contiguously, so its share is
        one contiguous stretch of the buffer, which stays in its core's cache between
        steps), computes them (`packed_product`) into its row of the exchange buffer
        `team_pool`, waits at the barrier, then gathers every member's block into its
        own `name`; everything else of the step runs on every member (the same
        numbers), so one barrier per split matmul suffices. Rows (phase % 2) *
        team_size + member alternate between barriers: a block is rewritten two
        barriers later, when every member has read it.
        """
        names, preamble, body = function.names, function.preamble, function.body
        columns = out.shape[1]
        block_columns = BLOCK_COLUMNS[out.dtype]
        buffer, start, _ = self._packed_weight(function, b_value, weight_var, contraction,
                                               out)
        width, low, count = (names.fresh(h) for h in ("team_width", "team_low",
                                                      "team_count"))
        # whole blocks a member: its columns start at a block boundary
        preamble.line(f"{width} = (({columns} + {block_columns - 1}) // {block_columns} "
                      f"+ team_size - 1) // team_size * {block_columns} "
                      f"if team_size > 1 else 0")
        preamble.line(f"{low} = {smaller(columns, f'team_rank * {width}')}")
        preamble.line(f"{count} = {smaller(columns, f'{low} + {width}')} - {low}")
        phase, part, member, member_low, member_count, member_slot, i, j = (
            names.fresh(h) for h in ("phase", "team_part", "member", "member_low",
                                     "member_count", "member_slot", "i", "j"))
        with body.block("if team_size > 1:"):
            body.line(f"{phase} = team_counter[phase_slot(team_rank)]")
            # A member's block holds its `count` columns a row (fewer for the last).
            body.line(f"{part} = team_pool[({phase} % 2) * team_size + team_rank]"
                      f"[:B * {count}].reshape((B, {count}))")
            # its blocks start `low` columns x `contraction` rows into the packed weight
            body.line(f"packed_product({self._contiguous(a_value)}, {buffer}, "
                      f"{start} + {low} * {contraction}, {part})")
            with body.block("if not team_wait(team_counter, team_size, team_rank):"):
                body.line(function.abort_return)
            with body.block(f"for {member} in range(team_size):"):
                body.line(f"{member_low} = {smaller(columns, f'{member} * {width}')}")
                body.line(f"{member_count} = {smaller(columns, f'{member_low} + {width}')} - "
                          f"{member_low}")
                # element by element: a view made at every step costs a reference count
                body.line(f"{member_slot} = ({phase} % 2) * team_size + {member}")
                with body.block(f"for {i} in range(B):"):
                    with body.block(f"for {j} in range({member_count}):"):
                        body.line(f"{name}[{i}, {member_low} + {j}] = "
                                  f"team_pool[{member_slot}, {i} * {member_count} + {j}]")
        with body.block("else:"):
            self._plain_matmul(function, a_value, b_value, name, out, contraction, True,
                               weight_var)
        function.team_used = True
        self.team_columns = max(self.team_columns, columns)
        self.team_dtype = out.dtype

    def _owned_matmul(self, function, left_var, a_value, b_value, out, contraction,
                      weight_var, segments) -> None:
        """`out = a @ b` where each member computes and keeps only its columns of each
        segment (a slice read from the product, or the whole product; see
        kernels/cpu/team_columns.py): one packed product per segment into a buffer of
        the member's columns, copied to those columns of the segment's value. Nothing
        is exchanged here; a value is gathered where something reads it whole."""
        ownership, names = function.ownership, function.names
        preamble, body = function.preamble, function.body
        buffer, start, _ = self._packed_weight(function, b_value, weight_var, contraction,
                                               out)
        left = self._contiguous(a_value)
        if not isinstance(a_value, ArrayValue):    # a copy, made once for every segment
            copy = names.fresh("left")
            body.line(f"{copy} = {left}")
            left = copy
        # A segment of a product of the step's input (its state) may wait until it is
        # read, or until this member waits at an exchange (ColumnOwnership.defer).
        stable = left_var in function.stable
        for var, low_column, high_column in segments:
            columns = high_column - low_column
            _, low, count = ownership.partition(columns)
            part = names.fresh("own_part")
            preamble.line(f"{part} = new_array((B, {count}), {dtype_expression(out.dtype)})")
            name = function.alloc(var, self.shape_text(var.shape), "product")

            def emit(writer, name=name, part=part, low=low, columns=columns,
                     offset=f"{start} + ({low_column} + {low}) * {contraction}"):
                writer.line(f"packed_product({left}, {buffer}, {offset}, {part})")
                row = names.fresh("i")
                with writer.block(f"for {row} in range(B):"):
                    local, column = ownership.open_loop(writer, columns)
                    writer.line(f"{name}[{row}, {column}] = {part}[{row}, {local}]")
                    writer.depth -= 1

            function.values[var] = ArrayValue(name, 2)
            ownership.own(var, [ArrayValue(name, 2)])
            if stable:
                ownership.defer(var, emit)
            else:
                emit(body)
            if var is not out:
                ownership.done.update(id(eqn) for eqn in function.readers[out]
                                      if eqn.outputs[0] is var)
        function.team_used = True
        self.team_columns = max(self.team_columns, out.shape[1])
        self.team_dtype = out.dtype

    def _hand_matmul(self, function, a_value, b_value, name, out, contraction) -> None:
        names, body = function.names, function.body
        i, j, k, a_ik = (names.fresh(h) for h in ("i", "j", "k", "a_ik"))
        rows, columns = out.shape
        with body.block(f"for {i} in range({rows}):"):
            with body.block(f"for {j} in range({columns}):"):
                body.line(f"{name}[{i}, {j}] = {self.ctx.const(0, out.dtype)}")
            with body.block(f"for {k} in range({contraction}):"):
                body.line(f"{a_ik} = {a_value.element([i, k])}")
                with body.block(f"for {j} in range({columns}):"):
                    body.line(f"{name}[{i}, {j}] += {a_ik} * {b_value.element([k, j])}")

    # ---- scans -------------------------------------------------------------------------

    def _emit_scan_call(self, function, plan, top_level: bool = False) -> None:
        scan_name, arguments, team = self._render_scan(plan, top_level)
        call_arguments = ["B", "T", "chunk"]
        for atom in arguments:
            call_arguments.append(self._array(function, atom, contiguous=True))
        if team:
            call_arguments += list(TEAM_ARGUMENTS)
        outputs = [function.names.fresh("scan_out") for _ in plan.eqn.outputs]
        function.body.line(f"{', '.join(outputs)}, = {scan_name}({', '.join(call_arguments)})")
        if top_level:
            self._top_scan_calls.append((scan_name, call_arguments[3:], outputs))
        self._run_after_scan = self._run_after_scan or top_level
        bound = list(plan.eqn.outputs)
        if plan.epilogue is not None:    # the scan returns the output layer's result
            bound[0] = plan.epilogue.output
        for var, name in zip(bound, outputs):
            function.values[var] = ArrayValue(name, var.ndim)

    def _render_scan(self, plan, top_level: bool = False) -> tuple:
        """Write one module-level function for a scan; returns (name, outer args,
        whether it takes the team arguments). The recurrent matmuls of a scan may run
        as packed products; those of a top-level scan may split their columns over a
        team of threads (`_team_matmul`)."""
        scan_name = self.names.fresh(f"scan_{len(self.scan_functions)}")
        self.scan_functions.append(scan_name)
        params = plan.params
        body_program = plan.body
        function = _Function(self.names.child())
        names = function.names
        outer_arguments = []
        argument_names = []

        def argument(atom, hint):
            if isinstance(atom, Literal):
                raise UnsupportedError("A literal scan input is not supported.")
            if atom in outer_arguments:
                return argument_names[outer_arguments.index(atom)]
            outer_arguments.append(atom)
            argument_names.append(names.fresh(hint))
            return argument_names[-1]
        function.argument = argument
        function.top_level = top_level

        preamble, loop = SourceWriter(), SourceWriter()
        groups, inner = plan.groups, plan.body_groups
        row_bytes = 0
        projections = []
        sequences = []           # (inner var, kind, data)
        for index, (outer, body_var) in enumerate(zip(groups["sequences"],
                                                      inner["sequences"])):
            projection = plan.projections.get(index)
            if projection is None:
                sequences.append((body_var, "direct", argument(outer, f"seq_{index}")))
                continue
            source = argument(projection.source, f"x_{index}")
            weight = argument(projection.weight, f"kernel_{index}")
            chain_operands = {}
            for eqn in projection.chain:
                for atom in lowering.elementwise_operands(eqn):
                    if isinstance(atom, Var) and atom.shape == projection.output.shape:
                        continue
                    if isinstance(atom, Var):
                        chain_operands[atom] = argument(atom, "chain")
            projections.append((index, projection, source, weight, chain_operands))
            sequences.append((body_var, "projection", index))
        states = [argument(atom, f"state0_{k}") for k, atom in enumerate(groups["states"])]
        readout = argument(groups["readout"][0], "readout0") if groups["readout"] else None
        constants = [argument(atom, f"constant_{k}")
                     for k, atom in enumerate(groups["constants"])]
        mask = argument(groups["mask"][0], "mask") if groups["mask"] else None
        epilogue = plan.epilogue if top_level else None
        if epilogue is not None:
            epilogue_weight = argument(epilogue.weight, "kernel_out")
            epilogue_operands = {}
            for eqn in epilogue.chain:
                for atom in lowering.elementwise_operands(eqn):
                    if isinstance(atom, Var) and atom.shape != epilogue.output.shape:
                        epilogue_operands[atom] = argument(atom, "chain")
            row_bytes += epilogue.weight.shape[0] * np.dtype(epilogue.output.dtype).itemsize

        # --- preamble: step count, states, outputs, buffers
        if groups["sequences"]:
            first = sequences[0]
            source_name = first[2] if first[1] == "direct" else projections[0][2]
            preamble.line(f"steps = {source_name}.shape[1]")
            length = groups["sequences"][0].shape[1]
        else:
            length = int(params["length"])
            preamble.line(f"steps = {length}")
        if top_level and isinstance(length, int):
            self.fixed_steps = max(self.fixed_steps, length)
        for position, (body_var, kind, data) in enumerate(sequences):
            if kind == "projection":
                continue
        y_var = body_program.outputs[0]
        if not all(isinstance(atom, Var) for atom in body_program.outputs):
            raise UnsupportedError("A scan body returning a literal is not supported by "
                                   "the Numba CPU generator.")
        state_buffers = []
        for k, (name, state_var) in enumerate(zip(states, inner["states"])):
            current, following = names.fresh(f"state_{k}"), names.fresh(f"next_state_{k}")
            preamble.line(f"{current} = {name}.copy()")
            preamble.line(f"{following} = new_array({current}.shape, "
                          f"{dtype_expression(state_var.dtype)})")
            state_buffers.append((current, following))
            function.values[state_var] = ArrayValue(current, state_var.ndim)
        y_shape = self.shape_text(y_var.shape)
        y_dtype = dtype_expression(y_var.dtype)
        # new_array and loops, not np.zeros / np.empty_like: each of those is one more
        # Numba overload compiled into every kernel (~0.1 s of a first compile;
        # new_array.py).
        preamble.line(f"y_last = new_array({y_shape}, {y_dtype})")
        self._fill_zeros(preamble, names, "y_last", y_var.ndim)
        preamble.line(f"y_next = new_array({y_shape}, {y_dtype})")
        function.y_step = "step"
        function.split_bytes_before = self.team_weight_bytes
        if projections or epilogue is not None:
            preamble.line(f"chunk_steps = {larger('1', smaller('chunk', 'steps'))}")
        if epilogue is not None:
            # y_all holds the chunk's rows of y; the output layer writes y_out after them
            all_shape = self.shape_text((y_var.shape[0], "chunk_steps", *y_var.shape[1:]))
            out_shape = self.shape_text(("B", "steps", epilogue.weight.shape[1]))
            preamble.line(f"y_all = new_array({all_shape}, {y_dtype})")
            preamble.line(f"y_out = new_array({out_shape}, "
                          f"{dtype_expression(epilogue.output.dtype)})")
            function.y_step = "y_step"
        elif params["return_sequences"]:
            all_shape = self.shape_text((y_var.shape[0], "steps", *y_var.shape[1:]))
            # every step writes its row of y_all (masked steps the carried y)
            preamble.line(f"y_all = new_array({all_shape}, {y_dtype})")
        readout_buffers = None
        if readout is not None:
            readout_buffers = (names.fresh("readout"), names.fresh("next_readout"))
            preamble.line(f"{readout_buffers[0]} = {readout}.copy()")
            preamble.line(f"{readout_buffers[1]} = new_array({readout_buffers[0]}.shape, "
                          f"{dtype_expression(inner['readout'][0].dtype)})")
            function.values[inner["readout"][0]] = ArrayValue(readout_buffers[0],
                                                              inner["readout"][0].ndim)
        for name, constant_var in zip(constants, inner["constants"]):
            function.values[constant_var] = ArrayValue(name, constant_var.ndim)
            function.fixed.add(name)
        function.constants = dict(zip(inner["constants"], constants))
        if top_level:
            function.weight_constants = {
                body_var: outer for body_var, outer in zip(inner["constants"],
                                                           groups["constants"])
                if outer in self.weight_vars}
        if self.merged and top_level:
            function.preamble = preamble
            projections, sequences = self._merge_projections(function, body_program,
                                                             projections, sequences)
        for _, projection, _, _, _ in projections:
            in_size, out_size = projection.weight.shape
            row_bytes += (in_size + out_size) * np.dtype(projection.output.dtype).itemsize
        self.projection_row_bytes = max(self.projection_row_bytes, row_bytes)
        results = ["y_out" if epilogue is not None else
                   "y_all" if params["return_sequences"] else "y_last"]
        results += [current for current, _ in state_buffers]
        function.abort_return = f"return ({', '.join(results)},)"
        chunk_buffers = {}
        for index, projection, source, weight, _ in projections:
            chunk_buffers[index] = (names.fresh(f"staged_{index}"),
                                    names.fresh(f"projected_{index}"))

        # --- the steps of a chunk (first: whether a team splits a matmul decides how
        # the chunk's input projection is computed)
        backwards = bool(params["go_backwards"])
        function.preamble = preamble
        if self.team and top_level and mask is None:
            self._start_ownership(function, body_program, inner["states"], state_buffers)
        step_loop = function.body = SourceWriter()
        with step_loop.block("for step in range(chunk_start, chunk_stop):"):
            step_loop.line("t = steps - 1 - step" if backwards else "t = step")
            step_loop.line("row = (t - time_low) * B")
            if epilogue is not None:
                step_loop.line("y_step = step - chunk_start")
            for body_var, kind, data in sequences:
                if kind == "direct":
                    function.values[body_var] = SequenceStep(data, "t", body_var.ndim)
                elif kind == "merged":    # its product holds it (`_merged_matmul`)
                    function.values[body_var] = data
                else:
                    function.values[body_var] = ChunkRows(chunk_buffers[data][1], "row")
            function.direct = {} if mask is not None else self._direct_targets(
                plan, state_buffers, readout_buffers)
            self._emit_body(function, body_program)
            if function.ownership is not None:
                self._gather_outputs(function, body_program, inner["states"])
            self._render_commit(function, plan, state_buffers, readout_buffers, mask)

        # --- the loop over chunks: the chunk's input projection, then its steps
        function.body = loop
        shared = bool(projections) and function.team_used
        self._projection_buffers(function, projections, chunk_buffers, shared)
        step_chunk = "chunk_steps" if projections or epilogue is not None \
            else larger("1", "steps")
        with loop.block(f"for chunk_start in range(0, steps, {step_chunk}):"):
            loop.line(f"chunk_stop = {smaller(f'chunk_start + {step_chunk}', 'steps')}")
            loop.line("rows = (chunk_stop - chunk_start) * B")
            loop.line("time_low = steps - chunk_stop" if backwards else
                      "time_low = chunk_start")
            if shared:
                with loop.block("if team_size > 1:"):
                    self._team_projections(function, projections, chunk_buffers)
                with loop.block("else:"):
                    self._projections(function, projections, chunk_buffers, "0", "rows")
            else:
                self._projections(function, projections, chunk_buffers, "0", "rows")
            loop.extend(step_loop)
            if epilogue is not None:
                self._epilogue(function, epilogue, epilogue_weight, epilogue_operands)
        if function.ownership is not None:
            # the states kept owned between steps, whole in the results
            ownership = function.ownership
            for state_var, (current, _) in zip(inner["states"], state_buffers):
                if state_var in ownership.kept:
                    ownership.own(state_var, [ArrayValue(current, 2)])
                    ownership.gather(loop, state_var)
            self.team_columns = max(self.team_columns, ownership.widest)
        if function.splits_output:    # until every member's rows of the output are written
            with loop.block("if team_size > 1:"):
                with loop.block("if not team_wait(team_counter, team_size, team_rank):"):
                    loop.line(function.abort_return)
        body = SourceWriter()
        body.extend(preamble)
        body.extend(loop)
        body.line(f"return ({', '.join(results)},)")
        docstring = (f'"""scan {plan.layout}; go_backwards={backwards}, '
                     f'return_sequences={bool(params["return_sequences"])}."""')
        writer = SourceWriter()
        writer.line(JIT_DECORATOR)
        team_arguments = list(TEAM_ARGUMENTS) if function.team_used else []
        signature = ", ".join(["B", "T", "chunk", *argument_names, *team_arguments])
        with writer.block(f"def {scan_name}({signature}):"):
            writer.line(docstring)
            writer.line("wide_vectors()")
            writer.extend(body)
        self.functions.append(writer)
        self._scan_parts[scan_name] = _ScanParts(writer, tuple(argument_names),
                                                 docstring, body, function.team_used)
        return scan_name, outer_arguments, function.team_used

    def _merge_projections(self, function, body_program, projections, sequences) -> tuple:
        """(projections, sequences) of a top-level scan of the wide-batch variant:
        each projection that a recurrent matmul of the step can take in
        (merged_projection.py; both weights packed by the runtime; after the GEMM at
        most additions of weight-like values, a bias) leaves the chunk's GEMMs, its
        sequence read as -0.0 plus those values and the matmul recorded in
        `function.merged`."""
        kept, merged_indices = [], {}
        for entry in projections:
            index, projection, source, _, chain_operands = entry
            body_var = next(var for var, kind, data in sequences
                            if kind == "projection" and data == index)
            addends = _chain_addends(projection)
            eqn = None if addends is None else paired_matmul(body_program, body_var)
            if eqn is None or not self._merge_applies(function, eqn, projection):
                kept.append(entry)
                continue
            in_size = projection.weight.shape[0]
            staged = function.names.fresh(f"staged_{index}")
            function.preamble.line(f"{staged} = new_array((B, {in_size}), "
                                   f"{dtype_expression(projection.output.dtype)})")
            function.fixed.add(staged)
            function.merged[eqn.outputs[0]] = (projection, source, staged)
            merged_indices[index] = MergedSequence(body_var.dtype, [
                lambda indices, atom=atom, projection=projection, operands=chain_operands:
                self._chain_operand(atom, projection, operands, indices)
                for atom in addends])
        sequences = [(var, "merged", merged_indices[data])
                     if kind == "projection" and data in merged_indices
                     else (var, kind, data) for var, kind, data in sequences]
        return kept, sequences

    def _merge_applies(self, function, eqn, projection) -> bool:
        """Whether the packed pair product can compute `eqn` (a @ weight) with the
        projection taken in: both weights packed by the runtime, one float dtype (only
        top-level scans are asked: their weights are `run`'s arguments)."""
        a, weight = eqn.inputs
        out = eqn.outputs[0]
        if not isinstance(a, Var) or a.ndim != 2 or weight not in function.weight_constants \
                or a.dtype != out.dtype or weight.dtype != out.dtype:
            return False
        if not self._packing_applies(function, weight, a.shape[1], out):
            return False
        in_size, out_size = projection.weight.shape
        return projection.weight in self.weight_vars \
            and projection.source.ndim == 3 and projection.weight.dtype == out.dtype \
            and projection.source.dtype == out.dtype \
            and isinstance(in_size, int) and in_size >= PACKED_MIN_CONTRACTION \
            and out_size == out.shape[1]

    def _merged_matmul(self, function, eqn) -> None:
        """`out = x_t @ W + a @ U` as one packed pair product, x_t the step's rows of
        the projection's source copied to a staging buffer (merged_projection.py)."""
        (a, weight), out = eqn.inputs, eqn.outputs[0]
        projection, source, staged = function.merged[out]
        contraction = a.shape[1]
        a_value, b_value = function.values[a], function.values[weight]
        buffer, start, _ = self._packed_weight(function, b_value, weight, contraction, out)
        projection_buffer, projection_start = self._packed_projection(function, projection)
        body, names = function.body, function.names
        row, k = names.fresh("i"), names.fresh("k")
        with body.block(f"for {row} in range(B):"):
            with body.block(f"for {k} in range({staged}.shape[1]):"):
                body.line(f"{staged}[{row}, {k}] = {source}[{row}, t, {k}]")
        name = function.alloc(out, self.shape_text(out.shape), "product")
        body.line(f"packed_pair_product({staged}, {projection_buffer}, {projection_start}, "
                  f"{self._contiguous(a_value)}, {buffer}, {start}, {name})")
        function.values[out] = ArrayValue(name, 2)
        if isinstance(contraction, int) and isinstance(out.shape[1], int):
            self.step_flops_per_row = max(self.step_flops_per_row,
                                          2.0 * contraction * out.shape[1])
        self.merged_products += 1

    def _direct_targets(self, plan, state_buffers, readout_buffers) -> dict:
        """Body output Var -> where its loop stores each element besides (or instead
        of) a buffer of its own, for outputs computed by an element-wise eqn of the
        body (unmasked scans): the next state's, readout's and y's buffers, and y's row
        of `y_all` (then y_next is not written: with return_sequences and no mask,
        y_last is never read). The commit copies only the other outputs."""
        body_program = plan.body
        elementwise = {eqn.outputs[0] for eqn in body_program.eqns
                       if lowering.is_elementwise(eqn) and len(eqn.outputs) == 1}
        y_var, *new_states = body_program.outputs
        targets = {}

        def add(var, target):
            if var in elementwise:
                targets.setdefault(var, []).append(target)
        if plan.params["return_sequences"]:
            add(y_var, ("y_all", None))
        else:
            add(y_var, ("buffer", "y_next"))
        for (_, following), new_state in zip(state_buffers, new_states):
            add(new_state, ("buffer", following))
        if readout_buffers is not None:
            add(y_var, ("buffer", readout_buffers[1]))
        return targets

    def _start_ownership(self, function, body_program, state_vars, state_buffers) -> None:
        """Members of a team own columns in this scan (kernels/cpu/team_columns.py)
        when its body has a matmul a team splits; the states read only by element-wise
        loops of their shape stay owned between steps."""
        dtype = next((eqn.outputs[0].dtype for eqn in body_program.eqns
                      if self._splittable(function, eqn)), None)
        if dtype is None:
            return
        ownership = function.ownership = ColumnOwnership(
            function.names, function.preamble, BLOCK_COLUMNS[dtype], function.abort_return,
            dtype)
        ownership.y_step = function.y_step
        self.team_dtype = self.team_dtype or dtype
        kept = kept_states(body_program, state_vars, self._readers(body_program))
        for state_var, (current, _) in zip(state_vars, state_buffers):
            if state_var in kept and state_var.dtype == dtype:
                ownership.kept.add(state_var)
                ownership.own(state_var, [ArrayValue(current, 2)])
        function.team_used = True

    def _splittable(self, function, eqn) -> bool:
        """`eqn` is a matmul of a team scan's body whose columns a team splits (see
        `_team_splits`; its left operand, not known yet, is C-contiguous in the bodies
        the passes make)."""
        if eqn.op != "matmul":
            return False
        a, b = eqn.inputs
        out = eqn.outputs[0]
        return isinstance(a, Var) and isinstance(b, Var) and a.ndim == b.ndim == 2 \
            and out.dtype in ("float32", "float64") and a.dtype == b.dtype == out.dtype \
            and b.shape[1] != 1 and self._team_splits(function, b, a.shape[1], out)

    def _gather_outputs(self, function, body_program, state_vars) -> None:
        """Before the commit: gather y and the new states that are not kept owned."""
        ownership = function.ownership
        y_var, *new_states = body_program.outputs
        wanted = [y_var] + [new for state_var, new in zip(state_vars, new_states)
                            if state_var not in ownership.kept]
        ownership.gather_inputs(function.body, wanted)

    @staticmethod
    def _readers(program) -> dict:
        """Var -> the eqns of `program` reading it."""
        return {var: [program.eqns[position] for position in positions]
                for var, positions in reader_positions(program.eqns).items()}

    @staticmethod
    def _read_inside(run, made) -> dict:
        """Var of `made` -> how many times the eqns of `run` read it."""
        read_inside = {}
        for eqn in run:
            for atom in lowering.elementwise_operands(eqn):
                if isinstance(atom, Var) and atom in made:
                    read_inside[atom] = read_inside.get(atom, 0) + 1
        return read_inside

    def _emit_body(self, function, program) -> None:
        """The eqns of a scan body in order; runs of element-wise eqns of one output
        shape, each reading the earlier ones' outputs only at its own element, share
        ONE loop nest (`_emit_elementwise_run`)."""
        uses = count_uses(program)
        function.body_outputs = program.outputs
        function.readers = self._readers(program)
        function.stable = set(program.inputs)    # unchanged until the step's commit
        ownership = function.ownership
        run = []
        for eqn in program.eqns:
            if ownership is not None and id(eqn) in ownership.done:
                continue
            if lowering.is_elementwise(eqn) and len(eqn.outputs) == 1:
                if run and not self._joins_run(run, eqn):
                    self._emit_elementwise_run(function, run, uses)
                    run = []
                run.append(eqn)
                continue
            self._emit_elementwise_run(function, run, uses)
            run = []
            view = ownership is not None and self._owned_view(function, eqn)
            if ownership is not None:
                ownership.flush(function.body, None if eqn.op == "scan" else eqn.inputs)
                if not view:     # it reads its operands whole
                    ownership.gather_inputs(function.body, eqn.inputs[1:]
                                            if block_dot_applies(eqn) else eqn.inputs)
            if eqn.op == "scan":
                self._emit_nested_scan(function, eqn)
            else:
                self._emit_eqn(function, eqn)
            if view:
                ownership.own_view(eqn.outputs[0], eqn.inputs[0])
        self._emit_elementwise_run(function, run, uses)
        if ownership is not None:
            ownership.flush(function.body)

    @staticmethod
    def _joins_run(run, eqn) -> bool:
        shape = run[0].outputs[0].shape
        if eqn.outputs[0].shape != shape:
            return False
        made = {earlier.outputs[0] for earlier in run}
        return all(atom.shape == shape for atom in lowering.elementwise_operands(eqn)
                   if isinstance(atom, Var) and atom in made)

    def _emit_elementwise_run(self, function, run, uses) -> None:
        """One loop nest computing every eqn of `run` (element-wise, one output shape)
        at each element: an eqn reads an earlier one's result as a scalar, not from
        memory. An output is stored where `function.direct` says (the commit's
        buffers, y_all), and into a buffer of its own only when something outside the
        loop reads it; a value only the loop reads gets no buffer at all."""
        if not run:
            return
        if function.ownership is not None:
            function.ownership.flush(function.body, [atom for eqn in run
                                                     for atom in eqn.inputs])
        shape = run[0].outputs[0].shape
        made = {eqn.outputs[0] for eqn in run}
        owned_loop = self._owned_run(function, run, made, uses)
        read_inside = self._read_inside(run, made)
        stores = {}          # out Var -> element-store targets (ArrayValue or "y_all")
        for eqn in run:
            out = eqn.outputs[0]
            direct = function.direct.get(out, [])
            as_output = sum(1 for atom in function.body_outputs if atom is out) \
                if direct else 0
            read_elsewhere = uses[out] - read_inside.get(out, 0) - as_output
            targets = [ArrayValue(name, out.ndim) if kind == "buffer" else kind
                       for kind, name in direct]
            own = next((t for t in targets if isinstance(t, ArrayValue)), None)
            if read_elsewhere > 0 and own is None:
                own = ArrayValue(function.alloc(out, self.shape_text(out.shape), "v"),
                                 out.ndim)
                targets.append(own)
            stores[out] = targets
            if own is not None:
                function.values[out] = own
            if owned_loop and targets:
                function.ownership.own(out, targets)
        factored = None
        if function.preamble is not None:
            factored = find_factored_activation(run, made, function.constants, shape)
            if factored is not None and owned_loop and factored.step.shape[-1] != shape[-1]:
                factored = None    # a member has its own columns of the step value only
        if factored is None:
            self._elementwise_loops(function, run, stores, shape, owned_loop)
            return
        # tanh or sigmoid of (constant + step value) from exponentials of each
        # (factored_activation.py): the factored loop while every key is near enough,
        # else the usual one
        overrides, far = self._factored_exponentials(function, factored, owned_loop)
        with function.body.block(f"if not {far}:"):
            self._elementwise_loops(function, run, stores, shape, owned_loop, overrides)
        with function.body.block("else:"):
            self._elementwise_loops(function, run, stores, shape, owned_loop)

    def _elementwise_loops(self, function, run, stores, shape, owned_loop: bool,
                           overrides=None) -> None:
        """The loop nest of `_emit_elementwise_run` over `shape` (this member's columns
        when `owned_loop`), each eqn's value stored into `stores[out]`. `overrides`:
        (eqn, {body output: function of the loop's indices -> its expression})."""
        if owned_loop:
            indices = self._loops(function, shape[:-1])
            indices.append(function.ownership.open_loop(function.body, shape[-1])[1])
        else:
            indices = self._loops(function, shape)
        scalars = {}
        for eqn in run:
            inputs = [scalars[atom] if isinstance(atom, Var) and atom in scalars
                      else self._element(function, atom, indices, shape)
                      for atom in lowering.elementwise_operands(eqn)]
            replaced = None
            if overrides is not None and overrides[0] is eqn:
                replaced = {var: expression(indices) for var, expression in overrides[1].items()}
            statements, results = lowering.scalar_statements(
                lowering.elementwise_as_body(eqn), inputs, self.ctx, function.names.fresh,
                replaced)
            for name, expression in statements:
                function.body.line(f"{name} = {expression}")
            out, result = eqn.outputs[0], results[0]
            if not result.isidentifier():
                name = function.names.fresh("e")
                function.body.line(f"{name} = {result}")
                result = name
            scalars[out] = result
            for target in stores[out]:
                if target == "y_all":
                    element = f"y_all[{', '.join([indices[0], function.y_step, *indices[1:]])}]"
                else:
                    element = target.element(indices)
                function.body.line(f"{element} = {result}")
        self._close(function, len(indices))

    def _factored_exponentials(self, function, factored, owned_loop: bool) -> tuple:
        """exp(sK) of the scan constant once a call (preamble) and the exponentials of
        the step value before the loops (this member's columns when `owned_loop`; s:
        the activation's scale); returns the loop's overrides (see
        `_elementwise_loops`) and the name of the flag telling that some key is too far
        for the factored form (factored_activation.py)."""
        names, body = function.names, function.body
        constant, step = factored.constant, factored.step
        prefix = EXPONENTIAL_NAMES[factored.activation]
        kept = function.factored_constants.get((constant, factored.scale))
        if kept is None:
            kept = (names.fresh(prefix), names.fresh("constant_far"))
            for line in constant_exponentials_source(function.values[constant].array(),
                                                     constant.ndim, *kept, names,
                                                     factored.scale):
                function.preamble.line(line)
            function.factored_constants[(constant, factored.scale)] = kept
        constant_exponentials, constant_far = kept
        step_exponentials = [
            ArrayValue(function.alloc(step, self.shape_text(step.shape), prefix), step.ndim)
            for _ in range(step_exponential_count(factored.activation))]
        if owned_loop:
            indices = self._loops(function, step.shape[:-1])
            indices.append(function.ownership.open_loop(body, step.shape[-1])[1])
        else:
            indices = self._loops(function, step.shape)
        value = names.fresh("q")
        body.line(f"{value} = {self._element(function, step, indices, step.shape)}")
        for line in step_exponential_lines(
                factored.activation, value,
                [exponentials.element(indices) for exponentials in step_exponentials],
                names):
            body.line(line)
        self._close(function, len(indices))
        shape = factored.constant.shape

        def expression(loop_indices):
            step_indices = lowering.broadcast_index(step.shape, shape, loop_indices)
            return factored_expression(
                factored.activation,
                ArrayValue(constant_exponentials, constant.ndim).element(loop_indices),
                [exponentials.element(step_indices) for exponentials in step_exponentials])
        return (factored.eqn, {factored.result: expression}), constant_far

    def _owned_run(self, function, run, made, uses) -> bool:
        """Whether a team member runs this element-wise run over its own columns only
        (kernels/cpu/team_columns.py): it reads an owned value, every owned value it
        reads has its (B, n) shape, and what it stores has the exchange's dtype.
        Otherwise the owned values it reads are gathered first."""
        ownership = function.ownership
        if ownership is None:
            return False
        owned = [atom for eqn in run for atom in lowering.elementwise_operands(eqn)
                 if isinstance(atom, Var) and atom not in made and atom in ownership.owned]
        if not owned:
            return False
        shape = run[0].outputs[0].shape
        read_inside = self._read_inside(run, made)
        stored = [eqn.outputs[0] for eqn in run
                  if uses[eqn.outputs[0]] > read_inside.get(eqn.outputs[0], 0)]
        if isinstance(shape[-1], int) and len(shape) >= 2 \
                and all(var.dtype == ownership.dtype for var in stored) \
                and (all(atom.shape == shape for atom in owned) if len(shape) == 2
                     else self._owned_scores(function, shape, owned, stored)):
            return True
        ownership.gather_inputs(function.body, owned)
        return False

    @staticmethod
    def _owned_scores(function, shape, owned, stored) -> bool:
        """Whether a member runs a (B, R, n) element-wise run over its own columns: it
        reads owned values of its shape or owned (B, 1, n) views, and what it stores
        only block-summed one-column matmuls read (`_one_column_matmul`: attention's
        scores), so no (B, R, n) value is ever gathered."""
        ownership = function.ownership
        view_shape = (shape[0], 1, shape[-1])
        if not all(atom.shape == shape or (atom in ownership.views and len(shape) == 3
                                           and atom.shape == view_shape)
                   for atom in owned):
            return False
        return all(var not in function.direct and var not in function.body_outputs
                   and function.readers.get(var)
                   and all(block_dot_applies(reader) and reader.inputs[0] is var
                           and reader.inputs[1] is not var
                           for reader in function.readers[var])
                   for var in stored)

    @staticmethod
    def _owned_view(function, eqn) -> bool:
        """Whether the (B, 1, n) reshape of an owned (B, n) value stays owned, as a view
        sharing its storage (team_columns.ColumnOwnership.own_view): only element-wise
        eqns read it."""
        if eqn.op not in ("expand_dims", "reshape"):
            return False
        ownership = function.ownership
        x, out = eqn.inputs[0], eqn.outputs[0]
        if not isinstance(x, Var) or x not in ownership.owned or x in ownership.views \
                or x.ndim != 2 or out.shape != (x.shape[0], 1, x.shape[1]):
            return False
        value = function.values.get(x)
        readers = function.readers.get(out, [])
        return isinstance(value, ArrayValue) and value.contiguous and bool(readers) \
            and out not in function.body_outputs \
            and all(lowering.is_elementwise(reader) and len(reader.outputs) == 1
                    for reader in readers)

    def _emit_nested_scan(self, function, eqn) -> None:
        plan = lowering.plan_scan(eqn)
        self._emit_scan_call(function, plan)

    def _projection_buffers(self, function, projections, chunk_buffers, shared) -> None:
        """Allocate each projection's chunk buffers (preamble). With `shared`, a team
        member's projected buffer is a view of `team_shared` (every member computes
        some steps of it, all read all of it); its own staging buffer stays private."""
        preamble, names = function.preamble, function.names
        at = names.fresh("team_shared_at") if shared else None
        if shared:
            preamble.line(f"{at} = 0")
        for index, projection, _, _, _ in projections:
            staged, projected = chunk_buffers[index]
            in_size, out_size = projection.weight.shape
            dtype = dtype_expression(projection.output.dtype)
            preamble.line(f"{staged} = new_array((chunk_steps * B, {in_size}), {dtype})")
            if not shared:
                preamble.line(f"{projected} = new_array((chunk_steps * B, {out_size}), {dtype})")
                continue
            size = f"chunk_steps * B * {out_size * np.dtype(projection.output.dtype).itemsize}"
            with preamble.block("if team_size > 1:"):
                preamble.line(f"{projected} = team_shared[{at}:{at} + {size}].view({dtype})"
                              f".reshape((chunk_steps * B, {out_size}))")
                preamble.line(f"{at} = ({at} + {size} + 63) // 64 * 64")
            with preamble.block("else:"):
                preamble.line(f"{projected} = new_array((chunk_steps * B, {out_size}), {dtype})")
        if shared:
            self.team_shared_row_bytes = max(self.team_shared_row_bytes, sum(
                p.weight.shape[1] * np.dtype(p.output.dtype).itemsize
                for _, p, _, _, _ in projections))
            self.team_shared_buffers = max(self.team_shared_buffers, len(projections))

    def _projections(self, function, projections, chunk_buffers, low, high) -> None:
        """Stage the chunk's rows `low` to `high` (row = step * B + batch row) of each
        projected sequence, project them with one GEMM and apply the element-wise
        chain that follows it. A packed product runs in panels of
        PROJECTION_PANEL_ROWS rows counted from the chunk's first row, whoever computes
        them: each row's sums are then added in the same order on one thread and on a
        team (the tile a row falls in decides the order)."""
        loop, names = function.body, function.names
        for index, projection, source, weight, chain_operands in projections:
            staged, projected = chunk_buffers[index]
            row, step, b, k = (names.fresh(h) for h in ("r", "step", "b", "k"))
            with loop.block(f"for {row} in range({low}, {high}):"):
                loop.line(f"{step} = {row} // B")
                loop.line(f"{b} = {row} - {step} * B")
                with loop.block(f"for {k} in range({staged}.shape[1]):"):
                    loop.line(f"{staged}[{row}, {k}] = {source}[{b}, time_low + {step}, {k}]")
            packed = self._packed_projection(function, projection)
            self._panel_product(function, packed, weight, staged, projected, low, high)
            if projection.chain:
                self._render_chain(function, projection, projected, chain_operands,
                                   f"{low}, {high}")

    def _panel_product(self, function, packed, weight, left, out, low, high,
                       out_offset=None):
        """`out[offset + r] = left[r] @ weight` for rows r in [low, high): a packed product
        (`packed` = (buffer, start)) in panels of PROJECTION_PANEL_ROWS rows that stay in
        the core's cache, counted from `low`; else one np.dot."""
        loop, names = function.body, function.names
        shift = f"{out_offset} + " if out_offset else ""
        if packed is not None:
            buffer, start = packed
            first, last = names.fresh("panel"), names.fresh("panel_end")
            with loop.block(f"for {first} in range({low}, {high}, {PROJECTION_PANEL_ROWS}):"):
                loop.line(f"{last} = {smaller(f'{first} + {PROJECTION_PANEL_ROWS}', high)}")
                loop.line(f"packed_product({left}[{first}:{last}], {buffer}, {start}, "
                          f"{out}[{shift}{first}:{shift}{last}])")
        else:
            with loop.block(f"if {high} > {low}:"):
                self._blas_line(loop, f"np.dot({left}[{low}:{high}], {weight}, "
                                      f"{out}[{shift}{low}:{shift}{high}])")

    def _packed_projection(self, function, projection):
        """(buffer, start) of the input projection's weight packed by the runtime (a
        `PackedWeight` argument) when the packed product applies to it, else None.
        Measured (one thread, GFLOP/s, np.dot / packed in panels of 64 rows): 100 x 128
        x 1024 123 / 172, 3200 x 128 x 1024 136 / 168, 1792 x 256 x 2048 141 / 145."""
        weight = projection.weight
        in_size, out_size = weight.shape
        if not function.top_level or weight not in self.weight_vars \
                or projection.output.dtype not in PACKED_DTYPES \
                or weight.dtype != projection.output.dtype \
                or not isinstance(in_size, int) or in_size < PACKED_MIN_CONTRACTION \
                or not isinstance(out_size, int) or out_size < PACKED_MIN_COLUMNS:
            return None
        key = ("projection", weight)
        if key not in function.packed:
            buffer = function.argument(PackedWeight(weight), "packed")
            start = function.names.fresh("packed_start")
            itemsize = np.dtype(projection.output.dtype).itemsize
            function.preamble.line(f"{start} = {aligned_start_source(buffer, itemsize)}")
            function.packed[key] = (buffer, start)
            self.packed_products = True
        return function.packed[key]

    def _team_projections(self, function, projections, chunk_buffers) -> None:
        """The chunk's projections on a team: the members take units of rows from a
        shared count until none is left (team_sync.claim_unit) and compute them (see
        `_projections`) into the shared buffers; barriers before (the previous chunk's
        rows are read) and after (all rows are written). A member that starts late
        (the one asking whether the weights changed, team_poll.py) takes fewer.

        The units are whole tiles of the packed product's biggest shape (8 rows with
        AVX-512, 6 with AVX2) when every projection is one, else whole panels (np.dot).
        A row then falls in a tile of the same shape as on one thread (biggest tiles up
        to the chunk's last rows, which the last unit holds; PROJECTION_PANEL_ROWS is a
        multiple of the unit), so its sums are added in the same order."""
        loop = function.body
        packed = all(self._packed_projection(function, projection) is not None
                     for _, projection, *_ in projections)
        with loop.block("if chunk_start > 0:"):
            with loop.block("if not team_wait(team_counter, team_size, team_rank):"):
                loop.line(function.abort_return)
        unit = TILE_SHAPES[0][0] if packed else PROJECTION_PANEL_ROWS
        self._claim_units(function, "rows", unit, lambda low, high: self._projections(
            function, projections, chunk_buffers, low, high))
        with loop.block("if not team_wait(team_counter, team_size, team_rank):"):
            loop.line(function.abort_return)

    def _epilogue(self, function, epilogue, weight, chain_operands) -> None:
        """After a chunk's steps: its rows of y (`y_all`, per batch row) through the output
        layer into the output: one GEMM (a packed product in panels of rows, as the
        input projection, else np.dot), then the element-wise chain in place.

        On a team (every member holds all of y: y is gathered each step) the members
        take the chunk's rows in units (`_claimed_epilogue`) and write them into rank
        0's output (kernels/cpu/team_output.py). A barrier after the last chunk keeps
        rank 0 from returning before every row is written."""
        loop, names, preamble = function.body, function.names, function.preamble
        packed = self._packed_projection(function, epilogue)
        if self.team_weight_bytes > function.split_bytes_before:
            # a team splits this scan's steps, and then its output layer: count its weight
            # with theirs for the automatic team's rule (team.auto_team_size)
            in_size, out_size = epilogue.weight.shape
            self.team_weight_bytes += in_size * out_size \
                * np.dtype(epilogue.output.dtype).itemsize
        split = function.team_used and self.output_slots < len(OUTPUT_SLOTS)
        rows = names.fresh("out_steps")
        target = "y_out"
        loop.line(f"{rows} = chunk_stop - chunk_start")
        low, high = "0", rows
        if split:
            slot = OUTPUT_SLOTS[self.output_slots]
            self.output_slots += 1
            target, address = names.fresh("team_out"), names.fresh("out_address")
            preamble.line(f"{target} = y_out")
            with preamble.block("if team_size > 1:"):
                with preamble.block("if team_rank == 0:"):
                    preamble.line(f"publish_output(team_counter, {slot}, y_out)")
                with preamble.block("else:"):
                    preamble.line(f"{address} = published_output(team_counter, {slot})")
                    with preamble.block(f"if {address} == 0:"):
                        preamble.line(function.abort_return)
                    preamble.line(f"{target} = output_at({address}, y_out)")
            function.splits_output = True
            with loop.block("if team_size > 1:"):
                self._claimed_epilogue(function, epilogue, packed, weight, chain_operands,
                                       target, rows)
            with loop.block("else:"):
                self._whole_epilogue(function, epilogue, packed, weight, chain_operands,
                                     target, rows, "0", rows)
            return
        self._whole_epilogue(function, epilogue, packed, weight, chain_operands, target,
                             rows, "0", rows)

    def _claimed_epilogue(self, function, epilogue, packed, weight, chain_operands,
                          target, rows) -> None:
        """The chunk's rows of y through the output layer on a team: the members take
        units of rows (whole biggest tiles of the packed product, whole panels for
        np.dot; a row then falls in a tile of the shape it has on one thread) of every
        batch row from a shared count until none is left (team_sync.claim_unit).

        The team's weight question (team_poll.py) is asked here, in the first chunk's,
        not at `run`'s start: a team's steps go in lockstep, so a question before them
        delayed every member by its length (~0.075 ms, BENCHMARKS run 35), where here
        the other members take the asking member's units meanwhile. A change it finds
        stops the team at its next barrier (the one below or the scan's last) and the
        runtime runs the call again with the new weights. A barrier ends each chunk's
        claims but the last's (the scan's own follows), so no member claims the next
        chunk's units while another still claims this chunk's."""
        loop, names = function.body, function.names
        unit = TILE_SHAPES[0][0] if packed is not None else PROJECTION_PANEL_ROWS
        row_units, b = names.fresh("row_units"), names.fresh("b_out")
        low, high, rows_out = (names.fresh(h) for h in ("unit_low", "unit_high", "out_rows"))
        if not self.late_poll:
            self.late_poll = True
            with loop.block("if chunk_start == 0:"):
                loop.line("team_poll(team_counter, team_rank, team_size)")
        loop.line(f"{row_units} = ({rows} + {unit - 1}) // {unit}")

        def emit(claimed_low, _):
            loop.line(f"{b} = {claimed_low} // ({unit} * {row_units})")
            loop.line(f"{low} = {claimed_low} - {b} * {unit} * {row_units}")
            loop.line(f"{high} = {smaller(rows, f'{low} + {unit}')}")
            self._epilogue_rows(function, epilogue, packed, weight, chain_operands,
                                target, b, rows_out, low, high)
        self._claim_units(function, f"B * {unit} * {row_units}", unit, emit)
        with loop.block("if chunk_stop < steps:"):
            with loop.block("if not team_wait(team_counter, team_size, team_rank):"):
                loop.line(function.abort_return)

    def _whole_epilogue(self, function, epilogue, packed, weight, chain_operands, target,
                        rows, low, high) -> None:
        """Rows [low, high) of the chunk's rows of y, of every batch row, through the
        output layer into `target`."""
        loop, names = function.body, function.names
        b, rows_out = names.fresh("b_out"), names.fresh("out_rows")
        with loop.block(f"for {b} in range(B):"):
            self._epilogue_rows(function, epilogue, packed, weight, chain_operands,
                                target, b, rows_out, low, high)

    def _epilogue_rows(self, function, epilogue, packed, weight, chain_operands, target,
                       b, rows_out, low, high) -> None:
        """Rows [low, high) of the chunk's rows of batch row `b` of y through the output
        layer into `target[b]` (named `rows_out`)."""
        function.body.line(f"{rows_out} = {target}[{b}]")
        self._panel_product(function, packed, weight, f"y_all[{b}]", rows_out, low, high,
                            out_offset="chunk_start")
        if epilogue.chain:
            self._render_chain(function, epilogue, rows_out, chain_operands,
                               f"chunk_start + {low}, chunk_start + {high}")

    def _render_chain(self, function, projection, projected, chain_operands,
                      row_range: str) -> None:
        """The eqns after the projection GEMM, in place, row by row: a run of element-wise
        eqns is one loop over the row; a layer norm (over the last axis) takes the row's
        two sums (as `_op_layer_norm` does) and normalises in the loop of the run after it."""
        loop, names = function.body, function.names
        out_size = projection.weight.shape[1]
        dtype = projection.output.dtype
        runs = [[None]]        # [layer norm or None, element-wise eqns...] per loop
        for eqn in projection.chain:
            if eqn.op == "layer_norm":
                runs.append([eqn])
            else:
                runs[-1].append(eqn)
        count = self.ctx.const(out_size, dtype)
        with loop.block(f"for r in range({row_range}):"):
            for norm, *eqns in runs:
                if norm is None and not eqns:
                    continue
                if norm is not None:
                    mean, scale = names.fresh("mean"), names.fresh("scale")
                    self._row_moments(loop, projected, "r", count, dtype,
                                      norm.params["epsilon"], mean, scale)
                with loop.block(f"for j in range({out_size}):"):
                    current = f"{projected}[r, j]"
                    if norm is not None:
                        gamma, beta = (self._chain_operand(atom, projection, chain_operands)
                                       for atom in norm.inputs[1:])
                        # a name: the eqns after it take their operands as atoms
                        # (`square` writes `x * x`)
                        normalized = names.fresh("normalized")
                        loop.line(f"{normalized} = ({current} - {mean}) / {scale} "
                                  f"* {gamma} + {beta}")
                        current = normalized
                    for eqn in eqns:
                        body = lowering.elementwise_as_body(eqn)
                        inputs = [current if isinstance(atom, Var)
                                  and atom.shape == projection.output.shape
                                  else self._chain_operand(atom, projection, chain_operands)
                                  for atom in lowering.elementwise_operands(eqn)]
                        statements, results = lowering.scalar_statements(
                            body, inputs, self.ctx, names.fresh)
                        for name, expression in statements:
                            loop.line(f"{name} = {expression}")
                        current = results[0]
                    loop.line(f"{projected}[r, j] = {current}")

    def _chain_operand(self, atom, projection, chain_operands, indices=("r", "j")) -> str:
        """A weight-like operand of a chain eqn at element `indices` (row, column) of
        the projected rows."""
        if isinstance(atom, Literal):
            return self.ctx.const(atom.value, atom.dtype)
        value_shape = ("R", projection.weight.shape[1])
        index = lowering.broadcast_index(atom.shape, value_shape, list(indices))
        return ArrayValue(chain_operands[atom], atom.ndim).element(index)

    def _render_commit(self, function, plan, state_buffers, readout_buffers, mask) -> None:
        """Copy [y, *new states] (and the readout) into the next buffers, keeping the
        previous rows where the mask is False, then swap and store y. Outputs the
        body's loops stored already (`function.direct`) are not copied again."""
        body_program = plan.body
        loop = function.body
        outputs = body_program.outputs
        y_var = outputs[0]
        direct = function.direct
        targets = [("y_next", "y_last", y_var)]
        targets += [(following, current, new_state) for (current, following), new_state
                    in zip(state_buffers, outputs[1:])]
        if readout_buffers is not None:
            targets.append((readout_buffers[1], readout_buffers[0], y_var))
        copied = [target for target in targets if target[2] not in direct]
        if copied:
            with loop.block("for b in range(B):"):
                if mask is not None:
                    loop.line(f"keep = {mask}[b, t]")
                for following, current, source_var in copied:
                    inner_shape = source_var.shape[1:]
                    indices = self._loops(function, inner_shape, "k")
                    element = function.values[source_var].element(["b", *indices])
                    target = f"{following}[{', '.join(['b', *indices])}]"
                    if mask is not None:
                        previous = f"{current}[{', '.join(['b', *indices])}]"
                        loop.line(f"{target} = {element} if keep else {previous}")
                    else:
                        loop.line(f"{target} = {element}")
                    self._close(function, len(indices))
        for following, current, _ in targets:
            loop.line(f"{current}, {following} = {following}, {current}")
        if plan.params["return_sequences"] and y_var not in direct:
            width = self._row_width(y_var)
            y_step = function.y_step
            if width is None:
                loop.line(f"y_all[:, {y_step}] = y_last")
            else:  # element loops: a slice assignment compiles Numba's shape-error
                # formatting (unicode code, ~1.5 s of every first compile)
                function.preamble.line(f"y_all_rows = y_all.reshape((B, y_all.shape[1], "
                                       f"{width}))")
                loop.line(f"y_last_rows = y_last.reshape((B, {width}))")
                with loop.block("for b in range(B):"):
                    with loop.block(f"for k in range({width}):"):
                        loop.line(f"y_all_rows[b, {y_step}, k] = y_last_rows[b, k]")

    @staticmethod
    def _fill_zeros(writer: SourceWriter, names: Namespace, array: str, ndim: int) -> None:
        """Loops setting every element of the `ndim`-d array named `array` to 0."""
        indices = [names.fresh("z") for _ in range(ndim)]
        for axis, index in enumerate(indices):
            writer.line(f"for {index} in range({array}.shape[{axis}]):")
            writer.depth += 1
        writer.line(f"{array}[{', '.join(indices)}] = 0")
        writer.depth -= ndim

    @staticmethod
    def _row_width(var: Var):
        """The number of elements per batch row of `var`, when it is static."""
        width = 1
        for dim in var.shape[1:]:
            if not isinstance(dim, int):
                return None
            width *= dim
        return width


def _chain_addends(projection) -> list:
    """The weight-like operands a projection's chain adds to the GEMM's result (none
    for no chain), or None when the chain does anything else."""
    addends = []
    for eqn in projection.chain:
        operands = lowering.elementwise_operands(eqn)
        if eqn.op not in ("add", "bias_add") or len(eqn.inputs) != 2 or len(operands) != 2:
            return None
        running = [atom for atom in operands if atom.shape == projection.output.shape]
        if len(running) != 1:
            return None
        addends += [atom for atom in operands if atom is not running[0]]
    return addends


def generate(program: Program, team: bool = False, merged: bool = False) -> KernelSource:
    """The Numba CPU module for an optimised program (see the module docstring).
    `team`: the team variant (team.py); `merged`: the wide-batch variant, whose
    recurrent products take their input projection in (merged_projection.py)."""
    return CpuGenerator(program, team, merged).generate()
