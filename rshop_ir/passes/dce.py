"""Dead-code elimination: drop eqns whose outputs nobody reads.

Inside a scan body every output [y, *new_states] is live (a state carried to the next
step cannot be dropped), but unused body eqns are, and so are sequence and constant
inputs that the body no longer reads (one sequence is kept when `length` is unset, since
it gives the step count). Unused prologue outputs are dropped too. Params stay: they
are the program's weight interface.

Before:                                   After:
    c:f32[B,4] = tanh a                       d:f32[B,4] = exp a
    d:f32[B,4] = exp a                      in (d)
  in (d)
"""

from __future__ import annotations

from rshop_ir.ir import Program, Var
from rshop_ir.ops import ScanLayout


def dce(program: Program) -> Program:
    live = {atom for atom in program.outputs if isinstance(atom, Var)}
    kept = []
    for eqn in reversed(program.eqns):
        if not any(var in live for var in eqn.outputs):
            continue
        if eqn.op == "scan":
            eqn = _dce_scan(eqn)
        elif eqn.nested_programs():
            eqn = eqn.replace(params=eqn.params.replace(**{
                key: dce(value) for key, value in eqn.params.items()
                if isinstance(value, Program)}))
        live.update(atom for atom in eqn.inputs if isinstance(atom, Var))
        kept.append(eqn)
    kept.reverse()
    prologue = program.prologue
    if prologue is not None:
        outputs = tuple(atom for atom in prologue.outputs if atom in live)
        if outputs:
            prologue = dce(prologue.replace(outputs=outputs))
            used_params = tuple(pair for pair in prologue.params if _reads(prologue, pair[1]))
            prologue = prologue.replace(params=used_params)
        else:
            prologue = None
    if len(kept) == len(program.eqns) and prologue is program.prologue and all(
            new is old for new, old in zip(kept, program.eqns)):
        return program
    return program.replace(eqns=kept, prologue=prologue)


def _reads(program: Program, var: Var) -> bool:
    return any(var in eqn.inputs for eqn in program.eqns) or var in program.outputs


def _dce_scan(eqn):
    layout = ScanLayout.from_params(eqn.params)
    body = dce(eqn.params["body"])
    used = {atom for body_eqn in body.eqns for atom in body_eqn.inputs if isinstance(atom, Var)}
    used.update(atom for atom in body.outputs if isinstance(atom, Var))
    outer = layout.split(eqn.inputs)
    inner = layout.split(body.inputs)

    sequences = [(o, i) for o, i in zip(outer["sequences"], inner["sequences"]) if i in used]
    if not sequences and outer["sequences"] and eqn.params["length"] is None:
        sequences = [(outer["sequences"][0], inner["sequences"][0])]
    constants = [(o, i) for o, i in zip(outer["constants"], inner["constants"]) if i in used]

    carried_outer = outer["states"] + outer["readout"]
    carried_inner = inner["states"] + inner["readout"]
    body_inputs = ([i for _, i in sequences] + carried_inner + [i for _, i in constants])
    eqn_inputs = ([o for o, _ in sequences] + carried_outer + [o for o, _ in constants]
                  + outer["mask"])
    if body is eqn.params["body"] and len(eqn_inputs) == len(eqn.inputs):
        return eqn
    name_of = dict(zip(body.inputs, body.input_names))
    names = tuple(name_of[var] for var in body_inputs)
    new_body = body.replace(inputs=body_inputs, input_names=names)
    params = eqn.params.replace(body=new_body, num_sequences=len(sequences),
                                num_constants=len(constants))
    return eqn.replace(inputs=eqn_inputs, params=params)
