"""The Numba CUDA renderer: an optimised program -> the source of one Python module.

The module holds `@cuda.jit` kernels and `run`, a plain Python host function that
allocates device arrays and launches them in program order:

* the input projection a scan absorbs (kernels/lowering.py, shared with the CPU
  renderer) runs first as ONE GEMM over all B x T rows (`rt.gemm`: cuBLAS through CuPy,
  or the tiled kernel of gemm.py), then its element-wise chain in place;
* each scan is ONE launch of its persistent kernel (scan_kernel.py), written in two
  layouts: blocks that own batch rows, or groups of blocks that split the rows' work
  (for a few rows on a big GPU); `rt.blocks_per_group` picks one per call;
* every other top-level eqn (embedding gather, the Dense after the RNN, softmax, masks,
  ...) is a small kernel with one block per batch row (or a GEMM for a matmul by a
  weight).

All device arrays are flat and C-contiguous; every weight lives in ONE packed buffer
(weights.py) whose offsets are constants of the source. Batch size `B` and length `T`
are arguments, so one module serves every size.

    module_source = generate(optimized_program, rows_per_block=4)
    print(module_source.source)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rshop_ir.errors import UnsupportedError
from rshop_ir.ir import Literal, Program, Var
from rshop_ir.kernels import lowering
from rshop_ir.kernels.cpu.source import Namespace, SourceWriter
from rshop_ir.kernels.cuda import eqn_rendering, mathlib
from rshop_ir.kernels.cuda.device import SHARED_MEMORY_BYTES
from rshop_ir.kernels.cuda.kernel_writer import KernelWriter, is_batched
from rshop_ir.kernels.cuda.scan_kernel import render_scan
from rshop_ir.kernels.cuda.values import GLOBAL_ROW, Stored, product
from rshop_ir.kernels.cuda.weights import WeightLayout, stored_weight

GENERATOR_VERSION = "numba-cuda/3"
RESERVED = {"np", "math", "cuda", "B", "T", "rt", "weights", "tid", "nthreads", "row0",
            "G", "group", "arrivals", "barrier_target", "group_barrier", "member", "members",
            "partials", "split_lanes", "split_parts", "lane", "part",
            "rows_here", "r", "acc", "work", "wbase", "wsh", "par", "step", "steps", "t",
            "keep", "i", "error_flag", "scratch", *eqn_rendering.SCRATCH_NAMES,
            *mathlib.DEVICE_FUNCTION_NAMES}


@dataclass
class ModuleSource:
    """The generated module and what the runtime needs to call its `run`."""

    source: str
    layout: WeightLayout                 # the packed weight buffer
    input_names: tuple
    float_dtype: str
    rows_per_block: int
    kernels: dict = field(default_factory=dict)   # kernel name -> [numba type names]
    scan_kernels: tuple = ()


class CudaGenerator:
    def __init__(self, program: Program, rows_per_block: int = 4,
                 shared_memory_bytes: int = SHARED_MEMORY_BYTES):
        if int(rows_per_block) < 1:
            raise ValueError(f"rows_per_block must be >= 1. Received: "
                             f"rows_per_block={rows_per_block}")
        self.program = program
        self.rows_per_block = int(rows_per_block)
        self.shared_memory_bytes = int(shared_memory_bytes)
        self.names = Namespace(reserved=RESERVED)
        self.float_dtype = _float_dtype(program)
        self.layout = WeightLayout(self.float_dtype)
        self.kernel_texts = []
        self.kernel_types = {}
        self.scan_kernels = []
        self.host_values = {}            # Var -> ("array", host name) | ("packed", key)
        self.host = SourceWriter()
        self.host_names = self.names.child()
        self.uses_error_flag = False

    # ---- module ----------------------------------------------------------------------

    def generate(self) -> ModuleSource:
        program = self.program
        plan = lowering.plan_program(program)
        inputs = []
        for var, name in zip(program.inputs, program.input_names):
            host_name = self.host_names.fresh(f"in_{name}")
            inputs.append(host_name)
            self.host_values[var] = ("array", host_name)
        for name, var in program.params:
            self.host_values[var] = ("packed", ("param", name))
        if program.prologue is not None:
            for index, var in enumerate(program.prologue.outputs):
                if isinstance(var, Var):
                    self.host_values[var] = ("packed", ("prologue", index))
        body = self.host
        with_flag = any(eqn.op == "gather" for eqn in program.eqns)
        if with_flag:
            body.line("error_flag = rt.error_flag()")
        for kind, item in plan.steps:
            if kind == "scan":
                self._host_scan(item)
            else:
                self._host_eqn(item)
        results = []
        for atom in program.outputs:
            if isinstance(atom, Literal) or self.host_values[atom][0] != "array":
                raise UnsupportedError("A program output that is a constant or a weight is "
                                       "not supported by the CUDA generator.")
            results.append(self.host_values[atom][1])
        if with_flag:
            body.line("rt.check_error_flag(error_flag)")
        body.line(f"return ({', '.join(results)},)")

        header = SourceWriter()
        header.line(f'"""Generated by rshop_ir.kernels.cuda ({GENERATOR_VERSION}); '
                    f'do not edit."""')
        header.line("import math")
        header.line("import numpy as np")
        header.line("from rshop_ir.kernels.cuda.device import cuda")
        header.line("from rshop_ir.kernels.cuda.group_sync import group_barrier")
        header.line("from rshop_ir.kernels.cuda.mathlib import (")
        for name in mathlib.DEVICE_FUNCTION_NAMES:
            header.line(f"    {name},")
        header.line(")")
        run = SourceWriter()
        run.line("# The host side: allocates device arrays, launches the kernels above.")
        with run.block(f"def run(B, T, weights, rt, {', '.join(inputs)}):"):
            run.extend(body)
        chunks = [header.text(), *self.kernel_texts, run.text()]
        return ModuleSource("\n\n".join(chunks), self.layout, tuple(program.input_names),
                            self.float_dtype, self.rows_per_block, dict(self.kernel_types),
                            tuple(self.scan_kernels))

    # ---- values -------------------------------------------------------------------------

    def _outer(self, atom):
        if isinstance(atom, Literal):
            raise UnsupportedError("A literal operand at the top level of a program.")
        kind, name = self.host_values[atom]
        return kind, name

    def _kernel_value(self, writer, var):
        """The in-kernel value of a top-level var (argument or packed weight)."""
        kind, name = self._outer(var)
        if kind == "packed":
            offset = self.layout.add(name, var.shape, var.dtype)
            return stored_weight("weights", var.shape, var.dtype, offset)
        argument = writer.array_argument(name, var.dtype)
        writer.launch.append(name)
        return Stored(argument, writer.dims(var), is_batched(var), GLOBAL_ROW)

    def _size_text(self, var) -> str:
        dims = ["B" if d == "B" else ("T" if d == "T" else d) for d in var.shape]
        return product(dims) if dims else "1"

    def _new_array(self, var, hint="v") -> str:
        name = self.host_names.fresh(hint)
        self.host.line(f"{name} = rt.empty({self._size_text(var)}, np.{_np_name(var.dtype)})")
        self.host_values[var] = ("array", name)
        return name

    # ---- top-level eqns -------------------------------------------------------------------

    def _host_eqn(self, eqn) -> None:
        if eqn.op == "constant":
            out = eqn.outputs[0]
            if is_batched(out):
                raise UnsupportedError("A batched constant.")
            value = np.asarray(eqn.params["value"], dtype=out.dtype).reshape(out.shape)
            key = ("constant", id(eqn))
            self.layout.add(key, out.shape, out.dtype, value=value)
            self.host_values[out] = ("packed", key)
            return
        if eqn.op == "matmul" and self._gemm_ready(eqn):
            self._host_gemm(eqn)
            return
        if eqn.op == "scan":
            raise UnsupportedError("A scan the planner did not take.")
        self._top_level_kernel(eqn)

    def _gemm_ready(self, eqn) -> bool:
        a, b = eqn.inputs
        return (isinstance(a, Var) and isinstance(b, Var) and is_batched(a)
                and b.ndim == 2 and self.host_values.get(b, ("",))[0] == "packed"
                and a.dtype == b.dtype == eqn.outputs[0].dtype == self.float_dtype)

    def _host_gemm(self, eqn) -> None:
        a, b = eqn.inputs
        out = eqn.outputs[0]
        offset = self.layout.add(self.host_values[b][1], b.shape, b.dtype)
        source = self.host_values[a][1]
        result = self._new_array(out, "product")
        rows = product(["B" if d == "B" else d for d in a.shape[:-1]])
        self.host.line(f"rt.gemm({source}, {rows}, {b.shape[0]}, weights, {offset}, "
                       f"{b.shape[1]}, {result})")

    def _top_level_kernel(self, eqn) -> None:
        name = self.names.fresh(f"{eqn.op}_kernel")
        writer = KernelWriter(name, self.names.child(), 1, self.float_dtype,
                              allocate=None, sizes={"B": "B", "T": "T"})
        writer.launch = []
        outputs = {}

        def allocate(kernel_writer, var):
            host_name = self._new_array(var)
            argument = kernel_writer.array_argument(host_name, var.dtype)
            outputs[var] = argument
            kernel_writer.launch.append(host_name)
            return Stored(argument, kernel_writer.dims(var), is_batched(var), GLOBAL_ROW)

        writer.allocate_hook = allocate
        for atom in eqn.inputs:
            if isinstance(atom, Var) and atom not in writer.values:
                writer.values[atom] = self._kernel_value(writer, atom)
        wrote = eqn_rendering.render_eqn(writer, eqn)
        if not wrote:       # a view: materialise it
            out = eqn.outputs[0]
            view = writer.values[out]
            stored = writer.allocate(out)
            indices = writer.open_elements(writer.dims(out), is_batched(out))
            writer.body.line(f"{stored.element(indices)} = {view.element(indices)}")
            writer.close()
        if writer.needs_error_flag:
            writer.arguments.append(("error_flag", "array", "int32"))
            writer.launch.append("error_flag")
        self._emit_kernel(writer, writer.launch,
                          grid="B" if is_batched(eqn.outputs[0]) else "1")

    def _emit_kernel(self, writer, launch, grid: str) -> None:
        text = SourceWriter()
        text.line("@cuda.jit")
        with text.block(f"def {writer.name}({', '.join(writer.signature())}, weights):"):
            for line in writer.header_lines():
                text.line(line)
            text.extend(writer.body)
        self.kernel_texts.append(text.text())
        self.kernel_types[writer.name] = writer.argument_types() + [f"{self.float_dtype}[::1]"]
        arguments = ", ".join(["B", "T", *launch, "weights"])
        with self.host.block(f"if B > 0:" if grid == "B" else "if True:"):
            self.host.line(f"{writer.name}[{grid}, rt.threads]({arguments})")

    # ---- scans ------------------------------------------------------------------------

    def _host_scan(self, plan) -> None:
        params = plan.params
        groups = plan.groups
        if groups["sequences"]:
            time_dim = groups["sequences"][0].shape[1]
            steps = "T" if time_dim == "T" else str(time_dim)
        else:
            steps = str(int(params["length"]))
        projections = {}
        for index, projection in plan.projections.items():
            projections[index] = self._host_projection(projection, steps)
        name = self.names.fresh(f"scan_{len(self.scan_kernels)}")
        kernels = [render_scan(plan, kernel_name, self.names.child(), self.layout,
                               self._outer, self.rows_per_block, self.float_dtype,
                               projections, self.shared_memory_bytes, grouped=grouped)
                   for kernel_name, grouped in ((name, False),
                                                (self.names.fresh(f"{name}_groups"), True))]
        for kernel in kernels:
            self.scan_kernels.append(kernel.name)
            self.kernel_texts.append(kernel.writer.text)
            self.kernel_types[kernel.name] = kernel.writer.argument_types(("B", "steps"))
        host = self.host
        steps_name = self.host_names.fresh("steps")
        host.line(f"{steps_name} = {steps}")
        blocks = self.host_names.fresh("blocks")
        host.line(f"{blocks} = (B + {self.rows_per_block - 1}) // {self.rows_per_block}")
        output_names = []
        for position, (var, dims) in enumerate(kernels[0].outputs):
            size = product(["B", *( [steps_name] if position == 0 and
                                    params["return_sequences"] else []), *dims])
            output_name = self.host_names.fresh("y" if position == 0 else "state")
            host.line(f"{output_name} = rt.empty({size}, np.{_np_name(var.dtype)})")
            self.host_values[var] = ("array", output_name)
            output_names.append(output_name)
        group_blocks = self.host_names.fresh("group_blocks")
        host.line(f"{group_blocks} = rt.blocks_per_group({blocks}, "
                  f"{kernels[1].widest_row}) if B > 0 else 0")
        with host.block(f"if {group_blocks} > 0:"):
            self._launch_scan(kernels[1], output_names, steps_name,
                              f"{blocks} * {group_blocks}", blocks, group_blocks)
        with host.block("elif B > 0:"):
            self._launch_scan(kernels[0], output_names, steps_name, blocks, blocks)

    def _launch_scan(self, kernel, output_names, steps_name, grid, blocks,
                     group_blocks=None) -> None:
        """Allocate a scan kernel's scratch (and a group layout's barrier counters), then
        launch it on `grid` blocks."""
        host = self.host
        outputs = iter(output_names)
        launch = [next(outputs) if item is None else item for item in kernel.launch_arguments]
        if group_blocks is not None:
            arrivals = self.host_names.fresh("arrivals")
            host.line(f"{arrivals} = rt.barrier_counters({blocks})")
            launch = [{"group_blocks": group_blocks, "arrivals": arrivals}.get(item, item)
                      for item in launch]
        if kernel.uses_scratch:
            scratch = self.host_names.fresh("scratch")
            host.line(f"{scratch} = rt.empty(max(1, {blocks}) * {kernel.work_size}, "
                      f"np.{self.float_dtype})")
            launch = [scratch if item == "scratch" else item for item in launch]
        host.line(f"{kernel.name}[{grid}, rt.threads](B, {steps_name}, {', '.join(launch)})")
        if group_blocks is not None:
            host.line(f"rt.check_barriers({arrivals})")

    def _host_projection(self, projection, steps) -> str:
        """GEMM of the whole sequence, then its element-wise chain in place."""
        source_kind, source = self._outer(projection.source)
        weight_kind, weight_key = self._outer(projection.weight)
        if source_kind != "array" or weight_kind != "packed":
            raise UnsupportedError("An input projection whose operands the CUDA generator "
                                   "cannot place.")
        in_size, out_size = projection.weight.shape
        offset = self.layout.add(weight_key, projection.weight.shape, projection.weight.dtype)
        result = self.host_names.fresh("projected")
        self.host.line(f"{result} = rt.empty(B * {steps} * {out_size}, "
                       f"np.{self.float_dtype})")
        self.host.line(f"rt.gemm({source}, B * {steps}, {in_size}, weights, {offset}, "
                       f"{out_size}, {result})")
        if projection.chain:
            self._host_chain(projection, result)
        return result

    def _host_chain(self, projection, buffer) -> None:
        name = self.names.fresh("projection_chain")
        writer = KernelWriter(name, self.names.child(), 1, self.float_dtype,
                              allocate=None, sizes={"B": "B", "T": "T"})
        writer.launch = []
        argument = writer.array_argument("projected", self.float_dtype)
        writer.launch.append(buffer)
        source_var = projection.matmul.outputs[0]
        in_place = Stored(argument, writer.dims(source_var), True, GLOBAL_ROW)
        writer.values[source_var] = in_place
        writer.allocate_hook = lambda kernel_writer, var: in_place
        for eqn in projection.chain:
            for atom in lowering.elementwise_operands(eqn):
                if isinstance(atom, Var) and atom not in writer.values:
                    writer.values[atom] = self._kernel_value(writer, atom)
            eqn_rendering.render_eqn(writer, eqn)
            writer.sync()
        self._emit_kernel(writer, writer.launch, grid="B")


def _np_name(dtype: str) -> str:
    return "bool_" if dtype == "bool" else dtype


def _float_dtype(program: Program) -> str:
    """The one float dtype of the program's scans (float32 unless they are float64)."""
    dtypes = set()
    for eqn in program.eqns:
        if eqn.op == "scan":
            dtypes.update(var.dtype for var in eqn.outputs)
    dtypes |= {var.dtype for _, var in program.params if var.dtype.startswith("float")}
    dtypes = {d for d in dtypes if d.startswith("float")}
    if len(dtypes) > 1:
        raise UnsupportedError(f"A program mixing float dtypes {sorted(dtypes)}: the CUDA "
                               f"generator uses one float dtype per program.")
    dtype = dtypes.pop() if dtypes else "float32"
    if dtype not in ("float32", "float64"):
        raise UnsupportedError(f"The CUDA generator supports float32 (and float64) "
                               f"programs; this one is {dtype}.")
    return dtype


def generate(program: Program, rows_per_block: int = 4,
             shared_memory_bytes: int = SHARED_MEMORY_BYTES) -> ModuleSource:
    """The CUDA module for an optimised program (see the module docstring).
    `shared_memory_bytes` bounds what a scan kernel puts in shared memory (48 KiB; 0
    keeps everything in global memory)."""
    return CudaGenerator(program, rows_per_block, shared_memory_bytes).generate()
