"""The recurrent product of ONE batch row, over a weight packed in column blocks.

With one row, `out = a @ weight` reads every weight element once for 2 FLOPs: the
product is bound by streaming the weight from the cache, and how it is streamed
decides its speed. Packed in blocks of ROW_BLOCK_COLUMNS columns, (blocks,
contraction, ROW_BLOCK_COLUMNS) with the last block zero-padded and the buffer
starting on a cache line, the weight is read as one sequential stream of aligned
vectors; each block keeps its sums in VECTORS x PHASES vector registers while it
walks the contraction (per index: one broadcast value of `a`, two vector loads and
fused multiply-adds).

Measured on one core of the 2-core development machine (ad-hoc script: a Numba loop
of 100 products, each feeding the next; us per product, `np.dot` (OpenBLAS sgemm with
M = 1) / packed): float32 (1,64)x(64,256) 1.03 / 0.57, (1,256)x(256,1024) 15.8 /
8.8; float64 2.40 / 1.30 and 45.8 / 32.1. The same loop with one chain of sums per
register (PHASES = 1, FMA-latency bound) took 0.90 at the small size; on a buffer
off the 64-byte boundary (every other load straddling two cache lines) 0.96 / 15.7;
over the unpacked weight (row stride between indices) 1.14 / 22.2.

`row_product(a, buffer, start, out)` is a Numba intrinsic: it writes the vector loop
into the calling kernel's LLVM code, so no callback or extra compilation is involved
and the kernel stays cacheable. A kernel packs a weight in its preamble (a copy per
call), so it takes this path only for calls of ROW_PACK_MIN_STEPS steps or more; a
team member (team.py) packs its columns once per weight version.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

# Sums of a block: VECTORS registers of LANES[dtype] elements (64-byte vectors; LLVM
# splits them in two on a 32-byte vector machine).
VECTORS = 2
PHASES = 2       # contraction indices in flight: PHASES x VECTORS chains of sums
LANES = {"float32": 16, "float64": 8}
ROW_BLOCK_COLUMNS = {dtype: VECTORS * lanes for dtype, lanes in LANES.items()}
ALIGNMENT = 64   # bytes: a vector load that straddles two cache lines costs two
# One packing copy costs about one product; below this many steps np.dot is kept.
ROW_PACK_MIN_STEPS = 8


def row_buffer_size(contraction: int, columns: int, itemsize: int) -> int:
    """Elements of a flat buffer holding a (contraction, columns) weight packed for
    `row_product`, with room to start it on an ALIGNMENT-byte boundary."""
    block_columns = 2 * ALIGNMENT // itemsize
    blocks = -(-columns // block_columns)
    return blocks * contraction * block_columns + ALIGNMENT // itemsize


def row_buffer_size_source(contraction: str, columns: str, itemsize: int) -> str:
    """`row_buffer_size` as a Python expression over the expressions `contraction`
    and `columns`, for generated code."""
    block_columns = 2 * ALIGNMENT // itemsize
    return (f"(({columns}) + {block_columns - 1}) // {block_columns} * ({contraction}) "
            f"* {block_columns} + {ALIGNMENT // itemsize}")


def aligned_start_source(buffer: str, itemsize: int) -> str:
    """The expression of the index of `buffer`'s first element on an ALIGNMENT-byte
    boundary (the same while the buffer stays where it is)."""
    return (f"(({ALIGNMENT} - {buffer}.ctypes.data % {ALIGNMENT}) % {ALIGNMENT}) "
            f"// {itemsize}")


def packing_source(weight: str, low: str, count: str, buffer: str, start: str,
                   contraction: int, itemsize: int, index_names) -> list:
    """Source lines copying columns low .. low + count of `weight` (contraction, ...)
    into `buffer` from index `start` in the layout `row_product` reads: column blocks
    (blocks, contraction, block columns), the last one zero-padded. `index_names`:
    four unused names for the loop variables."""
    block_columns = 2 * ALIGNMENT // itemsize
    block, k, j, row = index_names
    return [
        f"for {block} in range(({count} + {block_columns - 1}) // {block_columns}):",
        f"    for {k} in range({contraction}):",
        f"        {row} = {start} + ({block} * {contraction} + {k}) * {block_columns}",
        f"        for {j} in range({block_columns}):",
        f"            if {block} * {block_columns} + {j} < {count}:",
        f"                {buffer}[{row} + {j}] = {weight}[{k}, {low} + {block} * "
        f"{block_columns} + {j}]",
        "            else:",
        f"                {buffer}[{row} + {j}] = 0",
    ]


def pack_row_weight(weight: np.ndarray, buffer: np.ndarray) -> int:
    """numpy's version of the generated packing (tests, and to read the layout):
    `weight` (contraction, columns) into the flat `buffer` (`row_buffer_size`
    elements); returns the start index, on an ALIGNMENT-byte boundary."""
    itemsize = buffer.itemsize
    block_columns = 2 * ALIGNMENT // itemsize
    contraction, columns = weight.shape
    start = ((ALIGNMENT - buffer.ctypes.data % ALIGNMENT) % ALIGNMENT) // itemsize
    blocks = -(-columns // block_columns)
    padded = np.zeros((contraction, blocks * block_columns), weight.dtype)
    padded[:, :columns] = weight
    layout = padded.reshape(contraction, blocks, block_columns).transpose(1, 0, 2)
    buffer[start:start + layout.size] = layout.reshape(-1)
    return start


@intrinsic
def row_product(typingctx, a, buffer, start, out):
    """out = a @ weight, where `buffer[start:]` holds the weight as `pack_row_weight`
    lays it out (ROW_BLOCK_COLUMNS[dtype] columns a block), one row after the other
    (each row streams the whole weight: meant for one row, or a few). a (rows,
    contraction), buffer (flat) and out (rows, columns) are C-contiguous arrays of one
    float dtype; the caller guarantees the sizes."""
    arrays = (a, buffer, out)
    if not all(isinstance(array, types.Array) and array.layout == "C" for array in arrays):
        return None
    dtype = str(a.dtype)
    if dtype not in LANES or any(str(array.dtype) != dtype for array in arrays) \
            or (a.ndim, buffer.ndim, out.ndim) != (2, 1, 2) \
            or not isinstance(start, types.Integer):
        return None
    lanes = LANES[dtype]
    block_columns = ROW_BLOCK_COLUMNS[dtype]

    def codegen(context, builder, signature, arguments):
        a_value, buffer_value, start_value, out_value = arguments
        a_struct, buffer_struct, out_struct = (
            context.make_array(kind)(context, builder, value) for kind, value in
            zip((a, buffer, out), (a_value, buffer_value, out_value)))
        element = context.get_data_type(a.dtype)
        vector = ir.VectorType(element, lanes)
        integer = ir.IntType(64)
        start_index = context.cast(builder, start_value, start, types.int64)
        packed_data = builder.gep(buffer_struct.data, [start_index])
        contraction = builder.extract_value(a_struct.shape, 1)
        columns = builder.extract_value(out_struct.shape, 1)
        blocks = builder.sdiv(builder.add(columns, ir.Constant(integer, block_columns - 1)),
                              ir.Constant(integer, block_columns))
        sums = [[cgutils.alloca_once(builder, vector) for _ in range(VECTORS)]
                for _ in range(PHASES)]
        tail = cgutils.alloca_once(builder, element, size=block_columns)
        splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        zero = ir.Constant(vector, [0.0] * lanes)
        width = ir.Constant(integer, block_columns)

        def vector_at(pointer, index):
            address = builder.gep(pointer, [index])
            return builder.bitcast(address, vector.as_pointer())

        def accumulate(a_row, block_start, k, phase_sums):
            """phase_sums[v] += a_row[k] * packed[block, k, v * lanes:(v + 1) * lanes]"""
            value = builder.load(builder.gep(a_row, [k]))
            broadcast = builder.shuffle_vector(
                builder.insert_element(ir.Constant(vector, None), value,
                                       ir.Constant(ir.IntType(32), 0)),
                ir.Constant(vector, None), splat_mask)
            row = builder.add(block_start, builder.mul(k, width))
            for v, total in enumerate(phase_sums):
                offset = builder.add(row, ir.Constant(integer, v * lanes))
                weights = builder.load(vector_at(packed_data, offset), align=ALIGNMENT)
                product = builder.fmul(broadcast, weights, flags=("contract",))
                builder.store(builder.fadd(builder.load(total), product,
                                           flags=("contract",)), total)

        phases = ir.Constant(integer, PHASES)
        rounds = builder.sdiv(contraction, phases)

        def block_sums(a_row, block):
            """The block's sums, in sums[0]. PHASES independent chains of sums hide
            the add latency; the indices past the last whole round go to the first."""
            for phase_sums in sums:
                for total in phase_sums:
                    builder.store(zero, total)
            block_start = builder.mul(builder.mul(block, contraction), width)
            with cgutils.for_range(builder, rounds) as round_loop:
                first = builder.mul(round_loop.index, phases)
                for phase, phase_sums in enumerate(sums):
                    k = builder.add(first, ir.Constant(integer, phase))
                    accumulate(a_row, block_start, k, phase_sums)
            done = builder.mul(rounds, phases)
            with cgutils.for_range(builder, builder.sub(contraction, done)) as rest_loop:
                accumulate(a_row, block_start, builder.add(done, rest_loop.index), sums[0])
            for v, total in enumerate(sums[0]):
                combined = builder.load(total)
                for phase_sums in sums[1:]:
                    combined = builder.fadd(combined, builder.load(phase_sums[v]))
                builder.store(combined, total)

        def store_block(out_row, block):
            """out_row[block's columns] = sums[0], clipped to the row's columns."""
            first_column = builder.mul(block, width)
            remaining = builder.sub(columns, first_column)
            is_full = builder.icmp_signed(">=", remaining, width)
            with builder.if_else(is_full) as (full, partial):
                with full:
                    for v, total in enumerate(sums[0]):
                        offset = builder.add(first_column, ir.Constant(integer, v * lanes))
                        builder.store(builder.load(total), vector_at(out_row, offset),
                                      align=1)
                with partial:    # the last block overhangs: only its real columns
                    for v, total in enumerate(sums[0]):
                        builder.store(builder.load(total),
                                      vector_at(tail, ir.Constant(integer, v * lanes)),
                                      align=1)
                    with cgutils.for_range(builder, remaining) as column_loop:
                        j = column_loop.index
                        builder.store(builder.load(builder.gep(tail, [j])),
                                      builder.gep(out_row, [builder.add(first_column, j)]))

        rows = builder.extract_value(a_struct.shape, 0)
        with cgutils.for_range(builder, rows) as row_loop:
            a_row = builder.gep(a_struct.data, [builder.mul(row_loop.index, contraction)])
            out_row = builder.gep(out_struct.data, [builder.mul(row_loop.index, columns)])
            with cgutils.for_range(builder, blocks) as block_loop:
                block_sums(a_row, block_loop.index)
                store_block(out_row, block_loop.index)
        return context.get_dummy_value()

    return types.void(a, buffer, start, out), codegen
