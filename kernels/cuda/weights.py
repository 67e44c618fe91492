"""The packed weight buffer: every weight a CUDA program reads, in ONE flat device array.

Kernels take one `weights` argument; each weight's offset is a constant of the
generated source (weights are never baked in: only where they sit). A slot is a
program param, an output of the weight prologue, or the value of a `constant` eqn.
A bool constant (a causal attention mask) is kept as 0 and 1 in the float buffer and
read back as `weights[i] != 0` (`stored_weight`): exact, and no second buffer.
`pack(params, prologue)` lays the current values out on the host (the runtime uploads
the result once per weight version).

    layout = WeightLayout("float32")
    offset = layout.add(("param", "lstm/kernel"), (5, 24))
    flat = layout.pack({"lstm/kernel": kernel}, prologue_outputs=())
"""

from __future__ import annotations

import numpy as np

from rshop_ir.errors import UnsupportedError
from rshop_ir.kernels.cuda.values import Stored

ALIGNMENT = 32          # elements: every slot starts on a 128-byte boundary (float32)


class WeightLayout:
    def __init__(self, dtype: str):
        self.dtype = dtype
        self.slots = []          # (key, offset, shape)
        self._offsets = {}
        self.constants = {}      # key -> array, for ("constant", n) slots
        self.size = 0

    def add(self, key, shape, dtype: str = None, value=None) -> int:
        """The offset of the slot `key` (added on first use)."""
        if key in self._offsets:
            return self._offsets[key]
        if dtype is not None and dtype != self.dtype \
                and not (dtype == "bool" and key[0] == "constant"):
            what = (f"a {dtype} constant of shape {tuple(shape)}" if key[0] == "constant"
                    else f"{key[0]} {key[1]!r} is {dtype}")
            raise UnsupportedError(f"The CUDA generator packs {self.dtype} weights; "
                                   f"{what}.")
        if any(not isinstance(dim, int) for dim in shape):
            raise UnsupportedError(f"A weight of symbolic shape {shape}.")
        offset = self.size
        self._offsets[key] = offset
        self.slots.append((key, offset, tuple(shape)))
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        self.size = offset + max(1, -(-count // ALIGNMENT)) * ALIGNMENT
        if value is not None:
            self.constants[key] = np.asarray(value, dtype=self.dtype).reshape(shape)
        return offset

    def pack(self, params: dict, prologue_outputs) -> np.ndarray:
        """The flat host buffer for the current weights (name -> array, prologue list)."""
        flat = np.zeros(max(self.size, 1), dtype=self.dtype)
        for key, offset, shape in self.slots:
            kind, name = key
            if kind == "param":
                value = params[name]
            elif kind == "prologue":
                value = prologue_outputs[name]
            else:
                value = self.constants[key]
            value = np.asarray(value)
            if value.dtype != np.dtype(self.dtype):
                raise TypeError(f"Weight {name!r} is {value.dtype}; the kernel was built for "
                                f"{self.dtype}.")
            flat[offset:offset + value.size] = value.reshape(-1)
        return flat


def stored_weight(buffer: str, shape, dtype: str, offset) -> Stored:
    """The in-kernel value of a packed slot of `shape` at `offset` of `buffer` (the
    weights argument, or the shared-memory copy of a slot), its elements compared
    with 0 when the slot holds a bool constant."""
    return Stored(buffer, list(shape), False, offset=offset,
                  read="({} != 0)" if dtype == "bool" else None)
