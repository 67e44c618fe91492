"""One block's share of a dot product, summed in an order fixed by the block alone.

A matmul by a one-column weight (the score of additive attention: `tanh(keys + query)
@ v`) reduces along the columns a team splits (team_columns.py). For the team's scores
to be one thread's bit for bit, the sum must not depend on who computes which columns.
So the row is cut into blocks of BLOCK_COLUMNS columns (the team's unit of columns):
`block_dot` gives one block's partial sum, always in the same order, and the kernel
adds the blocks' partials in block order. A member computes the partials of its own
blocks and exchanges them (a few numbers a row, not the row); one thread computes them
all. Either way every score is the same sequence of the same operations.

Inside a block (2 vectors of LANES[dtype] elements, packed_product.py's block): the
lane-wise products of the two vectors are added, then the lanes are halved and added
(8 + 8, 4 + 4, 2 + 2, 1 + 1 for float32). The operations carry no fast-math flags, so
LLVM keeps that order wherever the intrinsic is written; `reductions.row_dot` lets
LLVM choose its order, which may differ between two kernels.

`block_dot(rows, row, vector, block)` is a Numba intrinsic (written into the calling
kernel's LLVM code): rows (R, K) and vector (K,) are C-contiguous arrays of one float
dtype, K a multiple of BLOCK_COLUMNS[dtype] and `block` < K / BLOCK_COLUMNS (the caller
guarantees the sizes).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic

from rshop_ir.kernels.cpu.packed_product import BLOCK_COLUMNS, LANES, VECTORS


@intrinsic
def block_dot(typingctx, rows, row, vector, block):
    """sum(rows[row, block * W:(block + 1) * W] * vector[block * W:(block + 1) * W]) in
    the module docstring's order, W = BLOCK_COLUMNS[dtype]."""
    if not (isinstance(rows, types.Array) and isinstance(vector, types.Array)
            and rows.layout == "C" and vector.layout == "C"
            and rows.ndim == 2 and vector.ndim == 1 and rows.dtype == vector.dtype
            and str(rows.dtype) in LANES
            and isinstance(row, types.Integer) and isinstance(block, types.Integer)):
        return None
    dtype = str(rows.dtype)
    lanes, width = LANES[dtype], BLOCK_COLUMNS[dtype]

    def codegen(context, builder, signature, arguments):
        rows_value, row_value, vector_value, block_value = arguments
        rows_struct = context.make_array(rows)(context, builder, rows_value)
        vector_struct = context.make_array(vector)(context, builder, vector_value)
        element = context.get_data_type(rows.dtype)
        vector_type = ir.VectorType(element, lanes)
        int64 = ir.IntType(64)
        row_index = context.cast(builder, row_value, row, types.int64)
        first = builder.mul(context.cast(builder, block_value, block, types.int64),
                            ir.Constant(int64, width))
        columns = builder.extract_value(rows_struct.shape, 1)
        row_start = builder.add(builder.mul(row_index, columns), first)

        def load(data, start, part):
            pointer = builder.gep(data, [builder.add(start, ir.Constant(int64, part * lanes))])
            return builder.load(builder.bitcast(pointer, vector_type.as_pointer()), align=1)

        total = None
        for part in range(VECTORS):
            product = builder.fmul(load(rows_struct.data, row_start, part),
                                   load(vector_struct.data, first, part))
            total = product if total is None else builder.fadd(total, product)
        half = lanes
        while half > 1:
            half //= 2
            low = builder.shuffle_vector(total, total, ir.Constant(
                ir.VectorType(ir.IntType(32), half), list(range(half))))
            high = builder.shuffle_vector(total, total, ir.Constant(
                ir.VectorType(ir.IntType(32), half), list(range(half, 2 * half))))
            total = builder.fadd(low, high)
        return builder.extract_element(total, ir.Constant(ir.IntType(32), 0))

    return rows.dtype(rows, row, vector, block), codegen
