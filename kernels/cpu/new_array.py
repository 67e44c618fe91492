"""Allocating the kernels' arrays without compiling NumPy's constructors.

A generated kernel allocates its buffers with `new_array(shape, dtype)` and
`full_array(shape, value)` instead of `np.empty` and `np.full`. Numba implements those
two as overloads, each compiled as a function of its own for every shape type and
dtype it meets (its typing, lowering, LLVM passes and machine code), before the
kernel that calls it: two versions of `np.empty`'s took 0.17 s of an LSTM's first
compile (S1, an empty Numba cache, the 2-core Zen 4 VM; ad-hoc script timing each
compile; BENCHMARKS.md run 28). These intrinsics write the allocation into the kernel's
own code, with the helper Numba's array constructors lower to (`_empty_nd_impl`: a
C-contiguous array from the runtime's allocator, the same memory `np.empty` gives).

`shape` is an integer or a tuple of integers, none negative (the generator's sizes
are counts: batch, steps, units); `dtype` a NumPy scalar type (`np.float32`) or an
array's `.dtype`.
"""

from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic
from numba.core.imputils import impl_ret_new_ref
from numba.np.arrayobj import _empty_nd_impl


def _dimensions(shape):
    """The number of dimensions of a `shape` argument's type, else None."""
    if isinstance(shape, types.Integer):
        return 1
    if isinstance(shape, types.BaseTuple) \
            and all(isinstance(size, types.Integer) for size in shape):
        return len(shape)
    return None


def _allocate(context, builder, array_type, shape_type, shape_value):
    """A new array of `array_type` with the sizes of the lowered `shape_value`."""
    if isinstance(shape_type, types.Integer):
        sizes = [context.cast(builder, shape_value, shape_type, types.intp)]
    else:
        sizes = [context.cast(builder, builder.extract_value(shape_value, index),
                              shape_type[index], types.intp)
                 for index in range(len(shape_type))]
    return _empty_nd_impl(context, builder, array_type, sizes)


@intrinsic
def new_array(typing_context, shape, dtype):
    """`np.empty(shape, dtype)`: a new C-contiguous array, its values undefined."""
    dimensions = _dimensions(shape)
    if isinstance(dtype, types.NumberClass):
        element = dtype.instance_type
    elif isinstance(dtype, types.DType):
        element = dtype.dtype
    else:
        return None
    if dimensions is None:
        return None
    array_type = types.Array(element, dimensions, "C")

    def codegen(context, builder, signature, arguments):
        array = _allocate(context, builder, array_type, signature.args[0], arguments[0])
        return impl_ret_new_ref(context, builder, array_type, array._getvalue())

    return array_type(shape, dtype), codegen


@intrinsic
def full_array(typing_context, shape, value):
    """`np.full(shape, value)`: a new C-contiguous array of `value`'s type, every
    element `value`."""
    dimensions = _dimensions(shape)
    if dimensions is None or not isinstance(value, (types.Float, types.Integer,
                                                    types.Boolean)):
        return None
    array_type = types.Array(value, dimensions, "C")

    def codegen(context, builder, signature, arguments):
        array = _allocate(context, builder, array_type, signature.args[0], arguments[0])
        count = context.get_constant(types.intp, 1)
        for extent in cgutils.unpack_tuple(builder, array.shape):
            count = builder.mul(count, extent)
        # the value as the array stores it (a boolean takes a byte)
        stored = context.data_model_manager[value].as_data(builder, arguments[1])
        with cgutils.for_range(builder, count) as loop:
            builder.store(stored, builder.gep(array.data, [loop.index]))
        return impl_ret_new_ref(context, builder, array_type, array._getvalue())

    return array_type(shape, value), codegen
