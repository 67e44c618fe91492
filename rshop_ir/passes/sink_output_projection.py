"""Moving a scan's output layer after the loop: one GEMM over all steps.

A step model often ends in a Dense layer that only makes the step's output: a decoder's
`y = Dense(vocabulary)(h_new)`. Nothing inside the loop reads that y (no readout), so
the layer need not run step by step: the scan can return the sequence of its input `s`
(B, T, H) instead, and ONE matmul over every step's rows, (B, T, H) @ (H, O), computes
the outputs after the loop. This is the input projection of hoist.py at the other end of
the loop. A step then does one product less (and, on a team of threads, one exchange
less); the GEMM over all steps runs at the machine's GEMM rate. The CPU kernel computes
it chunk by chunk inside its time loop (kernels/lowering.py `Epilogue`), so the sequence
of `s` is never held whole.

It applies to a top-level scan with return_sequences, no readout and no mask, whose y
is `chain(matmul(s, W))`: W a 2-D scan constant (loop invariant), chain element-wise eqns
(adding the bias, an activation) whose other operands are scan constants or literals of
a lower rank (so they broadcast the same once the T axis is inserted), every value of
the chain read once, by the next eqn or as y. Masked scans keep their layer: a masked
step repeats the previous y, and before the first step that is zeros, not `chain(0)`.

Before:                                   After:
  y s2 = scan x s w b [return_sequences,     z s2 = scan x s w b [return_sequences, ...]
         num_constants=2, ...]                 body={ inputs x_t, h, w, b
    body={ inputs x_t, h, w, b                        let
           let                                          n = tanh ...
             n = tanh ...                             in (n, n) }
             p = matmul n w                  p = matmul z w
             q = bias_add p b                y = bias_add p b
           in (q, n) }
(dce.py then drops the body's dead output layer and the constants only it read.)
"""

from __future__ import annotations

from rshop_ir.ir import Program, Var
from rshop_ir.ops import ScanLayout, get_op
from rshop_ir.passes.rewrite import count_uses, make_eqn


def sink_output_projection(program: Program) -> Program:
    eqns = []
    changed = False
    for eqn in program.eqns:
        sunk = _sink(eqn) if eqn.op == "scan" else None
        if sunk is None:
            eqns.append(eqn)
            continue
        eqns.extend(sunk)
        changed = True
    return program.replace(eqns=eqns) if changed else program


def _sink(eqn):
    """[new scan, matmul, *chain] computing the scan's outputs, or None."""
    params = eqn.params
    if not params["return_sequences"] or params["readout"] or params.get("masked"):
        return None
    body = params["body"]
    layout = ScanLayout.from_params(params)
    outer = layout.split(eqn.inputs)
    inner = layout.split(body.inputs)
    invariant = dict(zip(inner["constants"], outer["constants"]))   # body var -> outer
    uses = count_uses(body)
    producers = {var: body_eqn for body_eqn in body.eqns for var in body_eqn.outputs}
    y = body.outputs[0]
    chain = []
    value = y
    while True:
        if not isinstance(value, Var) or uses[value] != 1 or value not in producers:
            return None
        producer = producers[value]
        if producer.op == "matmul":
            break
        previous = _chain_input(producer, value, invariant)
        if previous is None:
            return None
        chain.append(producer)
        value = previous
    matmul = producer
    source, weight = matmul.inputs
    if not (isinstance(source, Var) and source.ndim == 2 and source.shape[0] == "B"
            and isinstance(weight, Var) and weight in invariant and weight.ndim == 2
            and source.dtype == weight.dtype):
        return None
    new_body = body.replace(outputs=(source, *body.outputs[1:]))
    scan = make_eqn("scan", eqn.inputs, **dict(params.replace(body=new_body).items()))
    scan = scan.replace(outputs=(scan.outputs[0], *eqn.outputs[1:]))
    after = [make_eqn("matmul", [scan.outputs[0], invariant[weight]], **dict(matmul.params))]
    for body_eqn in reversed(chain):
        current = after[-1].outputs[0]
        inputs = [current if isinstance(atom, Var) and atom not in invariant
                  else invariant.get(atom, atom) for atom in body_eqn.inputs]
        after.append(make_eqn(body_eqn.op, inputs, **dict(body_eqn.params)))
    last = after[-1]
    if last.outputs[0].type != eqn.outputs[0].type:
        return None
    after[-1] = last.replace(outputs=(eqn.outputs[0],))
    return [scan, *after]


def _chain_input(body_eqn, value, invariant):
    """The one operand of an element-wise `body_eqn` that is not loop invariant, when
    every other operand is a scan constant or literal of a lower rank; else None."""
    if body_eqn.nested_programs() or not get_op(body_eqn.op).elementwise \
            or len(body_eqn.outputs) != 1:
        return None
    varying = [atom for atom in body_eqn.inputs
               if isinstance(atom, Var) and atom not in invariant]
    if len(varying) != 1 or varying[0].shape != value.shape \
            or varying[0].dtype != value.dtype:
        return None
    for atom in body_eqn.inputs:
        if atom is varying[0]:
            continue
        if isinstance(atom, Var) and atom.ndim >= value.ndim:
            return None
    return varying[0]
