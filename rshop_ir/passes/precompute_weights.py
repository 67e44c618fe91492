"""Weight precompute: move weight-only subexpressions into the program's prologue.

An eqn of the top-level program whose Var inputs are all params (or results of earlier
such eqns) — `transpose(W)`, `concatenate(Wi, Wf, Wc, Wo)` — depends only on the
weights. It moves into `program.prologue`, a program with no inputs that is run once per
weight version; a kernel caches its outputs (`interpret.run_prologue`) and recomputes
them only when the weights change. Scan bodies have no params (weights enter them as
constants), so run hoist.py first to bring weight-only body code out of the loop.

Before:                                   After:
  { params a:f32[4,8]=w                     { params a:f32[4,8]=w
    inputs b:f32[B,8]                         inputs b:f32[B,8]
    let                                       precompute
      c:f32[8,4] = transpose a [perm=(1, 0)]    c:f32[8,4] = transpose a [perm=(1, 0)]
      d:f32[B,4] = matmul b c                   -> (c)
    in (d) }                                  let
                                                d:f32[B,4] = matmul b c
                                              in (d) }
"""

from __future__ import annotations

from rshop_ir.ir import Program, Var
from rshop_ir.passes.rewrite import count_uses
from rshop_ir.shapes import is_symbolic


def precompute_weights(program: Program) -> Program:
    old = program.prologue
    weight_derived = set(program.param_vars)
    if old is not None:
        weight_derived.update(atom for atom in old.outputs if isinstance(atom, Var))
    moved, kept = [], []
    for eqn in program.eqns:
        variables = [atom for atom in eqn.inputs if isinstance(atom, Var)]
        # the prologue runs without the call's inputs: a result sized by B or T
        # (broadcast_to(w, ("B", 3))) is left in the program
        if variables and not eqn.nested_programs() and all(
                var in weight_derived for var in variables) and not any(
                is_symbolic(dim) for var in eqn.outputs for dim in var.shape):
            moved.append(eqn)
            weight_derived.update(eqn.outputs)
        else:
            kept.append(eqn)
    if not moved:
        return program
    main = program.replace(eqns=kept)
    uses = count_uses(main)
    old_eqns = old.eqns if old is not None else ()
    old_outputs = old.outputs if old is not None else ()
    new_outputs = [var for eqn in moved for var in eqn.outputs if uses[var]]
    outputs = [atom for atom in old_outputs if uses[atom]] + new_outputs
    eqns = old_eqns + tuple(moved)
    read = {atom for eqn in eqns for atom in eqn.inputs} | set(outputs)
    params = [(name, var) for name, var in program.params if var in read]
    prologue = Program(params=params, eqns=eqns, outputs=outputs)
    return main.replace(prologue=prologue)
