"""`BoundProgram`: a program together with the weights it runs with.

A `Program` never holds weight values; a `BoundProgram` pairs one with a dict
name -> array (checked against the params on creation). It is what `load` returns and
what `save` writes, and it is callable like a compiled kernel:

    bound = BoundProgram(program, {"dense/kernel": kernel})
    y = bound(x)                     # == interpret(program, x, weights=bound.weights)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rshop_ir.ir import Program


@dataclass(frozen=True, eq=False)
class BoundProgram:
    program: Program
    weights: dict

    def __post_init__(self):
        from rshop_ir.interpret import bind_weights

        if not isinstance(self.program, Program):
            raise TypeError(f"BoundProgram wraps a Program. Received "
                            f"{type(self.program).__name__}.")
        checked = bind_weights(self.program, self.weights)
        arrays = {name: checked[var] for name, var in self.program.params}
        object.__setattr__(self, "weights", arrays)

    def __call__(self, *inputs, **named_inputs):
        from rshop_ir.interpret import interpret
        return interpret(self, *inputs, **named_inputs)

    def __str__(self) -> str:
        return str(self.program)

    @property
    def ir(self) -> str:
        return str(self.program)

    def with_program(self, program: Program) -> "BoundProgram":
        """The same weights bound to another program with the same params (e.g. the
        optimised one)."""
        return BoundProgram(program, self.weights)

    def get_weights(self) -> dict:
        return {name: np.array(value) for name, value in self.weights.items()}
