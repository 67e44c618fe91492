"""Common-subexpression elimination: one eqn per (op, inputs, params).

A later eqn that repeats an earlier one (same op, same inputs — in either order for a
commutative op — and equal params) is dropped and its outputs replaced by the earlier
eqn's. Runs inside scan/fused bodies and in the prologue too. All ops are pure.

Before:                                   After:
    c:f32[B,4] = mul a b                      c:f32[B,4] = mul a b
    d:f32[B,4] = mul b a                      e:f32[B,4] = add c c
    e:f32[B,4] = add c d                    in (e)
  in (e)
"""

from __future__ import annotations

from rshop_ir.ir import Literal, Program
from rshop_ir.ops import get_op
from rshop_ir.passes.rewrite import Substitution, map_bodies


def cse(program: Program) -> Program:
    program = map_bodies(program, cse)
    prologue = program.prologue
    if prologue is not None:
        prologue = _cse_flat(prologue, keep=set(prologue.outputs))
        program = program.replace(prologue=prologue)
    return _cse_flat(program, keep=set())


def _cse_flat(program: Program, keep: set) -> Program:
    """CSE one scope. Vars in `keep` are referenced from elsewhere and stay defined."""
    substitution = Substitution()
    seen = {}
    eqns = []
    for eqn in program.eqns:
        eqn = substitution.eqn(eqn)
        key = _key(eqn)
        earlier = seen.get(key)
        if earlier is not None and not any(var in keep for var in eqn.outputs):
            for old, new in zip(eqn.outputs, earlier.outputs):
                substitution[old] = new
            continue
        seen.setdefault(key, eqn)
        eqns.append(eqn)
    if len(eqns) == len(program.eqns) and not substitution:
        return program
    return program.replace(eqns=eqns, outputs=substitution.outputs(program))


def _atom_key(atom):
    return atom.key() if isinstance(atom, Literal) else ("var", id(atom))


def _key(eqn) -> tuple:
    inputs = [_atom_key(atom) for atom in eqn.inputs]
    if len(inputs) == 2 and get_op(eqn.op).commutative:
        inputs.sort(key=repr)
    return (eqn.op, tuple(inputs), eqn.params)
