"""Writing one IR eqn into a CUDA kernel (kernel_writer.py), element by element.

Element-wise eqns and fused regions become ONE thread-strided loop whose body is the
scalar statements of kernels/lowering.py and kernels/scalar_ops.py (the same table the
CPU renderer reads); structural ops (slice, reshape, transpose, repeat, ...) are views
(values.Mapped: no code, no copy); matmul keeps one accumulator per row of the block in
registers so every weight read serves all the block's rows; reductions, softmax and
layer_norm give each (row, group) to one thread. Anything else raises UnsupportedError
naming the op.
"""

from __future__ import annotations

import math
import numbers

from rshop_ir.errors import UnsupportedError
from rshop_ir.ir import Literal
from rshop_ir.kernels import lowering
from rshop_ir.kernels.scalar_ops import ScalarContext
from rshop_ir.kernels.cuda import mathlib
from rshop_ir.kernels.cuda.kernel_writer import SPLIT_LANES, SPLIT_PARTS, is_batched
from rshop_ir.kernels.cuda.values import Mapped, contiguous_strides, product, total, unflatten
from rshop_ir.shapes import normalize_axes, normalize_axis

VIEW_OPS = ("slice", "reverse", "expand_dims", "squeeze", "reshape", "transpose", "repeat",
            "tile", "broadcast_to")


SCRATCH_NAMES = ("total", "best", "best_index", "candidate", "top", "mean", "variance",
                 "centered", "scale", "row")


def _private_locals(render):
    """Give the scratch variables (SCRATCH_NAMES) of one rendered eqn fresh names, so
    that numba types each use separately (a name reused with another dtype in the same
    kernel would not unify)."""
    import functools
    import re

    @functools.wraps(render)
    def wrapper(writer, eqn):
        first = len(writer.body.lines)
        render(writer, eqn)
        renames = {name: writer.names.fresh(name) for name in SCRATCH_NAMES}
        pattern = re.compile(r"\b(" + "|".join(SCRATCH_NAMES) + r")\b")
        writer.body.lines[first:] = [pattern.sub(lambda m: renames[m.group(1)], line)
                                     for line in writer.body.lines[first:]]
    return wrapper


class CudaScalarContext(ScalarContext):
    special_float_module = "math"

    def call(self, function: str, dtype: str, *args: str) -> str:
        name = mathlib.function_name(function, dtype)
        if name is None:
            raise UnsupportedError(f"The CUDA renderer has no math function {function!r} "
                                   f"for dtype {dtype}.")
        if name.startswith("math.") and dtype in ("float32", "float64"):
            return f"np.{dtype}({name}(np.{dtype}({args[0]})))"
        return f"{name}({', '.join(args)})"


CONTEXT = CudaScalarContext()


def render_eqn(writer, eqn) -> bool:
    """Write `eqn`; True when it wrote memory (the caller then syncs the block)."""
    if lowering.is_elementwise(eqn):
        return _elementwise(writer, eqn)
    if eqn.op in VIEW_OPS:
        _view(writer, eqn)
        return False
    handler = _HANDLERS.get(eqn.op)
    if handler is None:
        raise UnsupportedError(f"The Numba CUDA kernel generator does not support the op "
                               f"{eqn.op!r}.")
    handler(writer, eqn)
    return True


def element(writer, atom, indices, out_shape) -> str:
    """The scalar expression of `atom` at the element `indices` of an `out_shape` loop."""
    if isinstance(atom, Literal):
        return CONTEXT.const(atom.value, atom.dtype)
    return writer.values[atom].element(lowering.broadcast_index(atom.shape, out_shape, indices))


def _elementwise(writer, eqn) -> bool:
    if len(eqn.outputs) != 1:
        raise UnsupportedError(f"A {eqn.op!r} with {len(eqn.outputs)} outputs.")
    out = eqn.outputs[0]
    body = lowering.elementwise_as_body(eqn)
    operands = lowering.elementwise_operands(eqn)
    stored = writer.allocate(out)
    indices = writer.open_elements(writer.dims(out), is_batched(out))
    inputs = [element(writer, atom, indices, out.shape) for atom in operands]
    statements, results = lowering.scalar_statements(body, inputs, CONTEXT,
                                                     writer.names.fresh)
    for name, expression in statements:
        writer.body.line(f"{name} = {expression}")
    writer.body.line(f"{stored.element(indices)} = {_store_cast(results[0], out.dtype)}")
    writer.close()
    return True


def _store_cast(expression: str, dtype: str) -> str:
    return expression if dtype == "bool" else f"np.{dtype}({expression})"


# ---- views -------------------------------------------------------------------------------

def _view(writer, eqn) -> None:
    x, out = eqn.inputs[0], eqn.outputs[0]
    if isinstance(x, Literal):
        raise UnsupportedError(f"{eqn.op} of a literal.")
    base = writer.values[x]
    params = eqn.params
    batched_in, batched_out = is_batched(x), is_batched(out)
    if batched_in != batched_out:
        raise UnsupportedError(f"{eqn.op} {x.shape} -> {out.shape} moves the batch dim, "
                               f"which the CUDA generator keeps first.")
    if eqn.op == "slice":
        axis = normalize_axis(params["axis"], x.ndim)
        start = params["start"]
        if isinstance(x.shape[axis], int):
            start = slice(start, params["stop"]).indices(x.shape[axis])[0]
        _check_not_batch_axis(eqn, axis, batched_in)
        index_map = _shift(axis, start)
    elif eqn.op == "reverse":
        axis = normalize_axis(params["axis"], x.ndim)
        _check_not_batch_axis(eqn, axis, batched_in)
        last = writer.dims(x)[axis - 1] if batched_in else writer.dims(x)[axis]
        index_map = _replace(axis, lambda i: f"({last} - 1 - {i})")
    elif eqn.op == "expand_dims":
        axis = normalize_axis(params["axis"], x.ndim + 1)
        _check_not_batch_axis(eqn, axis, batched_in)
        index_map = lambda idx, axis=axis: idx[:axis] + idx[axis + 1:]   # noqa: E731
    elif eqn.op == "squeeze":
        axes = normalize_axes(params["axis"], x.ndim)
        for axis in axes:
            _check_not_batch_axis(eqn, axis, batched_in)

        def index_map(idx, axes=axes, ndim=x.ndim):
            idx, result = list(idx), []
            for position in range(ndim):
                result.append("0" if position in axes else idx.pop(0))
            return result
    elif eqn.op == "transpose":
        perm = tuple(params["perm"])
        if batched_in and perm[0] != 0:
            raise UnsupportedError("transpose moving the batch dim is not supported by the "
                                   "CUDA generator.")
        inverse = [perm.index(position) for position in range(len(perm))]
        index_map = lambda idx, inverse=inverse: [idx[p] for p in inverse]   # noqa: E731
    elif eqn.op == "repeat":
        axis = normalize_axis(params["axis"], x.ndim)
        _check_not_batch_axis(eqn, axis, batched_in)
        repeats = int(params["repeats"])
        index_map = _replace(axis, lambda i: f"({i} // {repeats})")
    elif eqn.op == "tile":
        counts = list(params["repeats"])
        if batched_in and len(counts) == x.ndim and counts[0] != 1:
            raise UnsupportedError("tile along the batch dim is not supported by the CUDA "
                                   "generator.")
        offset = len(counts) - x.ndim if len(counts) > x.ndim else 0

        def index_map(idx, dims=x.shape, offset=offset):
            idx = idx[offset:]
            return [i if (not isinstance(d, int) or position == 0 and batched_in)
                    else f"({i} % {d})" for position, (i, d) in enumerate(zip(idx, dims))]
    elif eqn.op == "broadcast_to":
        index_map = lambda idx, shape=x.shape, out_shape=out.shape: \
            lowering.broadcast_index(shape, out_shape, idx)   # noqa: E731
    else:   # reshape
        in_dims, out_dims = writer.dims(x), writer.dims(out)
        out_strides = contiguous_strides(out_dims)

        def index_map(idx, batched=batched_in):
            inner = idx[1:] if batched else idx
            flat = total(i if str(s) == "1" else f"{i} * {s}"
                         for i, s in zip(inner, out_strides))
            mapped = unflatten(flat, in_dims)
            return ([idx[0]] if batched else []) + mapped
    writer.values[out] = Mapped(base, index_map)


def _check_not_batch_axis(eqn, axis, batched) -> None:
    if batched and axis == 0:
        raise UnsupportedError(f"{eqn.op} along the batch dim is not supported by the CUDA "
                               f"generator.")


def _shift(axis, start):
    if start == 0:
        return lambda idx: idx
    return _replace(axis, lambda i: f"({i} + {start})")


def _replace(axis, fn):
    def index_map(idx):
        idx = list(idx)
        idx[axis] = fn(idx[axis])
        return idx
    return index_map


# ---- copies ------------------------------------------------------------------------------

def _concatenate(writer, eqn) -> None:
    out = eqn.outputs[0]
    axis = normalize_axis(eqn.params["axis"], out.ndim)
    _check_not_batch_axis(eqn, axis, is_batched(out))
    stored = writer.allocate(out)
    start = 0
    for atom in eqn.inputs:
        if isinstance(atom, Literal):
            raise UnsupportedError("concatenate of a literal.")
        indices = writer.open_elements(writer.dims(atom), is_batched(atom))
        target = list(indices)
        target[axis] = f"({indices[axis]} + {start})" if start else indices[axis]
        source = element(writer, atom, indices, atom.shape)
        writer.body.line(f"{stored.element(target)} = {source}")
        writer.close()
        start += atom.shape[axis]


def _fill(writer, eqn) -> None:
    out = eqn.outputs[0]
    stored = writer.allocate(out)
    indices = writer.open_elements(writer.dims(out), is_batched(out))
    writer.body.line(f"{stored.element(indices)} = "
                     f"{CONTEXT.const(eqn.params['value'], out.dtype)}")
    writer.close()


# ---- contractions ------------------------------------------------------------------------

def _matmul(writer, eqn) -> None:
    a, b = eqn.inputs
    out = eqn.outputs[0]
    if isinstance(a, Literal) or isinstance(b, Literal):
        raise UnsupportedError("matmul of a literal.")
    if not is_batched(a) or (is_batched(b) and b.ndim != a.ndim) \
            or (not is_batched(b) and b.ndim != 2) or out.dtype != writer.float_dtype:
        raise UnsupportedError(f"matmul of {a.type} and {b.type} is not supported by the "
                               f"CUDA generator (it takes a batched left operand and a 2-D "
                               f"weight or a batched right operand of the same rank).")
    stored = writer.allocate(out)
    out_dims = writer.dims(out)
    contraction = writer.dims(a)[-1]
    a_value, b_value = writer.values[a], writer.values[b]
    names, body = writer.names, writer.body
    flat, k, total_name, weight = (names.fresh(hint) for hint in
                                   ("e", "k", "total", "weight"))
    per_row = product(out_dims)
    indices = [names.fresh("i") for _ in out_dims]
    zero = CONTEXT.const(0, out.dtype)
    if writer.split_contractions and not is_batched(b) and len(out_dims) == 1:
        _split_matmul(writer, stored, a_value, b_value, out_dims[0], contraction, zero,
                      writer.weight_slices.get(b))
        return
    with body.block(f"for {flat} in range(tid, {per_row}, nthreads):"):
        for name, expression in zip(indices, unflatten(flat, out_dims)):
            body.line(f"{name} = {expression}")
        a_index = ["r", *indices[:-1], k]
        b_index = (["r", *indices[:-2], k, indices[-1]] if is_batched(b)
                   else [k, indices[-1]])
        if is_batched(b):
            # a per-row right operand: nothing to share across rows
            with body.block("for r in range(rows_here):"):
                body.line(f"{total_name} = {zero}")
                with body.block(f"for {k} in range({contraction}):"):
                    body.line(f"{total_name} += {a_value.element(a_index)} * "
                              f"{b_value.element(b_index)}")
                body.line(f"{stored.element(['r', *indices])} = {total_name}")
            return
        writer.needs_accumulator = True
        with body.block("for r in range(rows_here):"):
            body.line(f"acc[r] = {zero}")
        _accumulate_rows(body, k, f"range({contraction})", weight, b_value.element(b_index),
                         a_value.element(a_index))
        with body.block("for r in range(rows_here):"):
            body.line(f"{stored.element(['r', *indices])} = acc[r]")


def _accumulate_rows(body, k, indices, weight, weight_element, left_element) -> None:
    """acc[r] += left[r, k] * weight[k, ...] for k in `indices` (a range expression):
    each weight element read once, for all the block's rows."""
    with body.block(f"for {k} in {indices}:"):
        body.line(f"{weight} = {weight_element}")
        with body.block("for r in range(rows_here):"):
            body.line(f"acc[r] += {left_element} * {weight}")


def _split_matmul(writer, stored, a_value, b_value, columns, contraction, zero,
                  weight_slice=None) -> None:
    """out (rows, columns) = a (rows, contraction) @ weight, in a scan kernel.

    The block (a member of its group, in the group layout) takes tiles of `split_lanes`
    columns in turn; in a tile, thread (part, lane) sums column `lane` over the indices
    k = part, part + split_parts, ..., so that a warp reads consecutive columns of a
    weight row (coalesced) and each thread only 1/split_parts of the contraction; the
    parts' sums meet in the shared `partials` and the part-0 threads add them up.
    Every thread of the block passes the same syncthreads: the tiles a block takes
    depend only on its member index. `weight_slice` (name, tiles): the shared array
    into which the kernel's preamble copied this block's tiles of the weight, used when
    `<name>_used` (scan_kernel._copy_weight_slice).

    Where the kernel has room for a shared staging array of left rows
    (`writer.left_staging`, scan_kernel.py), the block first copies its rows of `a`
    there: every k of the contraction then reads shared memory instead of waiting on
    an L2 load (the group layout's workspace is in global memory). Each thread then
    keeps one accumulator per row of the block in registers (rows past `rows_here`
    repeat row 0 and are never stored), so the loop has no local-memory traffic.
    Without that room, the accumulators are the local array `acc`, indexed by row."""
    writer.needs_partials = True
    names, body = writer.names, writer.body
    tile, column, k, p, total, weight = (names.fresh(hint) for hint in
                                         ("tile", "column", "k", "p", "total", "weight"))
    rows = writer.rows_per_block
    staging = writer.left_staging
    staged = None
    # the staging array is sized from concrete contractions: a symbolic one stays in place
    if staging is not None and isinstance(contraction, numbers.Integral) \
            and staging[1] >= rows * int(contraction):
        staged = _stage_left(writer, a_value, contraction, staging[0])
        row_names = [0] + [names.fresh("row") for _ in range(1, rows)]
        for position, row in enumerate(row_names[1:], start=1):
            body.line(f"{row} = {position} if rows_here > {position} else 0")
        accumulators = [names.fresh("acc") for _ in range(rows)]
        terms = [(accumulator, f"{staged}[{product([row, contraction])} + {k}]")
                 for accumulator, row in zip(accumulators, row_names)]
    else:
        writer.needs_accumulator = True
        left = a_value.element(["r", k])

    def accumulate(weight_element):
        if staged is not None:
            _accumulate_registers(body, k, indices, weight, weight_element, terms)
        else:
            _accumulate_rows(body, k, indices, weight, weight_element, left)

    with body.block(f"for {tile} in range(member, ({columns} + split_lanes - 1) // "
                    f"split_lanes, members):"):
        body.line(f"{column} = {tile} * split_lanes + lane")
        with body.block(f"if part < split_parts and {column} < {columns}:"):
            if staged is not None:
                for accumulator in accumulators:
                    body.line(f"{accumulator} = {zero}")
            else:
                with body.block("for r in range(rows_here):"):
                    body.line(f"acc[r] = {zero}")
            indices = f"range(part, {contraction}, split_parts)"
            in_global = b_value.element([k, column])
            if weight_slice is None:
                accumulate(in_global)
            else:
                name, _ = weight_slice
                local = f"({tile} - member) // members"
                with body.block(f"if {name}_used:"):
                    accumulate(f"{name}[({local} * {contraction} + {k}) * "
                               f"{SPLIT_LANES} + lane]")
                with body.block("else:"):
                    accumulate(in_global)
            if staged is not None:
                for position, accumulator in enumerate(accumulators):
                    body.line(f"partials[({position * SPLIT_PARTS} + part) * "
                              f"{SPLIT_LANES} + lane] = {accumulator}")
            else:
                with body.block("for r in range(rows_here):"):
                    body.line(f"partials[(r * {SPLIT_PARTS} + part) * {SPLIT_LANES} + "
                              f"lane] = acc[r]")
        body.line("cuda.syncthreads()")
        with body.block(f"if part == 0 and {column} < {columns}:"):
            with body.block("for r in range(rows_here):"):
                body.line(f"{total} = {zero}")
                with body.block(f"for {p} in range(split_parts):"):
                    body.line(f"{total} += partials[(r * {SPLIT_PARTS} + {p}) * "
                              f"{SPLIT_LANES} + lane]")
                body.line(f"{stored.element(['r', column])} = {total}")
        body.line("cuda.syncthreads()")


def _stage_left(writer, a_value, contraction, staging_name):
    """Copy the block's rows of `a` (rows_here x contraction, row-major) into the shared
    staging array `staging_name`, then meet (the tile loop reads other threads'
    copies); returns the array's name."""
    names, body = writer.names, writer.body
    flat = names.fresh("i")
    with body.block(f"for {flat} in range(cuda.threadIdx.x, rows_here * {contraction}, "
                    f"cuda.blockDim.x):"):
        body.line(f"r = {flat} // ({contraction})")     # values address their row as `r`
        body.line(f"{staging_name}[{flat}] = "
                  f"{a_value.element(['r', f'{flat} - r * ({contraction})'])}")
    body.line("cuda.syncthreads()")
    return staging_name


def _accumulate_registers(body, k, indices, weight, weight_element, terms) -> None:
    """acc_r += left[row_r, k] * weight[k, column] for k in `indices`, one statement per
    (accumulator, left element) of `terms`: each weight element read once for all rows."""
    with body.block(f"for {k} in {indices}:"):
        body.line(f"{weight} = {weight_element}")
        for accumulator, left_element in terms:
            body.line(f"{accumulator} += {left_element} * {weight}")


@_private_locals
def _einsum(writer, eqn) -> None:
    from rshop_ir.ops.linalg import parse_einsum

    input_labels, output_labels = parse_einsum(eqn.params["equation"])
    out = eqn.outputs[0]
    if not is_batched(out):
        raise UnsupportedError("einsum without the batch dim first in its output.")
    sizes = {}
    for labels, atom in zip(input_labels, eqn.inputs):
        if isinstance(atom, Literal):
            raise UnsupportedError("einsum of a literal.")
        if is_batched(atom) and labels[0] != output_labels[0]:
            raise UnsupportedError("einsum whose batch label is not the output's first.")
        for position, (label, dim) in enumerate(zip(labels, atom.shape)):
            if position == 0 and is_batched(atom):
                continue
            sizes.setdefault(label, writer.sizes.get(dim, dim))
    contracted = sorted({label for labels in input_labels for label in labels}
                        - set(output_labels))
    stored = writer.allocate(out)
    indices = writer.open_elements(writer.dims(out), True)
    index = dict(zip(output_labels, indices))
    body = writer.body
    body.line(f"total = {CONTEXT.const(0, out.dtype)}")
    for label in contracted:
        index[label] = writer.names.fresh(f"i_{label}")
        body.line(f"for {index[label]} in range({sizes[label]}):")
        body.depth += 1
    factors = [writer.values[atom].element([index[label] for label in labels])
               for labels, atom in zip(input_labels, eqn.inputs)]
    body.line(f"total += {' * '.join(factors)}")
    body.depth -= len(contracted)
    body.line(f"{stored.element(indices)} = total")
    writer.close()


# ---- per-group reductions ------------------------------------------------------------------

def _groups(writer, x, axes):
    """Open a loop over (row, kept indices) of `x`, returning (indices with the reduced
    positions None, reduced dims, reduced axes)."""
    dims = writer.dims(x)
    batched = is_batched(x)
    offset = 1 if batched else 0
    for axis in axes:
        if batched and axis == 0:
            raise UnsupportedError("a reduction over the batch dim is not supported by the "
                                   "CUDA generator.")
    kept = [position for position in range(offset, x.ndim) if position not in axes]
    kept_indices = writer.open_elements([dims[p - offset] for p in kept], batched, "g")
    full = [None] * x.ndim
    if batched:
        full[0] = kept_indices[0]
    for position, name in zip(kept, kept_indices[offset:]):
        full[position] = name
    reduced_dims = [dims[axis - offset] for axis in axes]
    return full, reduced_dims


def _reduced_loop(writer, full, axes, reduced_dims):
    """Open a serial loop over the reduced positions; returns the complete index list."""
    flat = writer.names.fresh("k")
    writer.body.line(f"for {flat} in range({product(reduced_dims)}):")
    writer.body.depth += 1
    complete = list(full)
    for axis, expression in zip(axes, unflatten(flat, reduced_dims)):
        complete[axis] = expression
    return complete


def _open_rows(writer, eqn, axes):
    """For an op of `eqn` over `axes` of its first input x: allocate its output and
    open the loop over x's kept indices (`_groups`; the caller closes it). Returns
    (the stored output, the indices with the reduced positions None, the reduced
    dims, x's value)."""
    x = eqn.inputs[0]
    stored = writer.allocate(eqn.outputs[0])
    full, reduced_dims = _groups(writer, x, axes)
    return stored, full, reduced_dims, writer.values[x]


@_private_locals
def _reduction(writer, eqn) -> None:
    x, out = eqn.inputs[0], eqn.outputs[0]
    kind = eqn.op
    if kind in ("argmax", "argmin"):
        axes = (normalize_axis(eqn.params["axis"], x.ndim),)
    else:
        axes = tuple(sorted(normalize_axes(eqn.params["axes"], x.ndim)))
    keepdims = bool(eqn.params.get("keepdims", False))
    stored, full, reduced_dims, value = _open_rows(writer, eqn, axes)
    body = writer.body
    dtype = out.dtype
    if kind.startswith("arg"):
        better = ">" if kind == "argmax" else "<"
        body.line("best_index = 0")
        first = [("0" if index is None else index) for index in full]
        body.line(f"best = {value.element(first)}")
        complete = _reduced_loop(writer, full, axes, reduced_dims)
        body.line(f"candidate = {value.element(complete)}")
        with body.block(f"if best == best and (candidate {better} best or "
                        f"candidate != candidate):"):
            body.line("best = candidate")
            body.line(f"best_index = {complete[axes[0]]}")
        writer.close()
        result = f"np.{dtype}(best_index)"
    else:
        start = {"reduce_sum": 0, "reduce_mean": 0, "reduce_prod": 1}
        if x.dtype == "bool" and kind in ("reduce_max", "reduce_min"):
            combine = "(total or {x})" if kind == "reduce_max" else "(total and {x})"
            body.line(f"total = {'False' if kind == 'reduce_max' else 'True'}")
        elif kind in start:
            combine = "total * {x}" if kind == "reduce_prod" else "total + {x}"
            body.line(f"total = {CONTEXT.const(start[kind], dtype)}")
        else:
            function = "maximum" if kind == "reduce_max" else "minimum"
            combine = CONTEXT.call(function, dtype, "total", "{x}")
            first = [("0" if index is None else index) for index in full]
            body.line(f"total = {value.element(first)}")
        complete = _reduced_loop(writer, full, axes, reduced_dims)
        body.line("total = " + combine.replace("{x}", _cast_to(value.element(complete),
                                                                x.dtype, dtype)))
        writer.close()
        result = "total"
        if kind == "reduce_mean":
            result = f"np.{dtype}(total / ({product(reduced_dims)}))"
    target = [index for position, index in enumerate(full)
              if position not in axes or keepdims]
    target = ["0" if index is None else index for index in target]
    body.line(f"{stored.element(target)} = {result}")
    writer.close()


def _cast_to(expression: str, source: str, dtype: str) -> str:
    return expression if source == dtype or dtype == "bool" else f"np.{dtype}({expression})"


@_private_locals
def _softmax(writer, eqn) -> None:
    x, out = eqn.inputs[0], eqn.outputs[0]
    axis = normalize_axis(eqn.params["axis"], x.ndim)
    stored, full, reduced_dims, value = _open_rows(writer, eqn, (axis,))
    body = writer.body
    dtype = out.dtype
    complete = _reduced_loop(writer, full, (axis,), reduced_dims)
    body.line(f"top = {value.element(complete)}")
    writer.close()
    complete = _reduced_loop(writer, full, (axis,), reduced_dims)
    body.line(f"top = {CONTEXT.call('maximum', dtype, 'top', value.element(complete))}")
    writer.close()
    body.line(f"total = {CONTEXT.const(0, dtype)}")
    complete = _reduced_loop(writer, full, (axis,), reduced_dims)
    body.line(f"total += np.{dtype}(math.exp({value.element(complete)} - top))")
    writer.close()
    complete = _reduced_loop(writer, full, (axis,), reduced_dims)
    if eqn.op == "log_softmax":
        body.line(f"{stored.element(complete)} = np.{dtype}({value.element(complete)} - top "
                  f"- math.log(total))")
    else:
        body.line(f"{stored.element(complete)} = np.{dtype}(math.exp("
                  f"{value.element(complete)} - top) / total)")
    writer.close()
    writer.close()


@_private_locals
def _cumulative(writer, eqn) -> None:
    """cumsum / cumprod: each thread runs along the axis for its kept indices."""
    x, out = eqn.inputs[0], eqn.outputs[0]
    axis = normalize_axis(eqn.params["axis"], x.ndim)
    stored, full, reduced_dims, value = _open_rows(writer, eqn, (axis,))
    body = writer.body
    start, operator = (0, "+") if eqn.op == "cumsum" else (1, "*")
    body.line(f"total = {CONTEXT.const(start, out.dtype)}")
    complete = _reduced_loop(writer, full, (axis,), reduced_dims)
    body.line(f"total = total {operator} {value.element(complete)}")
    body.line(f"{stored.element(complete)} = total")
    writer.close()
    writer.close()


@_private_locals
def _layer_norm(writer, eqn) -> None:
    x, gamma, beta = eqn.inputs
    out = eqn.outputs[0]
    axes = tuple(sorted(normalize_axes(eqn.params["axis"], x.ndim)))
    stored, full, reduced_dims, value = _open_rows(writer, eqn, axes)
    body = writer.body
    dtype = out.dtype
    count = product(reduced_dims)
    body.line(f"mean = {CONTEXT.const(0, dtype)}")
    complete = _reduced_loop(writer, full, axes, reduced_dims)
    body.line(f"mean += {value.element(complete)}")
    writer.close()
    body.line(f"mean = np.{dtype}(mean / ({count}))")
    body.line(f"variance = {CONTEXT.const(0, dtype)}")
    complete = _reduced_loop(writer, full, axes, reduced_dims)
    body.line(f"centered = {value.element(complete)} - mean")
    body.line("variance += centered * centered")
    writer.close()
    body.line(f"variance = np.{dtype}(variance / ({count}))")
    epsilon = CONTEXT.const(eqn.params["epsilon"], dtype)
    body.line(f"scale = np.{dtype}(math.sqrt(variance + {epsilon}))")
    complete = _reduced_loop(writer, full, axes, reduced_dims)
    terms = [element(writer, atom, complete, x.shape) for atom in (gamma, beta)]
    body.line(f"{stored.element(complete)} = np.{dtype}(({value.element(complete)} - mean) "
              f"/ scale * {terms[0]} + {terms[1]})")
    writer.close()
    writer.close()


# ---- embedding lookups -------------------------------------------------------------------

@_private_locals
def _gather(writer, eqn) -> None:
    table, ids = eqn.inputs
    out = eqn.outputs[0]
    if normalize_axis(eqn.params["axis"], table.ndim) != 0 or isinstance(ids, Literal) \
            or is_batched(table) or not is_batched(ids):
        raise UnsupportedError("The CUDA generator supports gather on axis 0 of a weight "
                               "table with batched ids (embedding lookups) only.")
    stored = writer.allocate(out)
    indices = writer.open_elements(writer.dims(out), True)
    id_index = indices[:ids.ndim]
    row_index = indices[ids.ndim:]
    rows = table.shape[0]
    body = writer.body
    body.line(f"row = {writer.values[ids].element(id_index)}")
    body.line("if row < 0:")                     # counted from the end, as Keras's take
    body.line(f"    row += {rows}")
    writer.needs_error_flag = True
    with body.block(f"if row < 0 or row >= {rows}:"):
        body.line("error_flag[0] = 1")
        body.line(f"{stored.element(indices)} = {CONTEXT.const(math.nan, out.dtype)}")
    with body.block("else:"):
        body.line(f"{stored.element(indices)} = "
                  f"{writer.values[table].element(['row', *row_index])}")
    writer.close()


_HANDLERS = {
    "matmul": _matmul, "einsum": _einsum, "concatenate": _concatenate, "fill": _fill,
    "softmax": _softmax, "log_softmax": _softmax, "layer_norm": _layer_norm,
    "gather": _gather, "cumsum": _cumulative, "cumprod": _cumulative,
    **{name: _reduction for name in ("reduce_sum", "reduce_mean", "reduce_max",
                                     "reduce_min", "reduce_prod", "argmax", "argmin")},
}
