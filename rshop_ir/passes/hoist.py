"""Hoisting out of scan bodies: loop-invariant code and the input projection.

For each scan, in body order:
  * loop-invariant eqns — all Var inputs are scan constants or results of other
    invariant eqns — are computed once before the scan and enter the body as new
    constants (e.g. the concatenated weights made by merge_gemms.py);
  * the input projection — `matmul(x_t, W)` with x_t a per-step sequence slice and W a
    2-D invariant — becomes ONE matmul over the whole sequence, (B, T, I) @ (I, N),
    before the scan, entering the body as a new sequence (its slice is (B, N));
  * element-wise eqns of sequence slices and invariants only (e.g. adding the bias to
    the projection) follow it onto the whole sequence. An invariant operand must have
    a lower rank than the result, so that inserting the T axis cannot change how it
    broadcasts;
  * so does a layer norm of a sequence slice over its last axis (the layer-normalised
    LSTM normalises its input projection): each row is normalised on its own, so the
    rows of all steps can be normalised before the loop. Its axis is written from the
    end (-1), which names the same axis once the T axis is inserted.
Masking only affects states and outputs, and go_backwards only the order in which
slices are read, so both are unaffected. Inputs the body no longer reads are left to
dce.py. Nested scans are hoisted inside their own bodies first and never moved.

Before:                                   After:
    e f = scan a b c [num_sequences=1,        g:f32[B,T,4] = matmul a c
          num_constants=1, ...]               e f = scan a b c g [num_sequences=2, ...]
      body={ inputs h:f32[B,8], i, j           body={ inputs h:f32[B,8], k:f32[B,4], i, j
             let                                      let
               l:f32[B,4] = matmul h j                  m = add k i
               m = add l i                            in (m, m) }
             in (m, m) }
"""

from __future__ import annotations

from rshop_ir.ir import Eqn, Program, Var
from rshop_ir.ops import ScanLayout, get_op, is_row_norm
from rshop_ir.passes.rewrite import make_eqn, map_bodies


def hoist(program: Program) -> Program:
    program = map_bodies(program, hoist)
    eqns = []
    changed = False
    for eqn in program.eqns:
        if eqn.op == "scan":
            before, new_eqn = _hoist_scan(eqn)
            if before:
                eqns.extend(before)
                eqn = new_eqn
                changed = True
        eqns.append(eqn)
    return program.replace(eqns=eqns) if changed else program


def _hoist_scan(eqn: Eqn) -> tuple:
    layout = ScanLayout.from_params(eqn.params)
    body = eqn.params["body"]
    outer = layout.split(eqn.inputs)
    inner = layout.split(body.inputs)
    invariant = dict(zip(inner["constants"], outer["constants"]))   # body var -> outer
    sequence = dict(zip(inner["sequences"], outer["sequences"]))    # body var -> outer
    before, kept = [], []
    new_constants, new_sequences = [], []
    for body_eqn in body.eqns:
        hoisted = None
        if not body_eqn.nested_programs():
            if _is_invariant(body_eqn, invariant):
                hoisted = _outside(body_eqn, invariant, sequence, over_time=False)
                target, new_group = invariant, new_constants
            elif _is_sequence_only(body_eqn, invariant, sequence):
                hoisted = _outside(body_eqn, invariant, sequence, over_time=True)
                target, new_group = sequence, new_sequences
        if hoisted is None:
            kept.append(body_eqn)
            continue
        before.append(hoisted)
        for body_var, outer_var in zip(body_eqn.outputs, hoisted.outputs):
            target[body_var] = outer_var
            new_group.append(body_var)
    if not before:
        return [], eqn
    still_read = {atom for e in kept for atom in e.inputs} | set(body.outputs)
    new_sequences = [var for var in new_sequences if var in still_read]
    new_constants = [var for var in new_constants if var in still_read]
    body_inputs = (inner["sequences"] + new_sequences + inner["states"] + inner["readout"]
                   + inner["constants"] + new_constants)
    eqn_inputs = (outer["sequences"] + [sequence[var] for var in new_sequences]
                  + outer["states"] + outer["readout"] + outer["constants"]
                  + [invariant[var] for var in new_constants] + outer["mask"])
    names = dict(zip(body.inputs, body.input_names))
    input_names = [names.get(var, f"hoisted/{index}") for index, var in enumerate(body_inputs)]
    new_body = body.replace(inputs=body_inputs, eqns=kept, input_names=input_names)
    params = eqn.params.replace(
        body=new_body, num_sequences=layout.num_sequences + len(new_sequences),
        num_constants=layout.num_constants + len(new_constants))
    return before, eqn.replace(inputs=eqn_inputs, params=params)


def _variables(eqn) -> list:
    return [atom for atom in eqn.inputs if isinstance(atom, Var)]


def _is_invariant(eqn, invariant) -> bool:
    variables = _variables(eqn)
    return bool(variables) and all(var in invariant for var in variables)


def _is_sequence_only(eqn, invariant, sequence) -> bool:
    variables = _variables(eqn)
    if not any(var in sequence for var in variables):
        return False
    if not all(var in sequence or var in invariant for var in variables):
        return False
    if eqn.op == "matmul":
        left, right = eqn.inputs
        return left in sequence and right in invariant and right.ndim == 2 and left.ndim >= 2
    if eqn.op == "layer_norm":
        x, *affine = eqn.inputs
        return (x in sequence and is_row_norm(eqn)
                and all(isinstance(atom, Var) and atom in invariant and atom.ndim < x.ndim
                        for atom in affine))
    if not get_op(eqn.op).elementwise or len(eqn.outputs) != 1:
        return False
    rank = eqn.outputs[0].ndim
    return all((var.ndim == rank) if var in sequence else (var.ndim < rank)
               for var in variables)


def _outside(body_eqn, invariant, sequence, over_time: bool):
    """The outer eqn computing `body_eqn` (over the whole sequence if `over_time`),
    or None when its inferred type is not the expected one."""
    inputs = [invariant.get(atom, sequence.get(atom, atom)) if isinstance(atom, Var)
              else atom for atom in body_eqn.inputs]
    params = dict(body_eqn.params)
    if over_time and body_eqn.op == "layer_norm":   # from the end: T is inserted at 1
        params["axis"] = -1
    try:
        outer_eqn = make_eqn(body_eqn.op, inputs, **params)
    except ValueError:
        return None
    for body_var, outer_var in zip(body_eqn.outputs, outer_eqn.outputs):
        expected = body_var.shape
        if over_time:
            time = next(v for v in inputs if isinstance(v, Var) and v.ndim > 1 and
                        v in sequence.values()).shape[1]
            expected = expected[:1] + (time,) + expected[1:]
        if outer_var.type.shape != expected or outer_var.dtype != body_var.dtype:
            return None
    return outer_eqn
