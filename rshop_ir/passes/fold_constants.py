"""Constant folding: evaluate, at compile time, eqns whose inputs are all constants.

Constants are Literals and the outputs of `constant` eqns (and of `fill` eqns with a
fixed shape). The folded value is computed with the op table's own `impl`, so folding
agrees with the interpreter by construction. A scalar result becomes a Literal; a small
array (<= MAX_FOLDED_ELEMENTS) a `constant` eqn; larger results are left unfolded so the
IR stays small. Weight-only subexpressions are the job of precompute_weights.py.

Before:                                   After:
    c:f32[] = mul 2.0:f32 3.0:f32             d:f32[B,4] = mul a 6.0:f32
    d:f32[B,4] = mul a c                    in (d)
  in (d)
"""

from __future__ import annotations

import numpy as np

from rshop_ir.ir import Eqn, Literal, Program, Var
from rshop_ir.ops import get_op
from rshop_ir.passes.rewrite import Substitution, map_bodies
from rshop_ir.shapes import concrete_size

MAX_FOLDED_ELEMENTS = 64
SOURCES = ("constant", "fill")


def fold_constants(program: Program) -> Program:
    program = map_bodies(program, fold_constants)
    substitution = Substitution()
    values = {}
    eqns = []
    for eqn in program.eqns:
        eqn = substitution.eqn(eqn)
        foldable = (not eqn.nested_programs() and eqn.op not in SOURCES and
                    all(isinstance(a, Literal) or a in values for a in eqn.inputs) and
                    all(concrete_size(var.shape) is not None for var in eqn.outputs))
        if foldable:
            arrays = [_value(atom, values) for atom in eqn.inputs]
            with np.errstate(all="ignore"):
                results = get_op(eqn.op).impl(*arrays, **dict(eqn.params))
            results = results if isinstance(results, tuple) else (results,)
            folded = [np.asarray(r, dtype=v.dtype) for r, v in zip(results, eqn.outputs)]
            if all(array.size <= MAX_FOLDED_ELEMENTS for array in folded):
                for var, array in zip(eqn.outputs, folded):
                    if array.shape == ():
                        substitution[var] = Literal(array.item(), var.dtype)
                    else:
                        values[var] = array
                        eqns.append(_constant_eqn(var, array))
                continue
        if eqn.op in SOURCES and concrete_size(eqn.outputs[0].shape) is not None:
            source = get_op(eqn.op).impl(**dict(eqn.params))
            values[eqn.outputs[0]] = np.asarray(source, dtype=eqn.outputs[0].dtype)
        eqns.append(eqn)
    if not substitution and len(eqns) == len(program.eqns) and all(
            new is old for new, old in zip(eqns, program.eqns)):
        return program
    return program.replace(eqns=eqns, outputs=substitution.outputs(program))


def _value(atom, values: dict) -> np.ndarray:
    if isinstance(atom, Literal):
        return np.asarray(atom.value, dtype=atom.dtype)
    return values[atom]


def _constant_eqn(var: Var, array: np.ndarray) -> Eqn:
    params = {"value": tuple(array.reshape(-1).tolist()), "dtype": var.dtype,
              "shape": var.shape}
    return Eqn("constant", (), (var,), params)
