"""Small helpers every pass uses to build a new program from an old one.

* `Substitution`: old Var -> replacement atom, applied to eqn inputs and program outputs.
* `map_bodies(program, pass_fn)`: run a pass inside each scan/fused body.
* `map_scans(program, rewrite_scan)`: replace each scan eqn by a rewritten one.
* `make_eqn(op, inputs, **params)`: a new eqn with fresh, shape-inferred output Vars.
* `count_uses(program)`: how many times each Var is read (program outputs count).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from rshop_ir.ir import Eqn, Program, Var
from rshop_ir.ops import get_op


class Substitution:
    def __init__(self):
        self.replacements = {}

    def __setitem__(self, var: Var, atom) -> None:
        self.replacements[var] = atom

    def __bool__(self) -> bool:
        return bool(self.replacements)

    def atom(self, atom):
        while isinstance(atom, Var) and atom in self.replacements:
            atom = self.replacements[atom]
        return atom

    def eqn(self, eqn: Eqn) -> Eqn:
        inputs = tuple(self.atom(atom) for atom in eqn.inputs)
        if all(new is old for new, old in zip(inputs, eqn.inputs)):
            return eqn
        return eqn.replace(inputs=inputs)

    def outputs(self, program: Program) -> tuple:
        return tuple(self.atom(atom) for atom in program.outputs)


def map_bodies(program: Program, pass_fn, skip_ops=()) -> Program:
    """Apply `pass_fn` to every program held in an eqn's params (one level deep; a
    recursive pass recurses by itself), except in eqns whose op is in `skip_ops`."""
    changed = False
    eqns = []
    for eqn in program.eqns:
        new_params = {}
        if eqn.op in skip_ops:
            eqns.append(eqn)
            continue
        for key, value in eqn.params.items():
            if isinstance(value, Program):
                new_value = pass_fn(value)
                if new_value is not value:
                    new_params[key] = new_value
        if new_params:
            eqn = eqn.replace(params=eqn.params.replace(**new_params))
            changed = True
        eqns.append(eqn)
    return program.replace(eqns=eqns) if changed else program


def map_scans(program: Program, rewrite_scan) -> Program:
    """Replace each scan eqn of `program` by `rewrite_scan(eqn)` (the same eqn when
    nothing changes); the same program when no scan changed."""
    eqns = []
    changed = False
    for eqn in program.eqns:
        if eqn.op == "scan":
            new_eqn = rewrite_scan(eqn)
            changed |= new_eqn is not eqn
            eqn = new_eqn
        eqns.append(eqn)
    return program.replace(eqns=eqns) if changed else program


def make_eqn(op_name: str, inputs, **params) -> Eqn:
    """A new eqn whose outputs are fresh Vars typed by the op's shape rule."""
    op = get_op(op_name)
    completed = op.complete_params(params)
    output_types = op.infer([atom.type for atom in inputs], completed)
    outputs = tuple(Var(value_type.dtype, value_type.shape) for value_type in output_types)
    return Eqn(op_name, tuple(inputs), outputs, completed)


def fresh_var(like) -> Var:
    return Var(like.dtype, like.shape)


def reader_positions(eqns) -> dict:
    """Var -> the positions in `eqns` of the eqns reading it (in order, once per
    operand)."""
    readers = defaultdict(list)
    for position, eqn in enumerate(eqns):
        for atom in eqn.inputs:
            if isinstance(atom, Var):
                readers[atom].append(position)
    return readers


def count_uses(program: Program) -> Counter:
    uses = Counter()
    for eqn in program.eqns:
        uses.update(atom for atom in eqn.inputs if isinstance(atom, Var))
    uses.update(atom for atom in program.outputs if isinstance(atom, Var))
    return uses
