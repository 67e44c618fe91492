"""The persistent scan kernel: ONE launch runs every timestep of one `scan`.

Block layout: block i owns the batch rows [i * ROWS, i * ROWS + ROWS) and computes
EVERY hidden unit of them, so blocks never wait for each other: between the eqns of a
step the block only needs `cuda.syncthreads()` (no grid-wide sync, which is why the
simulator, running blocks one after another, checks it faithfully).

Per block, the workspace holds the step's values (one slot per eqn output), two slots
per state and readout (current/next, flipped by `par` each step: a state may be computed
from another one), and the last output `y_last`. Shared-memory policy (numba-cuda caps a
block at 48 KiB): the workspace goes in shared memory when it fits, else in a global
scratch array (one region per block, L1/L2 cached); the packed weights the body reads
are then copied to shared memory greedily, largest first, in what is left (after room
for the matmuls' partial sums); the others are read from global memory (L2), except that
in the group layout a block copies ITS column tiles of a weight too big to share whole
into shared memory when they fit (`_copy_weight_slice`: an LSTM of 256 units in groups
of 32 blocks keeps its whole recurrent weight on chip). A matmul by a weight splits its
contraction: a warp's threads take consecutive columns (coalesced weight reads) and the
block's warps take interleaved parts of the contraction, their sums meeting in shared
memory (eqn_rendering._split_matmul); each thread keeps one accumulator per row in
registers, so each weight element read serves all the block's rows.

Group layout (`grouped=True`, for few rows on a big GPU): G blocks own the same rows
and split each step's elements between them (kernel_writer.py): the matmul columns, so
each block streams only its share of the recurrent weights, and the gate math. Their
workspace is then one global region per group, and the syncs are the group's barrier
(group_sync.py). The codegen writes both layouts; the runtime picks one per call.

A step: body eqns (eqn_rendering.py; a sync before each that reads what another thread
may have written since the last one: step_syncs.py), then the commit: y_last, the next
states and readout (keeping the old rows where the mask is False), y_all[:, step] when
return_sequences; sync; flip `par`. The absorbed input projection (kernels/lowering.py)
arrives precomputed by a GEMM, (B, steps, N).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rshop_ir.errors import UnsupportedError
from rshop_ir.ir import Literal
from rshop_ir.kernels.cpu.source import SourceWriter
from rshop_ir.kernels.cuda import eqn_rendering
from rshop_ir.kernels.cuda.device import SHARED_MEMORY_BYTES
from rshop_ir.kernels.cuda.kernel_writer import SPLIT_LANES, KernelWriter, is_batched
from rshop_ir.kernels.cuda.step_syncs import StepSyncs
from rshop_ir.kernels.cuda.weights import stored_weight
from rshop_ir.kernels.cuda.values import (GLOBAL_ROW, LOCAL_ROW, Stored, contiguous_strides,
                                          product, total)

SHARED_RESERVE_BYTES = 512
MAX_SLICE_TILES = 4     # column tiles of one weight a block keeps in shared memory at most


@dataclass
class ScanKernel:
    """What the host needs to launch a rendered scan kernel."""

    name: str
    writer: KernelWriter
    launch_arguments: list          # host expressions, in kernel argument order
    outputs: list                   # (Var, per-row dims) for [y, *final states]
    work_size: int                  # workspace elements per block (per group if grouped)
    shared_work: bool
    shared_weights: list = field(default_factory=list)   # slot keys copied to shared
    widest_row: int = 1             # elements per row of the widest value of a step

    @property
    def uses_scratch(self) -> bool:
        return not self.shared_work


def render_scan(plan, name: str, names, layout, outer, rows_per_block: int,
                float_dtype: str, projections: dict,
                shared_memory_bytes: int = SHARED_MEMORY_BYTES,
                grouped: bool = False) -> ScanKernel:
    """Write the persistent kernel of `plan` (a lowering.ScanPlan), in the block layout
    or (`grouped`) the group layout (module docstring).

    outer(atom) -> ("packed", slot key) | ("array", host name) says how each outer value
    reaches the kernel; projections[index] is the host name of the precomputed (B,
    steps, N) projection of sequence `index`.
    """
    params = plan.params
    body = plan.body
    groups, inner = plan.groups, plan.body_groups
    rows = int(rows_per_block)
    for atom in body.outputs:
        if isinstance(atom, Literal):
            raise UnsupportedError("A scan body returning a literal is not supported by the "
                                   "CUDA generator.")
    for eqn in body.eqns:
        if eqn.op == "scan":
            raise UnsupportedError("A scan nested in a scan body is not supported by the "
                                   "CUDA generator (op 'scan' inside a step).")
    writer = KernelWriter(name, names, rows, float_dtype, allocate=None,
                          sizes={"B": "B", "T": "steps"}, grouped=grouped)
    writer.split_contractions = True
    # host names of the group layout's own arguments, set by the codegen
    launch = ["group_blocks", "arrivals"] if grouped else []

    def array_argument(hint, host_name, dtype):
        argument = writer.array_argument(hint, dtype)
        launch.append(host_name)
        return argument

    weights_argument = array_argument("weights", "weights", float_dtype)

    # ---- workspace plan -------------------------------------------------------------
    work_offsets = {}
    work_size = 0

    def reserve(key, count):
        nonlocal work_size
        work_offsets[key] = work_size
        work_size += count

    def per_block(var):
        size = int(np.prod([d for d in var.shape[1:]], dtype=np.int64)) \
            if is_batched(var) else int(np.prod(var.shape, dtype=np.int64))
        return size * rows if is_batched(var) else size

    for index, var in enumerate(inner["states"]):
        _check_float(var, float_dtype, "state")
        reserve(("state", index), 2 * per_block(var))
    if inner["readout"]:
        reserve(("readout", 0), 2 * per_block(inner["readout"][0]))
    y_var = body.outputs[0]
    _check_float(y_var, float_dtype, "output")
    reserve(("y_last", 0), per_block(y_var))
    for eqn in body.eqns:
        if eqn.op in eqn_rendering.VIEW_OPS or eqn.op == "constant":
            continue
        for var in eqn.outputs:
            _check_float(var, float_dtype, f"{eqn.op!r} result")
            reserve(("value", id(var)), per_block(var))
    itemsize = np.dtype(float_dtype).itemsize
    budget = max(0, shared_memory_bytes - SHARED_RESERVE_BYTES)
    if any(eqn.op == "matmul" for eqn in body.eqns):    # room for split matmuls' sums
        budget = max(0, budget - writer.partials_size() * itemsize)
    # a group's blocks read each other's values: its workspace is in global memory
    shared_work = not grouped and work_size * itemsize <= budget
    if shared_work:
        budget -= work_size * itemsize
    staged = _left_staging_elements(body, rows)  # split matmuls' left rows, in shared
    if 0 < staged * itemsize <= budget:
        writer.left_staging = (names.fresh("lsh"), staged)
        budget -= staged * itemsize

    # ---- weights: shared where they fit, largest first --------------------------------
    packed = {}                    # slot key -> (offset, shape)
    for atom in groups["constants"]:
        kind, key = outer(atom)
        if kind == "packed":
            packed[key] = (layout.add(key, atom.shape, atom.dtype), atom.shape, atom.dtype)
    shared_weights, shared_offsets, shared_size = [], {}, 0
    for key, (offset, shape, _) in sorted(packed.items(), key=lambda item: -_count(item[1][1])):
        count = _count(shape)
        if count * itemsize <= budget:
            shared_offsets[key] = shared_size
            shared_weights.append(key)
            shared_size += count
            budget -= count * itemsize

    # ---- group layout: the tiles of a big weight each block reads, shared if they fit --
    body_keys = {body_var: outer(outer_atom)[1] for outer_atom, body_var
                 in zip(groups["constants"], inner["constants"])
                 if outer(outer_atom)[0] == "packed"}
    slices = []
    for eqn in body.eqns if grouped else ():   # a lone block reads every tile
        weight = eqn.inputs[1] if eqn.op == "matmul" else None
        if weight in body_keys and body_keys[weight] not in shared_offsets \
                and weight not in writer.weight_slices and len(weight.shape) == 2:
            per_tile = int(weight.shape[0]) * SPLIT_LANES
            tiles = min(MAX_SLICE_TILES, budget // (per_tile * itemsize))
            if tiles >= 1:
                slice_name = names.fresh("wslice")
                writer.weight_slices[weight] = (slice_name, tiles)
                slices.append((slice_name, tiles, per_tile, weight))
                budget -= tiles * per_tile * itemsize

    def weight_value(key, shape):
        dtype = packed[key][2]
        if key in shared_offsets:
            return stored_weight("wsh", shape, dtype, shared_offsets[key])
        return stored_weight(weights_argument, shape, dtype, packed[key][0])

    def allocate(kernel_writer, var):
        if var not in work_keys:
            raise UnsupportedError(f"No workspace slot for a value of {var.type}.")
        return _work_value(kernel_writer, var, work_offsets[work_keys[var]])

    work_keys = {var: ("value", id(var)) for eqn in body.eqns for var in eqn.outputs}
    writer.allocate_hook = allocate

    # ---- kernel arguments and body inputs -------------------------------------------
    sequence_arguments = []
    for index, (outer_atom, body_var) in enumerate(zip(groups["sequences"],
                                                       inner["sequences"])):
        if index in projections:
            host_name, dtype = projections[index], body_var.dtype
        else:
            kind, host_name = outer(outer_atom)
            dtype = outer_atom.dtype
            if kind != "array":
                raise UnsupportedError("A scan sequence that is a weight.")
        argument = array_argument(f"sequence_{index}", host_name, dtype)
        dims = writer.dims(body_var)
        size = product(dims)
        writer.values[body_var] = Stored(argument, dims, True, GLOBAL_ROW,
                                         offset=f"t * {size}", row_stride=f"steps * {size}")
        sequence_arguments.append(argument)
    state_arguments = [array_argument(f"initial_state_{k}", outer(atom)[1], atom.dtype)
                       for k, atom in enumerate(groups["states"])]
    readout_argument = (array_argument("initial_readout", outer(groups["readout"][0])[1],
                                       groups["readout"][0].dtype)
                        if groups["readout"] else None)
    for outer_atom, body_var in zip(groups["constants"], inner["constants"]):
        kind, key = outer(outer_atom)
        if kind == "packed":
            writer.values[body_var] = weight_value(key, body_var.shape)
        else:
            argument = array_argument("constant", key, outer_atom.dtype)
            writer.values[body_var] = Stored(argument, writer.dims(body_var),
                                             is_batched(body_var), GLOBAL_ROW)
    mask_argument = (array_argument("mask", outer(groups["mask"][0])[1], "bool")
                     if groups["mask"] else None)
    output_names = []
    outputs = []
    for position, var in enumerate(plan.eqn.outputs):
        hint = "y_out" if position == 0 else f"final_state_{position - 1}"
        output_names.append(writer.array_argument(hint, var.dtype))
        launch.append(None)          # filled in by the host with the allocated array
        outputs.append((var, writer.dims(body.outputs[position])))
    scratch_argument = None
    if not shared_work:
        scratch_argument = array_argument("scratch", "scratch", float_dtype)

    state_values = []
    for index, var in enumerate(inner["states"]):
        offset = work_offsets[("state", index)]
        slot = per_block(var)
        value = _work_value(writer, var, f"{offset} + par * {slot}")
        writer.values[var] = value
        state_values.append((var, offset, slot))
    readout_slot = None
    if inner["readout"]:
        var = inner["readout"][0]
        offset = work_offsets[("readout", 0)]
        readout_slot = (var, offset, per_block(var))
        writer.values[var] = _work_value(writer, var, f"{offset} + par * {per_block(var)}")
    y_last = _work_value(writer, y_var, work_offsets[("y_last", 0)])

    # ---- the time loop ----------------------------------------------------------------
    loop = writer.body
    backwards = bool(params["go_backwards"])
    return_sequences = bool(params["return_sequences"])
    syncs = StepSyncs(writer, eqn_rendering.VIEW_OPS)
    with loop.block("for step in range(steps):"):
        loop.line("t = steps - 1 - step" if backwards else "t = step")
        for eqn in body.eqns:
            if eqn.op == "constant":
                value = np.asarray(eqn.params["value"], dtype=eqn.outputs[0].dtype)
                out = eqn.outputs[0]
                offset = layout.add(("constant", id(eqn)), out.shape, out.dtype, value=value)
                writer.values[out] = stored_weight(weights_argument, out.shape, out.dtype,
                                                   offset)
                continue
            syncs.before_eqn(eqn)
            syncs.after_eqn(eqn, eqn_rendering.render_eqn(writer, eqn))
        # the commit reads the step's output and new states element by element
        syncs.before_reads([(y_var, syncs.domain(y_var), True)] +
                           [(new_state, syncs.domain(var), True) for (var, _, _), new_state
                            in zip(state_values, body.outputs[1:])])
        _render_commit(writer, plan, y_last, state_values, readout_slot, mask_argument,
                       output_names[0] if return_sequences else None)
        syncs.sync()
        loop.line("par = 1 - par")

    # ---- preamble and epilogue --------------------------------------------------------
    preamble = SourceWriter()
    if shared_work:
        preamble.line(f"work = cuda.shared.array({max(work_size, 1)}, np.{float_dtype})")
        preamble.line("wbase = 0")
    else:
        preamble.line(f"work = {scratch_argument}")
        preamble.line(f"wbase = {'group' if grouped else 'cuda.blockIdx.x'} * {work_size}")
    if shared_weights:
        preamble.line(f"wsh = cuda.shared.array({shared_size}, np.{float_dtype})")
        for key in shared_weights:
            count = _count(packed[key][1])
            # every block fills its own copy (in the group layout too)
            with preamble.block(f"for i in range(cuda.threadIdx.x, {count}, "
                                f"cuda.blockDim.x):"):
                preamble.line(f"wsh[{shared_offsets[key]} + i] = "
                              f"{weights_argument}[{packed[key][0]} + i]")
    for slice_name, tiles, per_tile, weight in slices:
        _copy_weight_slice(preamble, writer, slice_name, tiles, per_tile, weight)
    preamble.line("par = 0")
    for (var, offset, slot), argument in zip(state_values, state_arguments):
        _copy_rows(preamble, writer, var, argument, f"wbase + {offset}", to_work=True)
    if readout_slot is not None:
        var, offset, _ = readout_slot
        _copy_rows(preamble, writer, var, readout_argument, f"wbase + {offset}", to_work=True)
    y_size = product(writer.dims(y_var))
    with preamble.block(f"for i in range(tid, rows_here * {y_size}, nthreads):"):
        preamble.line(f"work[wbase + {work_offsets[('y_last', 0)]} + i] = "
                      f"{eqn_rendering.CONTEXT.const(0, float_dtype)}")
    for line in writer.sync_lines():
        preamble.line(line)
    epilogue = SourceWriter()
    if not return_sequences:
        _copy_rows(epilogue, writer, y_var, output_names[0],
                   f"wbase + {work_offsets[('y_last', 0)]}", to_work=False)
    for (var, offset, slot), argument in zip(state_values, output_names[1:]):
        _copy_rows(epilogue, writer, var, argument, f"wbase + {offset} + par * {slot}",
                   to_work=False)

    text = SourceWriter()
    signature = ", ".join(writer.signature(("B", "steps")))
    text.line("@cuda.jit")
    with text.block(f"def {name}({signature}):"):
        owner = "a group of G blocks" if grouped else "block"
        text.line(f'"""scan {plan.layout}; go_backwards={backwards}, '
                  f'return_sequences={return_sequences}; {rows} rows per {owner}; '
                  f'workspace {work_size} x {float_dtype} in '
                  f'{"shared" if shared_work else "global"} memory; {len(shared_weights)} '
                  f'of {len(packed)} weights in shared memory."""')
        for line in writer.header_lines():
            text.line(line)
        text.extend(preamble)
        text.extend(writer.body)
        text.extend(epilogue)
    writer.text = text.text()
    widest = max([_row_elements(writer, var) for eqn in body.eqns for var in eqn.outputs
                  if is_batched(var)] + [1])
    return ScanKernel(name, writer, launch, outputs, work_size, shared_work, shared_weights,
                      widest)


def _row_elements(writer, var) -> int:
    """Elements per batch row of `var` (a step value's dims are static; 1 if not)."""
    try:
        return _count([int(dim) for dim in writer.dims(var)])
    except (TypeError, ValueError, UnsupportedError):
        return 1


def _left_staging_elements(body, rows: int) -> int:
    """Elements of the shared array the split matmuls of `body` stage their left rows in
    (eqn_rendering._split_matmul): rows x the widest contraction of a matmul of a
    per-row vector by a 2-D weight; 0 when there is none."""
    widest = 0
    for eqn in body.eqns:
        if eqn.op != "matmul":
            continue
        left, weight = eqn.inputs
        if isinstance(left, Literal) or isinstance(weight, Literal) or not is_batched(left) \
                or is_batched(weight) or left.ndim != 2 or weight.ndim != 2:
            continue
        contraction = left.shape[-1]
        if isinstance(contraction, (int, np.integer)):
            widest = max(widest, int(contraction))
    return rows * widest


def _copy_weight_slice(preamble, writer, name, tiles, per_tile, weight) -> None:
    """Copy the column tiles of `weight` that this block's split matmuls take
    (eqn_rendering._split_matmul: tiles member, member + members, ...) into the shared
    array `name`, tile after tile, (contraction, SPLIT_LANES) each, when they are at
    most `tiles`; `name_used` tells the matmul whether they are there."""
    contraction, columns = (int(dim) for dim in weight.shape)
    stored = writer.values[weight]
    preamble.line(f"{name} = cuda.shared.array({tiles * per_tile}, np.{writer.float_dtype})")
    preamble.line(f"{name}_tiles = (({columns} + split_lanes - 1) // split_lanes - member "
                  f"+ members - 1) // members")
    preamble.line(f"{name}_used = {name}_tiles <= {tiles}")
    with preamble.block(f"if {name}_used:"):
        count = f"{name}_tiles * {contraction} * split_lanes"
        with preamble.block(f"for i in range(cuda.threadIdx.x, {count}, cuda.blockDim.x):"):
            preamble.line(f"local_tile = i // ({contraction} * split_lanes)")
            preamble.line(f"k = (i - local_tile * {contraction} * split_lanes) // split_lanes")
            preamble.line(f"lane_of = i - local_tile * {contraction} * split_lanes "
                          f"- k * split_lanes")
            preamble.line(f"column = (member + local_tile * members) * split_lanes + lane_of")
            preamble.line(f"slot = (local_tile * {contraction} + k) * {SPLIT_LANES} + lane_of")
            with preamble.block(f"if column < {columns}:"):
                preamble.line(f"{name}[slot] = {stored.element(['k', 'column'])}")
    preamble.line("cuda.syncthreads()")


def _count(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _check_float(var, float_dtype, what) -> None:
    if var.dtype != float_dtype:
        raise UnsupportedError(f"A scan {what} of dtype {var.dtype} in a {float_dtype} "
                               f"kernel: the CUDA generator keeps one float dtype per scan.")


def _work_value(writer, var, offset) -> Stored:
    return Stored("work", writer.dims(var), is_batched(var), LOCAL_ROW,
                  offset=f"wbase + {offset}")


def _copy_rows(lines, writer, var, array, work_offset, to_work: bool) -> None:
    """Copy the block's rows of a batched per-row value between a (B, ...) device array
    and a workspace slot (both C-contiguous)."""
    size = product(writer.dims(var))
    with lines.block(f"for i in range(tid, rows_here * {size}, nthreads):"):
        global_index = f"row0 * {size} + i"
        if to_work:
            lines.line(f"work[{work_offset} + i] = {array}[{global_index}]")
        else:
            lines.line(f"{array}[{global_index}] = work[{work_offset} + i]")


def _render_commit(writer, plan, y_last, state_values, readout_slot, mask, y_all) -> None:
    """y_last, next states and readout (mask: keep old rows), y_all[:, step]."""
    body = plan.body
    y_var = body.outputs[0]
    y_value = writer.values[y_var]
    dims = writer.dims(y_var)
    size = product(dims)

    def keep_line():
        if mask is not None:
            writer.body.line(f"keep = {mask}[(row0 + r) * steps + t]")

    def select(new, old):
        return new if mask is None else f"{new} if keep else {old}"

    indices = writer.open_elements(dims, True, "k")
    keep_line()
    writer.body.line(f"{y_last.element(indices)} = "
                     f"{select(y_value.element(indices), y_last.element(indices))}")
    if y_all is not None:
        inner = total(i if str(s) == "1" else f"{i} * {s}"
                      for i, s in zip(indices[1:], contiguous_strides(dims)))
        writer.body.line(f"{y_all}[(row0 + r) * steps * {size} + step * {size} + {inner}] "
                         f"= {y_last.element(indices)}")
    if readout_slot is not None:
        var, offset, slot = readout_slot
        following = _work_value(writer, var, f"{offset} + (1 - par) * {slot}")
        current = writer.values[var]
        writer.body.line(f"{following.element(indices)} = "
                         f"{select(y_value.element(indices), current.element(indices))}")
    writer.close()
    for (var, offset, slot), new_state in zip(state_values, body.outputs[1:]):
        indices = writer.open_elements(writer.dims(var), True, "k")
        keep_line()
        following = _work_value(writer, var, f"{offset} + (1 - par) * {slot}")
        current = writer.values[var]
        new_value = writer.values[new_state]
        writer.body.line(f"{following.element(indices)} = "
                         f"{select(new_value.element(indices), current.element(indices))}")
        writer.close()
