"""Shape arithmetic with symbolic dims ("B" batch, "T" time) for the ops' shape rules.

A symbolic dim equals only itself; an int dim of 1 broadcasts against anything (numpy
rules). Products involving a symbolic dim are unknown, so a rule that needs one (e.g.
concatenating along a symbolic axis) raises a ValueError naming the shapes.
"""

from __future__ import annotations

from rshop_ir.ir import Shape


def is_symbolic(dim) -> bool:
    return isinstance(dim, str)


def normalize_axis(axis: int, ndim: int) -> int:
    """Turn a possibly negative axis into 0..ndim-1, or raise a ValueError."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is out of range for a value of rank {ndim}.")
    return axis % ndim


def normalize_axes(axes, ndim: int) -> tuple:
    """`None` means all axes; an int or tuple of ints is normalized and sorted."""
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, int):
        axes = (axes,)
    normalized = tuple(sorted({normalize_axis(axis, ndim) for axis in axes}))
    if len(normalized) != len(tuple(axes)):
        raise ValueError(f"Repeated axis in axes={axes}.")
    return normalized


def broadcast_shapes(*shapes: Shape) -> Shape:
    """numpy broadcasting on shapes that may contain "B"/"T"."""
    ndim = max((len(shape) for shape in shapes), default=0)
    result = []
    for position in range(ndim):
        dim = 1
        for shape in shapes:
            index = position - (ndim - len(shape))
            if index < 0:
                continue
            other = shape[index]
            if other == 1:
                continue
            if dim == 1 or dim == other:
                dim = other
            else:
                shapes_text = ", ".join(str(tuple(s)) for s in shapes)
                raise ValueError(f"Shapes do not broadcast: {shapes_text}.")
        result.append(dim)
    return tuple(result)


def concrete_size(shape: Shape):
    """The number of elements, or None when the shape has a symbolic dim."""
    size = 1
    for dim in shape:
        if is_symbolic(dim):
            return None
        size *= dim
    return size


def resolve_shape(shape: Shape, dims: dict) -> tuple:
    """Replace symbolic dims by their bound sizes (`dims` maps "B" -> 32 ...)."""
    resolved = []
    for dim in shape:
        if is_symbolic(dim):
            if dim not in dims:
                raise ValueError(f"The size of symbolic dim {dim!r} in shape {shape} is not "
                                 f"known here: no input binds it.")
            resolved.append(dims[dim])
        else:
            resolved.append(dim)
    return tuple(resolved)


def bind_shape(declared: Shape, actual: tuple, dims: dict, what: str) -> None:
    """Check an array shape against a declared one, binding symbolic dims in `dims`."""
    if len(declared) != len(actual):
        raise ValueError(f"{what}: expected rank {len(declared)} (shape "
                         f"{_text(declared)}), received an array of shape {tuple(actual)}.")
    for position, (want, have) in enumerate(zip(declared, actual)):
        if is_symbolic(want):
            bound = dims.setdefault(want, have)
            if bound != have:
                raise ValueError(f"{what}: dim {position} is {want!r}={bound} elsewhere, "
                                 f"but this array has shape {tuple(actual)}.")
        elif want != have:
            raise ValueError(f"{what}: expected shape {_text(declared)}, received an array "
                             f"of shape {tuple(actual)}.")


def _text(shape: Shape) -> str:
    return "(" + ", ".join(str(dim) for dim in shape) + ")"
