"""How a value lives in a generated CUDA kernel: one element at a time, by address.

Every array a kernel touches is a FLAT 1-D device array (or a shared/local array), so a
value is an address formula. `Stored` is memory: `buffer[offset + row * row_stride +
sum(index_d * stride_d)]`, where `row` is the batch row (the first dim "B"; the local row
`r` for a block's workspace, the global row `(row0 + r)` for per-batch device arrays)
and dims/strides may be expressions of runtime sizes ("T", "steps"). `Mapped` is a view
computed from another value without a copy (slice, reverse, expand_dims, transpose,
repeat, broadcast_to, reshape, ...): its element at `indices` is the base's element at
`index_map(indices)`.

    value.element(["r", "i1"])      # -> "work[40 + r * 24 + i1]"
"""

from __future__ import annotations

LOCAL_ROW = "r"
GLOBAL_ROW = "(row0 + r)"


def product(factors) -> str:
    """The product of ints and expression strings, folded where possible."""
    constant, symbols = 1, []
    for factor in factors:
        if isinstance(factor, int):
            constant *= factor
        else:
            symbols.append(f"({factor})" if not str(factor).isidentifier() else str(factor))
    if constant == 0:
        return "0"
    if not symbols:
        return str(constant)
    text = " * ".join(symbols)
    return text if constant == 1 else f"{constant} * {text}"


def total(terms) -> str:
    """A sum of index terms, dropping zeros."""
    kept = [str(term) for term in terms if str(term) != "0"]
    return " + ".join(kept) if kept else "0"


def contiguous_strides(dims) -> list:
    strides, running = [], 1
    for dim in reversed(list(dims)):
        strides.append(running if isinstance(running, int) else running)
        running = running * dim if isinstance(running, int) and isinstance(dim, int) \
            else product([running, dim])
    return list(reversed(strides))


def dims_text(shape, sizes: dict) -> list:
    """A Var's dims with symbolic names replaced by the kernel's runtime names."""
    return [sizes.get(dim, dim) if isinstance(dim, str) else dim for dim in shape]


class Stored:
    """A value in memory (see the module docstring)."""

    def __init__(self, buffer: str, dims, batched: bool, row: str = LOCAL_ROW,
                 offset="0", strides=None, row_stride=None, read=None):
        self.buffer, self.batched, self.row = buffer, batched, row
        self.read = read                          # a format applied to each element read
        self.dims = list(dims)                    # the dims after B (all dims if unbatched)
        self.strides = list(strides) if strides is not None else contiguous_strides(self.dims)
        self.offset = str(offset)
        self.row_stride = str(row_stride) if row_stride is not None else product(self.dims)

    @property
    def size(self) -> str:
        """Elements per row (all elements when unbatched)."""
        return product(self.dims)

    def address(self, indices) -> str:
        inner = list(indices[1:]) if self.batched else list(indices)
        terms = [self.offset]
        if self.batched:
            terms.append(product([self.row, self.row_stride]) if self.row_stride != "1"
                         else self.row)
        for index, stride in zip(inner, self.strides):
            if str(index) != "0":
                terms.append(index if str(stride) == "1" else f"{index} * {stride}")
        return total(terms)

    def element(self, indices) -> str:
        element = f"{self.buffer}[{self.address(indices)}]"
        return self.read.format(element) if self.read else element


class Mapped:
    """`base` seen through an index map (a view; no copy)."""

    def __init__(self, base, index_map):
        self.base, self.index_map = base, index_map

    def element(self, indices) -> str:
        return self.base.element(self.index_map(list(indices)))


def unflatten(flat: str, dims) -> list:
    """Index expressions of a C-order flat index over `dims` (ints or expressions)."""
    if not dims:
        return []
    strides = contiguous_strides(dims)
    result = []
    for position, (dim, stride) in enumerate(zip(dims, strides)):
        term = flat if str(stride) == "1" else f"({flat}) // ({stride})"
        if position > 0:
            term = f"({term}) % ({dim})"
        result.append(term)
    return result
