"""Algebraic simplification: a `(pattern, rewrite)` table driven to a fixpoint.

Each rewrite gets the match (see patterns.py) and the eqn, and returns an atom that
replaces the eqn's output, a new eqn with the same outputs, or None (no change). A
replacement atom must have exactly the output's type (so `int + 0.0` is left alone).
`x * 0` is NOT folded: it is NaN for x = NaN or inf. Dead producers are left for DCE.
Besides the table, an element-wise op reads the input of a `repeat` along a size-1 axis
instead of the repeated copy when broadcasting gives the same result shape (an
attention step adds its query, repeated over the memory positions, to the keys).

Before:                                   After:
    c:f32[B,4] = sub a 0.0:f32                e:f32[4,B] = transpose a [perm=(1, 0)]
    d:f32[B,4] = linear c                   in (e)
    e:f32[4,B] = transpose d [perm=(1, 0)]    (plus dead eqns until DCE)
  in (e)
"""

from __future__ import annotations

import math

from rshop_ir.ir import Eqn, Literal, Program, Var
from rshop_ir.ops import get_op
from rshop_ir.passes.patterns import Any, Lit, Op
from rshop_ir.shapes import normalize_axis
from rshop_ir.passes.rewrite import Substitution, map_bodies

MAX_ROUNDS = 50


def _identity(match, eqn):
    return match["x"]


def _plus_zero(match, eqn):
    """x + 0 is x, except for a float x and the zero +0.0: -0.0 + 0.0 is +0.0 (a sign
    that 1 / x shows); x + (-0.0) is x for every x."""
    zero = next(atom for atom in eqn.inputs if isinstance(atom, Literal))
    if match["x"].dtype in ("float16", "float32", "float64") \
            and math.copysign(1.0, float(zero.value)) > 0:
        return None
    return match["x"]


def _same_dtype_cast(match, eqn):
    return match["x"] if eqn.params["dtype"] == match["x"].dtype else None


def _identity_transpose(match, eqn):
    return match["x"] if tuple(eqn.params["perm"]) == tuple(range(len(eqn.params["perm"]))) \
        else None


def _double_transpose(match, eqn):
    inner = match["inner"].params["perm"]
    outer = eqn.params["perm"]
    composed = tuple(inner[axis] for axis in outer)
    return eqn.replace(inputs=(match["x"],), params=eqn.params.replace(perm=composed))


def _same_shape_reshape(match, eqn):
    return match["x"] if match["x"].shape == eqn.outputs[0].shape else None


def _double_reshape(match, eqn):
    return eqn.replace(inputs=(match["x"],))


def _squeeze_expanded(match, eqn):
    inner_axis = match["inner"].params["axis"] % (match["x"].ndim + 1)
    axes = eqn.params["axis"]
    if axes is None:                  # every size-1 axis: maybe more than the one added
        return None
    axes = axes if isinstance(axes, (tuple, list)) else (axes,)
    if tuple(axis % (match["x"].ndim + 1) for axis in axes) == (inner_axis,):
        return match["x"]
    return None


def _full_slice(match, eqn):
    return match["x"] if match["x"].shape == eqn.outputs[0].shape else None


RULES = (
    (Op("add", Any("x"), Lit(0)), _plus_zero),
    (Op("sub", Any("x"), Lit(0)), _identity),
    (Op("mul", Any("x"), Lit(1)), _identity),
    (Op("div", Any("x"), Lit(1)), _identity),
    (Op("pow", Any("x"), Lit(1)), _identity),
    (Op("neg", Op("neg", Any("x"))), _identity),
    (Op("linear", Any("x")), _identity),
    (Op("dropout", Any("x")), _identity),
    (Op("cast", Any("x")), _same_dtype_cast),
    (Op("transpose", Op("transpose", Any("x"), name="inner")), _double_transpose),
    (Op("transpose", Any("x")), _identity_transpose),
    (Op("reshape", Op("reshape", Any("x"), name="inner")), _double_reshape),
    (Op("reshape", Any("x")), _same_shape_reshape),
    (Op("squeeze", Op("expand_dims", Any("x"), name="inner")), _squeeze_expanded),
    (Op("concatenate", Any("x")), _identity),
    (Op("slice", Any("x")), _full_slice),
)


def simplify(program: Program, rules=RULES) -> Program:
    program = map_bodies(program, lambda body: simplify(body, rules))
    for _ in range(MAX_ROUNDS):
        program, changed = _rewrite_once(program, rules)
        if not changed:
            break
    return program


def _rewrite_once(program: Program, rules) -> tuple:
    substitution = Substitution()
    producers = {}
    eqns = []
    changed = False
    for eqn in program.eqns:
        eqn = substitution.eqn(eqn)
        result = _apply_rules(eqn, producers, rules)
        if isinstance(result, Eqn):
            eqn = result
            changed = True
        elif result is not None:
            substitution[eqn.outputs[0]] = result
            changed = True
            continue
        eqns.append(eqn)
        producers.update((var, eqn) for var in eqn.outputs)
    if not changed:
        return program, False
    return program.replace(eqns=eqns, outputs=substitution.outputs(program)), True


def _apply_rules(eqn, producers, rules):
    if len(eqn.outputs) != 1:
        return None
    unrepeated = _broadcast_instead_of_repeat(eqn, producers)
    if unrepeated is not None:
        return unrepeated
    for pattern, rewrite in rules:
        bindings = {}
        if not pattern.match_eqn(eqn, producers, bindings):
            continue
        result = rewrite(bindings, eqn)
        if result is None:
            continue
        if isinstance(result, Eqn):
            if result.outputs != eqn.outputs:
                raise AssertionError("a rewrite must keep the eqn's outputs")
            return result
        if result.type == eqn.outputs[0].type:
            return result
    return None


def _broadcast_instead_of_repeat(eqn, producers):
    """`eqn` reading the inputs of its operands' size-1 repeats, or None."""
    if eqn.op == "fused" or not get_op(eqn.op).elementwise:
        return None
    inputs = list(eqn.inputs)
    for position, atom in enumerate(inputs):
        repeat = producers.get(atom) if isinstance(atom, Var) else None
        if repeat is None or repeat.op != "repeat":
            continue
        source = repeat.inputs[0]
        if source.shape[normalize_axis(repeat.params["axis"], source.ndim)] != 1:
            continue
        candidate = inputs[:position] + [source] + inputs[position + 1:]
        try:
            types = get_op(eqn.op).infer([item.type for item in candidate], eqn.params)
        except ValueError:
            continue
        if types == (eqn.outputs[0].type,):
            inputs = candidate
    if inputs == list(eqn.inputs):
        return None
    return eqn.replace(inputs=tuple(inputs))
