"""GEMM merging: matmuls sharing a left operand become one matmul and slices.

`x @ Wi, x @ Wf, x @ Wc, x @ Wo` (2-D right operands with the same dtype) become
`x @ concatenate(Wi, Wf, Wc, Wo)` followed by one slice per original result along the
last axis. The concatenation depends only on the weights, so hoist.py and
precompute_weights.py move it out of the loop and into the prologue. Runs inside bodies.

Before:                                   After:
    e:f32[B,4] = matmul a b                   g:f32[8,6] = concatenate b c [axis=1]
    f:f32[B,2] = matmul a c                   h:f32[B,6] = matmul a g
  in (e, f)                                   e:f32[B,4] = slice h [axis=-1, start=0, stop=4]
                                              f:f32[B,2] = slice h [axis=-1, start=4, stop=6]
                                            in (e, f)
"""

from __future__ import annotations

from rshop_ir.ir import Eqn, Program, Var
from rshop_ir.passes.rewrite import make_eqn, map_bodies


def merge_gemms(program: Program) -> Program:
    program = map_bodies(program, merge_gemms)
    defined_at = {}
    for position, eqn in enumerate(program.eqns):
        defined_at.update((var, position) for var in eqn.outputs)
    groups = {}
    for position, eqn in enumerate(program.eqns):
        right = eqn.inputs[1] if eqn.op == "matmul" else None
        if right is not None and right.ndim == 2 and isinstance(right.shape[1], int) \
                and isinstance(eqn.inputs[0], Var):
            groups.setdefault(eqn.inputs[0], []).append(position)
    replacements = {}
    removed = set()
    for positions in groups.values():
        members = [program.eqns[position] for position in positions]
        first = positions[0]
        mergeable = [eqn for eqn in members
                     if defined_at.get(eqn.inputs[1], -1) < first
                     and eqn.inputs[1].dtype == members[0].inputs[1].dtype]
        if len(mergeable) < 2:
            continue
        replacements[first] = _merged(mergeable)
        removed.update(positions[index] for index, eqn in enumerate(members)
                       if eqn in mergeable)
    if not replacements:
        return program
    eqns = []
    for position, eqn in enumerate(program.eqns):
        if position in replacements:
            eqns.extend(replacements[position])
        elif position not in removed:
            eqns.append(eqn)
    return program.replace(eqns=eqns)


def _merged(matmuls) -> list:
    left = matmuls[0].inputs[0]
    concatenated = make_eqn("concatenate", [eqn.inputs[1] for eqn in matmuls], axis=1)
    product = make_eqn("matmul", [left, concatenated.outputs[0]])
    block = [concatenated, product]
    start = 0
    for eqn in matmuls:
        stop = start + eqn.inputs[1].shape[1]
        params = {"axis": -1, "start": start, "stop": stop}
        block.append(Eqn("slice", (product.outputs[0],), eqn.outputs, params))
        start = stop
    return block
