"""Ops that move data without arithmetic: concatenate, slice, shift, reshape, transpose,
gather...

Also the value sources `constant` (a small array held in its params) and `fill` (a
shape, possibly symbolic, filled with one value). Params named `shape` may contain "B"
and "T"; the interpreter replaces them by the bound sizes before calling `impl`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from rshop_ir.ir import TensorType, normalize_dtype
from rshop_ir.ops.registry import REQUIRED, register
from rshop_ir.shapes import concrete_size, is_symbolic, normalize_axes, normalize_axis


def concatenate_rule(*values: TensorType, axis: int) -> tuple:
    if not values:
        raise ValueError("concatenate needs at least one input.")
    first = values[0]
    axis = normalize_axis(axis, first.ndim)
    total = 0
    for value in values:
        other_dims = [d for i, d in enumerate(value.shape) if i != axis]
        if value.ndim != first.ndim or other_dims != [
                d for i, d in enumerate(first.shape) if i != axis]:
            raise ValueError(f"concatenate on axis {axis}: shapes differ off that axis: "
                             f"{', '.join(str(v) for v in values)}.")
        if is_symbolic(value.shape[axis]):
            if len(values) == 1:
                total = value.shape[axis]
                break
            raise ValueError(f"concatenate along symbolic dim {value.shape[axis]!r} is not "
                             f"supported: {', '.join(str(v) for v in values)}.")
        total += value.shape[axis]
    dtype = np.result_type(*(np.dtype(v.dtype) for v in values)).name
    shape = first.shape[:axis] + (total,) + first.shape[axis + 1:]
    return (TensorType(dtype, shape),)


def slice_rule(x: TensorType, axis: int, start: int, stop) -> tuple:
    axis = normalize_axis(axis, x.ndim)
    dim = x.shape[axis]
    if is_symbolic(dim):
        if start < 0 or stop is None or stop < 0 or stop < start:
            raise ValueError(f"slice of symbolic dim {dim!r} needs 0 <= start <= stop. "
                             f"Received start={start}, stop={stop}.")
        size = stop - start
    else:
        size = len(range(*slice(start, stop).indices(dim)))
    return (TensorType(x.dtype, x.shape[:axis] + (size,) + x.shape[axis + 1:]),)


def slice_impl(x, axis, start, stop):
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def shift_rule(x: TensorType, axis: int, offset: int) -> tuple:
    normalize_axis(axis, x.ndim)
    if not isinstance(offset, (int, np.integer)) or isinstance(offset, bool):
        raise ValueError(f"shift {x}: the offset must be an int. Received {offset!r}.")
    return (x,)


def shift_impl(x, axis, offset):
    """`x` moved `offset` entries along `axis` (later when positive), zeros where no
    entry moved in: out[i] = x[i - offset] for 0 <= i - offset < n."""
    out = np.zeros_like(x)
    size, offset = x.shape[axis], int(offset)
    kept = max(size - abs(offset), 0)
    target, source = [slice(None)] * x.ndim, [slice(None)] * x.ndim
    start = max(offset, 0)
    target[axis] = slice(start, start + kept)
    source[axis] = slice(start - offset, start - offset + kept)
    out[tuple(target)] = x[tuple(source)]
    return out


def reshape_rule(x: TensorType, shape) -> tuple:
    """Symbolic dims must appear as often in `shape` as in x; -1 takes the rest."""
    shape = tuple(shape)
    symbols_in = Counter(d for d in x.shape if is_symbolic(d))
    symbols_out = Counter(d for d in shape if is_symbolic(d))
    if symbols_in != symbols_out or list(shape).count(-1) > 1:
        raise ValueError(f"reshape {x} to {shape}: symbolic dims must be kept as they are "
                         f"and at most one -1 is allowed.")
    size_in = concrete_size([d for d in x.shape if not is_symbolic(d)])
    known = [d for d in shape if not is_symbolic(d) and d != -1]
    size_known = concrete_size(known)
    if -1 in shape:
        if size_known == 0 or size_in % size_known:
            raise ValueError(f"reshape {x} to {shape}: sizes do not divide.")
        shape = tuple(size_in // size_known if d == -1 else d for d in shape)
    elif size_known != size_in:
        raise ValueError(f"reshape {x} to {shape}: the number of elements differs.")
    return (TensorType(x.dtype, shape),)


def expand_dims_rule(x: TensorType, axis: int) -> tuple:
    axis = normalize_axis(axis, x.ndim + 1)
    return (TensorType(x.dtype, x.shape[:axis] + (1,) + x.shape[axis:]),)


def squeeze_rule(x: TensorType, axis) -> tuple:
    axes = normalize_axes(axis, x.ndim)
    for position in axes:
        if x.shape[position] != 1:
            raise ValueError(f"squeeze {x}: dim {position} is {x.shape[position]}, not 1.")
    return (TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes)),)


def repeat_rule(x: TensorType, repeats: int, axis: int) -> tuple:
    axis = normalize_axis(axis, x.ndim)
    dim = x.shape[axis]
    if is_symbolic(dim) and repeats != 1:
        raise ValueError(f"repeat along symbolic dim {dim!r} is not supported.")
    size = dim if is_symbolic(dim) else dim * repeats
    return (TensorType(x.dtype, x.shape[:axis] + (size,) + x.shape[axis + 1:]),)


def tile_rule(x: TensorType, repeats) -> tuple:
    repeats = tuple(repeats)
    if len(repeats) != x.ndim:
        raise ValueError(f"tile {x}: give one repeat count per axis. Received {repeats}.")
    shape = []
    for dim, count in zip(x.shape, repeats):
        if is_symbolic(dim) and count != 1:
            raise ValueError(f"tile along symbolic dim {dim!r} is not supported.")
        shape.append(dim if is_symbolic(dim) else dim * count)
    return (TensorType(x.dtype, tuple(shape)),)


def transpose_rule(x: TensorType, perm) -> tuple:
    perm = tuple(perm)
    if sorted(perm) != list(range(x.ndim)):
        raise ValueError(f"transpose {x}: perm {perm} is not a permutation of its axes.")
    return (TensorType(x.dtype, tuple(x.shape[i] for i in perm)),)


def reverse_rule(x: TensorType, axis: int) -> tuple:
    normalize_axis(axis, x.ndim)
    return (x,)


def gather_rule(table: TensorType, ids: TensorType, axis: int) -> tuple:
    if not np.issubdtype(np.dtype(ids.dtype), np.integer):
        raise ValueError(f"gather: ids must be integers. Received {ids}.")
    axis = normalize_axis(axis, table.ndim)
    shape = table.shape[:axis] + ids.shape + table.shape[axis + 1:]
    return (TensorType(table.dtype, shape),)


def constant_rule(value, dtype, shape) -> tuple:
    array = np.asarray(value, dtype=normalize_dtype(dtype))
    if array.size != concrete_size(tuple(shape)):
        raise ValueError(f"constant: value has {array.size} elements, shape {shape}.")
    return (TensorType(dtype, tuple(shape)),)


def fill_rule(shape, value, dtype) -> tuple:
    return (TensorType(dtype, tuple(shape)),)


def broadcast_to_rule(x: TensorType, shape) -> tuple:
    from rshop_ir.shapes import broadcast_shapes
    if broadcast_shapes(x.shape, tuple(shape)) != tuple(shape):
        raise ValueError(f"broadcast_to: {x} does not broadcast to {tuple(shape)}.")
    return (TensorType(x.dtype, tuple(shape)),)


register("concatenate", concatenate_rule,
         lambda *values, axis: np.concatenate(values, axis=axis), params={"axis": -1})
register("slice", slice_rule, slice_impl,
         params={"axis": REQUIRED, "start": REQUIRED, "stop": REQUIRED}, num_inputs=1)
register("reshape", reshape_rule, lambda x, shape: np.reshape(x, shape),
         params={"shape": REQUIRED}, num_inputs=1)
register("expand_dims", expand_dims_rule, lambda x, axis: np.expand_dims(x, axis),
         params={"axis": REQUIRED}, num_inputs=1)
register("squeeze", squeeze_rule, lambda x, axis: np.squeeze(x, axis=axis),
         params={"axis": REQUIRED}, num_inputs=1)
register("repeat", repeat_rule, lambda x, repeats, axis: np.repeat(x, repeats, axis=axis),
         params={"repeats": REQUIRED, "axis": REQUIRED}, num_inputs=1)
register("tile", tile_rule, lambda x, repeats: np.tile(x, repeats),
         params={"repeats": REQUIRED}, num_inputs=1)
register("transpose", transpose_rule, lambda x, perm: np.transpose(x, perm),
         params={"perm": REQUIRED}, num_inputs=1)
register("broadcast_to", broadcast_to_rule, lambda x, shape: np.broadcast_to(x, shape).copy(),
         params={"shape": REQUIRED}, num_inputs=1)
register("reverse", reverse_rule, lambda x, axis: np.flip(x, axis=axis).copy(),
         params={"axis": REQUIRED}, num_inputs=1)
register("shift", shift_rule, shift_impl, params={"axis": REQUIRED, "offset": REQUIRED},
         num_inputs=1)
register("gather", gather_rule, lambda table, ids, axis: np.take(table, ids, axis=axis),
         params={"axis": 0}, num_inputs=2)
register("constant", constant_rule,
         lambda value, dtype, shape: np.asarray(value, dtype=dtype).reshape(shape),
         params={"value": REQUIRED, "dtype": REQUIRED, "shape": REQUIRED}, num_inputs=0)
register("fill", fill_rule, lambda shape, value, dtype: np.full(shape, value, dtype=dtype),
         params={"shape": REQUIRED, "value": REQUIRED, "dtype": REQUIRED}, num_inputs=0)
register("zeros_like", lambda x: (x,), np.zeros_like, elementwise=True, num_inputs=1)
register("ones_like", lambda x: (x,), np.ones_like, elementwise=True, num_inputs=1)
