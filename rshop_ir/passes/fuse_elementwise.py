"""Element-wise fusion: maximal element-wise regions become one `fused` eqn.

A region grows backwards from an element-wise eqn (its root) through the producers of
its inputs, absorbing a producer when it is element-wise and every reader of its outputs
is already in the region (so no intermediate value escapes). Only the root's output
leaves the region. Regions of two or more eqns become `fused` eqns (see ops/fused.py)
placed where the root was; a code generator emits each as one loop. Runs inside scan
bodies too, which is where the RNN gate math lives.

Before:                                   After:
    c:f32[B,4] = sigmoid a                    e:f32[B,4] = fused a b
    d:f32[B,4] = tanh b                         body={ inputs f:f32[B,4], g:f32[B,4]
    e:f32[B,4] = mul c d                               let
  in (e)                                                 c:f32[B,4] = sigmoid f
                                                         d:f32[B,4] = tanh g
                                                         e:f32[B,4] = mul c d
                                                       in (e) }
                                            in (e)
"""

from __future__ import annotations

from collections import defaultdict

from rshop_ir.ir import Eqn, Program, Var
from rshop_ir.ops import get_op
from rshop_ir.passes.rewrite import fresh_var, map_bodies

MIN_REGION_SIZE = 2


def fuse_elementwise(program: Program) -> Program:
    program = map_bodies(program, fuse_elementwise, skip_ops=("fused",))  # already fused
    readers = defaultdict(set)       # Var -> positions of eqns reading it
    producer = {}                     # Var -> position of its eqn
    for position, eqn in enumerate(program.eqns):
        producer.update((var, position) for var in eqn.outputs)
        for atom in eqn.inputs:
            if isinstance(atom, Var):
                readers[atom].add(position)
    escaping = {atom for atom in program.outputs if isinstance(atom, Var)}
    assigned = set()
    regions = {}                      # root position -> sorted member positions
    for root in reversed(range(len(program.eqns))):
        if root in assigned or not _fusible(program.eqns[root]):
            continue
        region = {root}
        grew = True
        while grew:
            grew = False
            for member in sorted(region):
                for atom in program.eqns[member].inputs:
                    position = producer.get(atom)
                    if position is None or position in region or position in assigned:
                        continue
                    candidate = program.eqns[position]
                    if not _fusible(candidate) or any(v in escaping for v in candidate.outputs):
                        continue
                    if all(readers[v] <= region for v in candidate.outputs):
                        region.add(position)
                        grew = True
        if len(region) >= MIN_REGION_SIZE:
            assigned |= region
            regions[root] = sorted(region)
    if not regions:
        return program
    eqns = []
    for position, eqn in enumerate(program.eqns):
        if position in regions:
            eqns.append(_fused_eqn([program.eqns[p] for p in regions[position]]))
        elif position not in assigned:
            eqns.append(eqn)
    return program.replace(eqns=eqns)


def _fusible(eqn) -> bool:
    return len(eqn.outputs) == 1 and get_op(eqn.op).elementwise


def _fused_eqn(members) -> Eqn:
    """One `fused` eqn running `members` (in order); the last member is the root."""
    inside = {var for eqn in members for var in eqn.outputs}
    external = []
    for eqn in members:
        for atom in eqn.inputs:
            if isinstance(atom, Var) and atom not in inside and atom not in external:
                external.append(atom)
    body_inputs = [fresh_var(var) for var in external]
    root_outputs = members[-1].outputs
    inner_outputs = [fresh_var(var) for var in root_outputs]  # one assignment per Var
    rename = dict(zip(external, body_inputs))
    rename.update(zip(root_outputs, inner_outputs))
    body_eqns = [eqn.replace(inputs=[rename.get(atom, atom) for atom in eqn.inputs],
                             outputs=[rename.get(var, var) for var in eqn.outputs])
                 for eqn in members]
    body = Program(inputs=body_inputs, eqns=body_eqns, outputs=inner_outputs)
    return Eqn("fused", tuple(external), root_outputs, {"body": body})
