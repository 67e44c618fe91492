"""The `fused` op: a region of element-wise ops that a code generator emits as one loop.

Its `body` is a program without params whose inputs match the fused eqn's inputs one to
one (same types) and whose eqns are all element-wise (broadcasting as numpy). The
interpreter simply runs the body. Created by passes/fuse_elementwise.py.

    f:f32[B,16] = fused a b
      body={ inputs c:f32[B,16], d:f32[B,16]
             let
               e:f32[B,16] = sigmoid c
               f:f32[B,16] = mul e d
             in (f) }
"""

from __future__ import annotations

from rshop_ir.ir import Program, TensorType
from rshop_ir.ops.registry import REQUIRED, get_op, register


def fused_rule(*types: TensorType, body: Program) -> tuple:
    if body.params or body.prologue is not None:
        raise ValueError("fused: the body has no params.")
    if len(types) != len(body.inputs):
        raise ValueError(f"fused: {len(types)} inputs for a body of {len(body.inputs)}.")
    for index, (outer, inner) in enumerate(zip(types, body.inputs)):
        if outer != inner.type:
            raise ValueError(f"fused: input {index} is {outer}, the body expects "
                             f"{inner.type}.")
    for eqn in body.eqns:
        if not get_op(eqn.op).elementwise:
            raise ValueError(f"fused: the body may hold only element-wise ops, not "
                             f"{eqn.op!r}.")
    return tuple(atom.type for atom in body.outputs)


def fused_impl(*arrays, body: Program):
    from rshop_ir.interpret import evaluate  # the interpreter runs the body
    return tuple(evaluate(body, list(arrays)))


register("fused", fused_rule, fused_impl, params={"body": REQUIRED})
