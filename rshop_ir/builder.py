"""`ProgramBuilder`: build a program statement by statement, with shape inference.

Used by the Keras tracer, the passes' tests and anyone writing IR by hand:

    b = ProgramBuilder()
    x = b.input("float32", ("B", 8), name="x")
    kernel = b.param("dense/kernel", "float32", (8, 4))
    y = b.apply("tanh", b.apply("matmul", x, kernel))
    program = b.build([y])

`emit` returns every output of an eqn as a tuple; `apply` returns the single output.
Python numbers among the inputs become `Literal`s with the dtype of the first Var input
(weak typing, as `x * 2.0` in numpy or Keras). Each op's params are completed with the
table's defaults so that printed IR shows them all.
"""

from __future__ import annotations

import numpy as np

from rshop_ir.ir import Eqn, Literal, Program, Var, normalize_dtype
from rshop_ir.ops import get_op


class ProgramBuilder:
    def __init__(self):
        self._inputs = []
        self._input_names = []
        self._input_defaults = []
        self._params = []
        self._eqns = []

    def input(self, dtype, shape, name: "str | None" = None, default=None) -> Var:
        """Declare the next data input (e.g. the sequence, an initial state); with a
        `default` scalar the caller may omit it (it is then filled with that value)."""
        var = Var(dtype, tuple(shape))
        self._inputs.append(var)
        self._input_names.append(name or f"input/{len(self._input_names)}")
        self._input_defaults.append(default)
        return var

    def param(self, name: str, dtype, shape) -> Var:
        """Declare a weight, bound by `name` when the program runs."""
        if name in (existing for existing, _ in self._params):
            raise ValueError(f"A param named {name!r} already exists in this program.")
        var = Var(dtype, tuple(shape))
        self._params.append((name, var))
        return var

    def literal(self, value, dtype) -> Literal:
        return Literal(value, dtype)

    def emit(self, op_name: str, inputs, **params) -> tuple:
        """Append `outputs = op_name(inputs) [params]`; return the new output Vars."""
        op = get_op(op_name)
        atoms = _as_atoms(inputs)
        completed = op.complete_params(params)
        output_types = op.infer([atom.type for atom in atoms], completed)
        outputs = tuple(Var(value_type.dtype, value_type.shape) for value_type in output_types)
        self._eqns.append(Eqn(op_name, atoms, outputs, completed))
        return outputs

    def apply(self, op_name: str, *inputs, **params) -> Var:
        """`emit` for an op with exactly one output; returns that output."""
        outputs = self.emit(op_name, inputs, **params)
        if len(outputs) != 1:
            raise ValueError(f"Op {op_name!r} has {len(outputs)} outputs; use emit().")
        return outputs[0]

    def scan(self, body: Program, sequences=(), states=(), readout=None, constants=(),
             mask=None, **options) -> tuple:
        """Emit a `scan` (see ops/scan.py); returns (y, *final_states)."""
        inputs = list(sequences) + list(states)
        if readout is not None:
            inputs.append(readout)
        inputs += list(constants)
        if mask is not None:
            inputs.append(mask)
        return self.emit("scan", inputs, body=body, num_sequences=len(sequences),
                         num_states=len(states), num_constants=len(constants),
                         readout=readout is not None, masked=mask is not None, **options)

    def build(self, outputs, output_structure=None) -> Program:
        """The program returning `outputs` (flat), nested by `output_structure`
        (rshop_ir/output_structure.py) when given."""
        return Program(inputs=self._inputs, params=self._params, eqns=self._eqns,
                       outputs=_as_atoms(outputs), input_names=self._input_names,
                       input_defaults=self._input_defaults,
                       output_structure=output_structure)


def _as_atoms(values) -> tuple:
    values = list(values)
    typed = [value.dtype for value in values if isinstance(value, (Var, Literal))]
    # a Python number takes the dtype of the first typed operand that is not a bool
    # (`where(mask, x, 0)` with x float32 is float32, as in Keras), else of the first
    like = next((dtype for dtype in typed if dtype != "bool"), typed[0] if typed else None)
    return tuple(_as_atom(value, like) for value in values)


def _as_atom(value, like_dtype):
    if isinstance(value, (Var, Literal)):
        return value
    if isinstance(value, (bool, np.bool_)):
        return Literal(bool(value), "bool")
    if isinstance(value, (int, float, np.number)):
        if like_dtype is None or like_dtype == "bool":
            dtype = "int32" if isinstance(value, (int, np.integer)) else "float32"
        elif isinstance(value, (float, np.floating)) and not np.issubdtype(
                np.dtype(like_dtype), np.inexact):
            dtype = "float32"
        else:
            dtype = like_dtype
        return Literal(value, normalize_dtype(dtype))
    raise TypeError(f"An IR input must be a Var, a Literal or a Python number. "
                    f"Received {value!r} of type {type(value).__name__}.")
