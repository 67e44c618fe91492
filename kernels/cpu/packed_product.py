"""The recurrent matmul over a weight packed in column blocks: register tiles.

`out = a @ weight` for a few rows reads the weight from the cache once per step, and
for many rows is bound by the vector units: OpenBLAS's sgemm (`np.dot`) repacks the
weight on every call and its paths for a few dozen rows stay far from the core's
FMA rate. Here a weight is packed into blocks of BLOCK_COLUMNS columns, (blocks,
contraction, BLOCK_COLUMNS), the last block zero-padded, the buffer starting on a cache
line: by the runtime once per weight version (`pack_weight`, for a weight the kernel
takes as an argument), or by the kernel at every call (`packing_source`, for a value
computed before the scan). Every product then walks the blocks; in each, the rows go
in tiles of TILE_SHAPES' row counts (8, then 4, 2 and 1 with AVX-512; 6, 4, 2 and 1
with AVX2 only), the block's slice of the weight staying in cache between them. A
block is VECTORS vectors of the host's width wide: 32 float32 columns with AVX-512, 16
with AVX2. A tile
keeps its sums in rows x VECTORS (x phases) vector registers while it walks the
contraction: per index, VECTORS aligned vector loads of the weight, one broadcast
value of `a` per row and rows x VECTORS fused multiply-adds. One row (a matrix-vector
product, bound by streaming the weight) reads the weight as one sequential stream.

Measured on one core of the 2-core Zen 4 VM (AVX-512; `python -m bench.tiles
--repeats 3`, GFLOP/s, np.dot / packed; float32): (1,64)x(64,256) 21 / 31,
(1,256)x(256,1024) 28 / 52, 2 rows 42-95 / 104, 4 rows 17 / 141, 8 rows 30 / 167,
(32,256)x(256,1024) 69 / 165, (128,512)x(512,2048) 104 / 146, (33,100)x(100,300)
138 / 139; float64 1.0-2.8x np.dot. Tried: without the 4-row tile, 4 rows took 82;
without the 2-row one, 2 rows 68; one chain of sums per register for one row
(FMA-latency bound) 40% slower; a buffer off the 64-byte boundary (every other load
straddling two cache lines) and the unpacked weight (row stride between indices)
slower than np.dot; the register tiles this replaces (4x16 scalars vectorised by
LLVM's SLP pass, a separately compiled callback) reached 74 at 4-32 rows.

`packed_product(a, buffer, start, out)` is a Numba intrinsic: it writes the loops into
the calling kernel's LLVM code, so no callback or extra compilation is involved and
the kernel stays cacheable. The kernel's packing is generated source
(`packing_source`); `pack_row_weight` is its numpy twin.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

# Sums of a block: VECTORS registers of LANES[dtype] elements: the host's vector
# width, 64 bytes with AVX-512, 32 with AVX2 only (VECTOR_BYTES).
VECTORS = 2


def _host_has_avx512() -> bool:
    """Whether LLVM compiles for a CPU with AVX-512 (True when it cannot tell)."""
    try:
        from llvmlite import binding

        return bool(binding.get_host_cpu_features().get("avx512f", False))
    except Exception:  # noqa: BLE001 - an llvmlite without the query: the old default
        return True


VECTOR_BYTES = 64 if _host_has_avx512() else 32
LANES = {"float32": VECTOR_BYTES // 4, "float64": VECTOR_BYTES // 8}


def block_columns_of(itemsize: int) -> int:
    """Columns in one block of the packed layout for elements of `itemsize` bytes
    (BLOCK_COLUMNS by dtype name)."""
    return VECTORS * VECTOR_BYTES // itemsize


BLOCK_COLUMNS = {dtype: block_columns_of(np.dtype(dtype).itemsize) for dtype in LANES}

# (rows, phases) of the tiles, biggest first: a tile of r rows keeps r x VECTORS x
# phases vector registers of sums; 1 and 2 rows need more phases (chains of sums) to
# hide the add latency (the one-row tile 4 on AVX2, below), bigger tiles have chains
# enough. AVX-512's 32 registers take 8 rows (16 sums). AVX2's 16 take 6 rows: 12
# sums, 2 weight vectors and one broadcast value (the usual 6 x 16 float32 tile).
# Measured on a 2-core Zen 3 VM (AVX2 only; `python -m bench.tiles --repeats 3`, one
# thread, float32 GFLOP/s):
# with 64-byte vectors (LLVM splits each in two) and 32-column blocks, tiles of 3 or
# more rows spilled (28-45) and the 2-row tile reached 58.8-76.9 (BENCHMARKS run 32);
# the 32-byte vectors, 16-column blocks and 6-row tiles used now: BENCHMARKS run 33.
# A one-row tile is a matrix-vector product streaming its weight: with AVX2's two FMA
# pipes of ~5 cycles' latency, 4 phases (8 chains of sums) keep it ahead of the
# cache where 2 phases (4 chains) left it waiting on its adds. On a 2-core Zen 2 VM
# (BENCHMARKS run 34, batch-1 calls, fresh processes alternated): MGU, RWA and the
# attention decoders at S2 3-9% faster, the LSTM at S1 5%; 6 phases gained no more.
AVX512_TILE_SHAPES = ((8, 1), (4, 1), (2, 2), (1, 2))
AVX2_TILE_SHAPES = ((6, 1), (4, 1), (2, 2), (1, 4))
TILE_SHAPES = AVX512_TILE_SHAPES if VECTOR_BYTES == 64 else AVX2_TILE_SHAPES
ALIGNMENT = 64   # bytes: a vector load that straddles two cache lines costs two
# A kernel packing a value at every call: worth it from this many rows x steps.
PACK_MIN_ROW_STEPS = 8


def row_buffer_size(contraction: int, columns: int, itemsize: int) -> int:
    """Elements of a flat buffer holding a (contraction, columns) weight packed for
    `packed_product`, with room to start it on an ALIGNMENT-byte boundary."""
    block_columns = block_columns_of(itemsize)
    blocks = -(-columns // block_columns)
    return blocks * contraction * block_columns + ALIGNMENT // itemsize


def aligned_start_source(buffer: str, itemsize: int) -> str:
    """The expression of the index of `buffer`'s first element on an ALIGNMENT-byte
    boundary (the same while the buffer stays where it is)."""
    return (f"(({ALIGNMENT} - {buffer}.ctypes.data % {ALIGNMENT}) % {ALIGNMENT}) "
            f"// {itemsize}")


def packing_source(weight: str, low: str, count: str, buffer: str, start: str,
                   contraction: int, itemsize: int, index_names) -> list:
    """Source lines copying columns low .. low + count of `weight` (contraction, ...)
    into `buffer` from index `start` in the layout `packed_product` reads: column blocks
    (blocks, contraction, block columns), the last one zero-padded. `index_names`:
    four unused names for the loop variables."""
    block_columns = block_columns_of(itemsize)
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
    block_columns = block_columns_of(itemsize)
    contraction, columns = weight.shape
    start = ((ALIGNMENT - buffer.ctypes.data % ALIGNMENT) % ALIGNMENT) // itemsize
    blocks = -(-columns // block_columns)
    padded = np.zeros((contraction, blocks * block_columns), weight.dtype)
    padded[:, :columns] = weight
    layout = padded.reshape(contraction, blocks, block_columns).transpose(1, 0, 2)
    buffer[start:start + layout.size] = layout.reshape(-1)
    return start


def pack_weight(weight: np.ndarray) -> np.ndarray:
    """A new flat buffer holding the 2-D `weight` packed for `packed_product`, from
    its first element on an ALIGNMENT-byte boundary (the kernel finds that index
    again with `aligned_start_source`: pass this very array, never a copy)."""
    contraction, columns = weight.shape
    buffer = np.empty(row_buffer_size(contraction, columns, weight.itemsize), weight.dtype)
    pack_row_weight(weight, buffer)
    return buffer


def _typed_operands(arrays, dimensions) -> str:
    """The dtype shared by `arrays` (C-contiguous arrays of these numbers of
    dimensions, of a dtype the product has tiles for), else None."""
    if not all(isinstance(array, types.Array) and array.layout == "C" for array in arrays):
        return None
    dtype = str(arrays[0].dtype)
    if dtype not in LANES or any(str(array.dtype) != dtype for array in arrays) \
            or tuple(array.ndim for array in arrays) != dimensions:
        return None
    return dtype


def _segments(context, builder, signature, arguments) -> list:
    """(a struct, packed weight pointer) of each (a, buffer, start) triple of a call."""
    segments = []
    for index in range(0, len(arguments) - 1, 3):
        a_type, buffer_type, start_type = signature.args[index:index + 3]
        a_value, buffer_value, start_value = arguments[index:index + 3]
        buffer_struct = context.make_array(buffer_type)(context, builder, buffer_value)
        segments.append((context.make_array(a_type)(context, builder, a_value),
                         builder.gep(buffer_struct.data, [context.cast(
                             builder, start_value, start_type, types.int64)])))
    return segments


def _product_codegen(dtype):
    def codegen(context, builder, signature, arguments):
        out_struct = context.make_array(signature.args[-1])(context, builder, arguments[-1])
        _ProductWriter(context, builder, dtype, _segments(context, builder, signature,
                                                          arguments), out_struct).write()
        return context.get_dummy_value()
    return codegen


@intrinsic
def packed_product(typingctx, a, buffer, start, out):
    """out = a @ weight, where `buffer[start:]` holds the weight as `pack_row_weight`
    lays it out (BLOCK_COLUMNS[dtype] columns a block). a (rows, contraction), buffer
    (flat) and out (rows, columns) are C-contiguous arrays of one float dtype; the
    caller guarantees the sizes."""
    dtype = _typed_operands((a, buffer, out), (2, 1, 2))
    if dtype is None or not isinstance(start, types.Integer):
        return None
    return types.void(a, buffer, start, out), _product_codegen(dtype)


@intrinsic
def packed_pair_product(typingctx, a, buffer, start, a_2, buffer_2, start_2, out):
    """out = a @ weight + a_2 @ weight_2, both weights packed as for `packed_product`
    (`buffer[start:]`, `buffer_2[start_2:]`), as ONE product over the two contractions:
    each register tile sums a's and then a_2's terms before it is stored once. An RNN
    step `x_t @ W + h @ U` over many rows computed this way never writes x_t @ W out
    and reads it back (kernels/cpu/merged_projection.py). The rows of a and a_2 and
    the columns of both weights are equal; the caller guarantees the sizes."""
    dtype = _typed_operands((a, buffer, a_2, buffer_2, out), (2, 1, 2, 1, 2))
    if dtype is None or not all(isinstance(s, types.Integer) for s in (start, start_2)):
        return None
    return (types.void(a, buffer, start, a_2, buffer_2, start_2, out),
            _product_codegen(dtype))


class _ProductWriter:
    """Writes the LLVM code of one `packed_product` or `packed_pair_product` call (see
    the module docstring): each register tile sums every segment's terms before its
    one store."""

    def __init__(self, context, builder, dtype, segments, out_struct):
        """`segments`: (a struct, pointer to its packed weight) of each term."""
        self.builder = builder
        self.lanes = LANES[dtype]
        self.element = context.get_data_type(getattr(types, dtype))
        self.vector = ir.VectorType(self.element, self.lanes)
        # (a's data, its contraction, the packed weight) of each term of the sum
        self.segments = [(a_struct.data, builder.extract_value(a_struct.shape, 1), packed)
                         for a_struct, packed in segments]
        self.out_data = out_struct.data
        self.rows = builder.extract_value(segments[0][0].shape, 0)
        self.columns = builder.extract_value(out_struct.shape, 1)
        self.width = self.constant(BLOCK_COLUMNS[dtype])
        self.tail = cgutils.alloca_once(builder, self.element, size=BLOCK_COLUMNS[dtype])
        # The sums of every tile shape, allocated once (LLVM keeps them in registers).
        self.sums = {shape: [[[cgutils.alloca_once(builder, self.vector)
                               for _ in range(VECTORS)] for _ in range(shape[0])]
                             for _ in range(shape[1])]
                     for shape in TILE_SHAPES}

    @staticmethod
    def constant(value):
        return ir.Constant(ir.IntType(64), value)

    def vector_at(self, pointer, index):
        return self.builder.bitcast(self.builder.gep(pointer, [index]),
                                    self.vector.as_pointer())

    def write(self) -> None:
        """For each column block: the rows in tiles of TILE_SHAPES' row counts, the
        biggest first (the block's slice of the weight stays in cache between them)."""
        builder = self.builder
        blocks = builder.sdiv(builder.add(self.columns, self.constant(
            int(self.width.constant) - 1)), self.width)
        with cgutils.for_range(builder, blocks) as block_loop:
            done = self.constant(0)
            for shape in TILE_SHAPES:
                tile_rows = self.constant(shape[0])
                count = builder.sdiv(builder.sub(self.rows, done), tile_rows)
                with cgutils.for_range(builder, count) as tile_loop:
                    first = builder.add(done, builder.mul(tile_loop.index, tile_rows))
                    self.tile(block_loop.index, first, shape)
                done = builder.add(done, builder.mul(count, tile_rows))

    def tile(self, block, first_row, shape) -> None:
        """out[first_row:first_row + rows, the block's columns] = the product, with
        `phases` chains of sums per register (the indices past the last whole round
        of phases go to the first chain)."""
        builder, constant = self.builder, self.constant
        tile_rows, phases = shape
        sums = self.sums[shape]
        for phase_sums in sums:
            for row_sums in phase_sums:
                for total in row_sums:
                    builder.store(ir.Constant(self.vector, [0.0] * self.lanes), total)
        for a_data, contraction, packed in self.segments:
            a_rows = [builder.gep(a_data, [builder.mul(builder.add(first_row, constant(r)),
                                                       contraction)])
                      for r in range(tile_rows)]
            block_start = builder.gep(packed, [builder.mul(builder.mul(block, contraction),
                                                           self.width)])
            rounds = builder.sdiv(contraction, constant(phases))
            with cgutils.for_range(builder, rounds) as round_loop:
                first = builder.mul(round_loop.index, constant(phases))
                for phase in range(phases):
                    self.accumulate(a_rows, block_start, builder.add(first, constant(phase)),
                                    sums[phase])
            done = builder.mul(rounds, constant(phases))
            with cgutils.for_range(builder, builder.sub(contraction, done)) as rest_loop:
                self.accumulate(a_rows, block_start, builder.add(done, rest_loop.index),
                                sums[0])
        for r in range(tile_rows):
            totals = []
            for v in range(VECTORS):
                total = builder.load(sums[0][r][v])
                for phase_sums in sums[1:]:
                    total = builder.fadd(total, builder.load(phase_sums[r][v]))
                totals.append(total)
            out_row = builder.gep(self.out_data, [builder.mul(
                builder.add(first_row, constant(r)), self.columns)])
            self.store(out_row, block, totals)

    def accumulate(self, a_rows, block_start, k, sums) -> None:
        """sums[r][v] += a_rows[r][k] * packed[block, k, v * lanes:(v + 1) * lanes]
        (`block_start`: the pointer to the block in the packed weight)."""
        builder, lanes = self.builder, self.lanes
        row = builder.mul(k, self.width)
        weights = [builder.load(self.vector_at(block_start, builder.add(
            row, self.constant(v * lanes))), align=VECTOR_BYTES) for v in range(VECTORS)]
        undefined = ir.Constant(self.vector, None)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        for a_row, row_sums in zip(a_rows, sums):
            value = builder.load(builder.gep(a_row, [k]))
            broadcast = builder.shuffle_vector(builder.insert_element(
                undefined, value, ir.Constant(ir.IntType(32), 0)), undefined, splat)
            for weight, total in zip(weights, row_sums):
                product = builder.fmul(broadcast, weight, flags=("contract",))
                builder.store(builder.fadd(builder.load(total), product,
                                           flags=("contract",)), total)

    def store(self, out_row, block, totals) -> None:
        """out_row[the block's columns] = totals, clipped to the row's columns."""
        builder, constant = self.builder, self.constant
        first_column = builder.mul(block, self.width)
        remaining = builder.sub(self.columns, first_column)
        with builder.if_else(builder.icmp_signed(">=", remaining, self.width)) as (
                full, partial):
            with full:
                for v, total in enumerate(totals):
                    builder.store(total, self.vector_at(out_row, builder.add(
                        first_column, constant(v * self.lanes))), align=1)
            with partial:    # the last block overhangs: only its real columns
                for v, total in enumerate(totals):
                    builder.store(total, self.vector_at(self.tail, constant(v * self.lanes)),
                                  align=1)
                with cgutils.for_range(builder, remaining) as column_loop:
                    j = column_loop.index
                    builder.store(builder.load(builder.gep(self.tail, [j])),
                                  builder.gep(out_row, [builder.add(first_column, j)]))
