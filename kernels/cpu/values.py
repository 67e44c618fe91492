"""How a value lives in generated CPU code: element access and whole-array access.

Element-wise loop nests read operands one element at a time (`element(indices)`);
library calls (np.dot, np.concatenate, ...) need whole arrays (`array()`). A slice
along the last axis is a `LastAxisView` (an index offset, no copy), and a step of a
projected sequence is `ChunkRows` (rows of the chunk's time-major projection buffer),
so the gate loops index C-contiguous buffers directly and LLVM can vectorise them.
"""

from __future__ import annotations


class ArrayValue:
    """A numba array variable (or constant expression) holding the whole value."""

    def __init__(self, name: str, ndim: int, contiguous: bool = True):
        self.name, self.ndim, self.contiguous = name, ndim, contiguous

    def element(self, indices) -> str:
        if not indices:
            return f"{self.name}[()]"
        return f"{self.name}[{', '.join(indices)}]"

    def array(self) -> str:
        return self.name


class ChunkRows:
    """Step t of a projected sequence: rows [row, row + B) of a (rows, N) buffer."""

    contiguous = True
    ndim = 2

    def __init__(self, buffer: str, row: str):
        self.buffer, self.row = buffer, row

    def element(self, indices) -> str:
        return f"{self.buffer}[{self.row} + {indices[0]}, {indices[1]}]"

    def array(self) -> str:
        return f"{self.buffer}[{self.row}:{self.row} + B]"


class SequenceStep:
    """Step t of a (B, T, ...) sequence read in place: x[:, t] (`ndim` is the step's rank)."""

    contiguous = False

    def __init__(self, name: str, time: str, ndim: int):
        self.name, self.time, self.ndim = name, time, ndim

    def element(self, indices) -> str:
        return f"{self.name}[{', '.join([indices[0], self.time, *indices[1:]])}]"

    def array(self) -> str:
        return f"{self.name}[:, {self.time}]"


class LastAxisView:
    """`base[..., offset:offset + size]` without a copy."""

    contiguous = False

    def __init__(self, base, offset: int, size: int):
        self.base, self.offset, self.size = base, offset, size
        self.ndim = base.ndim

    def element(self, indices) -> str:
        last = indices[-1] if self.offset == 0 else f"{indices[-1]} + {self.offset}"
        return self.base.element([*indices[:-1], last])

    def array(self) -> str:
        leading = ", ".join([":"] * (self.ndim - 1) + [f"{self.offset}:{self.offset + self.size}"])
        return f"{self.base.array()}[{leading}]"


class MergedSequence:
    """A projected sequence `x_t W (+ weight-like addends)` whose product a recurrent
    product took in (merged_projection.py): an element reads -0.0 plus the addends' elements
    (a bias), so `element + product` is the product plus those addends (LLVM folds the
    -0.0 away: x + (-0.0) is x for every float). Never read as a whole array.

    addends: functions (indices) -> the expression of an addend's element there."""

    contiguous = False
    ndim = 2

    def __init__(self, dtype: str, addends=()):
        self.dtype, self.addends = dtype, list(addends)

    def element(self, indices) -> str:
        expression = f"np.{self.dtype}(-0.0)"
        for addend in self.addends:
            expression = f"({expression} + {addend(indices)})"
        return expression

    def array(self) -> str:
        raise RuntimeError("A merged projection was read as an array: a generator bug.")
