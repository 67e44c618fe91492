"""Reassociating a product of a loop-invariant operand by a weight, inside a scan body.

An attention step reads its memory R (a scan constant) through the attention weights
a_t, `context = einsum(a_t, R)`, and then multiplies the context by a weight:
`context @ W`. Both R and W are the same at every step, so

    einsum(a_t, R) @ W  ==  einsum(a_t, R @ W)

and `R @ W` is loop invariant: hoist.py computes it once, before the loop. Each step
then does a contraction with the (c, f) product instead of a (c, e) contraction plus
an (e, f) matmul: the attention decoder at S2 (memory 16 x 128, W 128 x 256) reads
16 x 256 numbers a step instead of 16 x 128 + 128 x 256. The same holds for
`matmul(x_t, R) @ W` with R a 2-D invariant: two Dense layers without an activation
between them become one, with the product of their kernels.

The rewrite applies to `q = matmul(p, W)`, W a 2-D loop-invariant value with static
dims, when p is read only there and is made by
  * `matmul(a, R)`, R a 2-D loop-invariant value, a not loop invariant; or
  * a two-operand `einsum` of a per-step operand and a loop-invariant R whose last
    output label is R's last label, appears once in R and not in the other operand
    (so the einsum's last output axis is R's last axis, untouched);
and when it pays: per step it saves `cost(p) + rows * e * f - cost(p) * f / e`
multiply-adds (e, f: W's dims), and it costs `size(R) * f` once a call; it is applied
when the scan's steps (its static length, else ASSUMED_STEPS) times the saving exceed
that. Symbolic dims count as 1 on both sides (a batch axis scales both or only the
saving). Loop-invariant values are the scan constants and what is computed from them
alone (the weight slices split_concat_matmul.py makes). The sums run in another order,
so the rounding differs by that order only. Runs in every scan body, nested ones
included, before hoist.py.

Before:                                      After:
  body={ inputs s:f32[B,4], r:f32[B,4,3],      body={ inputs s:f32[B,4], r:f32[B,4,3],
                w:f32[3,5]                                   w:f32[3,5]
         let                                          let
           c:f32[B,3] = einsum s r                      m:f32[B,4,5] = matmul r w
                        [equation='bc,bce->be']          y:f32[B,5] = einsum s m
           y:f32[B,5] = matmul c w                                   [equation='bc,bce->be']
         in (y) }                                     in (y) }
"""

from __future__ import annotations

import math

from rshop_ir.ir import Eqn, Program, Var
from rshop_ir.ops import ScanLayout
from rshop_ir.ops.linalg import parse_einsum
from rshop_ir.passes.rewrite import count_uses, make_eqn, map_scans

ASSUMED_STEPS = 16   # steps assumed for a scan whose length is not static


def reassociate_products(program: Program) -> Program:
    return map_scans(program, _reassociate_in_scan)


def _reassociate_in_scan(eqn: Eqn) -> Eqn:
    body = reassociate_products(eqn.params["body"])     # nested scans first
    layout = ScanLayout.from_params(eqn.params)
    invariant = set(layout.split(body.inputs)["constants"])
    for body_eqn in body.eqns:
        variables = [atom for atom in body_eqn.inputs if isinstance(atom, Var)]
        if variables and not body_eqn.nested_programs() \
                and all(var in invariant for var in variables):
            invariant.update(body_eqn.outputs)
    steps = _static_steps(eqn, layout)
    uses = count_uses(body)
    producers = {var: body_eqn for body_eqn in body.eqns for var in body_eqn.outputs}
    replaced, rewritten = set(), []
    for body_eqn in body.eqns:
        new_eqns = _rewrite(body_eqn, producers, uses, invariant, steps)
        if new_eqns is None:
            rewritten.append(body_eqn)
            continue
        replaced.add(id(producers[body_eqn.inputs[0]]))
        rewritten.extend(new_eqns)
    if not replaced and body is eqn.params["body"]:
        return eqn
    body = body.replace(eqns=[e for e in rewritten if id(e) not in replaced])
    return eqn.replace(params=eqn.params.replace(body=body))


def _static_steps(eqn, layout):
    length = eqn.params["length"]
    if isinstance(length, int):
        return length
    sequences = layout.split(eqn.inputs)["sequences"]
    times = [var.shape[1] for var in sequences if var.ndim > 1]
    return times[0] if times and isinstance(times[0], int) else ASSUMED_STEPS


def _rewrite(eqn, producers, uses, invariant, steps):
    """[R @ W, the contraction by it] replacing `eqn` (q = p @ W), or None."""
    if eqn.op != "matmul":
        return None
    left, weight = eqn.inputs
    if not (_is_static_matrix(weight) and weight in invariant and isinstance(left, Var)
            and uses[left] == 1 and left in producers):
        return None
    producer = producers[left]
    found = _invariant_operand(producer, invariant)
    if found is None:
        return None
    position, memory = found
    if not _pays(producer, memory, weight, steps):
        return None
    try:
        product = make_eqn("matmul", [memory, weight])   # R may be a vector: no matmul
    except ValueError:
        return None
    inputs = list(producer.inputs)
    inputs[position] = product.outputs[0]
    try:
        contraction = make_eqn(producer.op, inputs, **dict(producer.params))
    except ValueError:
        return None
    if contraction.outputs[0].type != eqn.outputs[0].type:
        return None
    return [product, contraction.replace(outputs=eqn.outputs)]


def _is_static_matrix(atom) -> bool:
    return (isinstance(atom, Var) and atom.ndim == 2
            and all(isinstance(dim, int) for dim in atom.shape))


def _invariant_operand(producer, invariant):
    """(position, R) of the loop-invariant operand whose last axis is `producer`'s last
    output axis, or None."""
    if len(producer.inputs) != 2 or not all(isinstance(a, Var) for a in producer.inputs):
        return None
    first, second = producer.inputs
    if producer.op == "matmul":
        if first not in invariant and second in invariant and _is_static_matrix(second):
            return 1, second
        return None
    if producer.op != "einsum":
        return None
    (first_labels, second_labels), output_labels = parse_einsum(producer.params["equation"])
    if not output_labels:
        return None
    last = output_labels[-1]
    for position, (labels, other_labels) in enumerate(
            ((first_labels, second_labels), (second_labels, first_labels))):
        operand, other = producer.inputs[position], producer.inputs[1 - position]
        if (operand in invariant and other not in invariant and labels[-1] == last
                and labels.count(last) == 1 and last not in other_labels):
            return position, operand
    return None


def _size(shape) -> int:
    return math.prod(dim if isinstance(dim, int) else 1 for dim in shape)


def _contraction_cost(producer) -> int:
    """Multiply-adds of a matmul or einsum, symbolic dims counted as 1."""
    if producer.op == "matmul":
        return _size(producer.outputs[0].shape) * _size(producer.inputs[0].shape[-1:])
    labels, _ = parse_einsum(producer.params["equation"])
    sizes = {}
    for operand_labels, operand in zip(labels, producer.inputs):
        sizes.update(zip(operand_labels, operand.shape))
    return _size(sizes.values())


def _pays(producer, memory, weight, steps) -> bool:
    inner, outer = weight.shape
    cost = _contraction_cost(producer)
    before = cost + _size(producer.outputs[0].shape) * outer
    after = cost * outer / inner
    return after < before and steps * (before - after) > _size(memory.shape) * outer
