"""Splitting a matmul of a concatenation inside a scan body, where that pays.

`concatenate(a, b) @ W` equals `a @ W[:ka] + b @ W[ka:]`: W's rows split where the
concatenation joins its parts. A step model writes one Dense over `[x_t, h]` this way
(RWA, an attention decoder's output layer). Split,
  * a part that is a sequence slice (x_t) becomes part of the input projection:
    hoist.py moves its matmul out of the loop, so each step multiplies fewer rows;
  * a part that is the left operand of another matmul by a weight joins it in one
    GEMM (merge_gemms.py), so each step makes one call instead of two and copies no
    concatenation.
Only matmuls with such a part are split, by a loop-invariant 2-D weight (a scan
constant), when every reader of the concatenation (along the last axis) is such a
matmul: each of them splits, and nothing reads the concatenation any more. The
weight's row slices are loop invariant too: hoist.py and precompute_weights.py compute
them once per weight version. The sum's rounding differs from the one matmul's by the
order of additions only. Runs in every scan body, nested ones included.

Before:                                   After:
  body={ inputs x:f32[B,2], h:f32[B,3],     body={ inputs x:f32[B,2], h:f32[B,3],
                w:f32[5,4]                                w:f32[5,4]
         let                                       let
           c:f32[B,5] = concatenate x h              d:f32[2,4] = slice w [axis=0, ...]
           y:f32[B,4] = matmul c w                   f:f32[3,4] = slice w [axis=0, ...]
         in (y) }                                    c:f32[B,5] = concatenate x h
                                                     e:f32[B,4] = matmul x d
                                                     g:f32[B,4] = matmul h f
                                                     y:f32[B,4] = add e g
                                                   in (y) }
(dce.py then drops the concatenation.)
"""

from __future__ import annotations

from collections import Counter

from rshop_ir.ir import Eqn, Program, Var
from rshop_ir.ops import ScanLayout
from rshop_ir.passes.rewrite import count_uses, make_eqn, map_scans
from rshop_ir.shapes import normalize_axis


def split_concat_matmul(program: Program) -> Program:
    return map_scans(program, _split_in_scan)


def _split_in_scan(eqn: Eqn) -> Eqn:
    body = split_concat_matmul(eqn.params["body"])     # nested scans first
    inner = ScanLayout.from_params(eqn.params).split(body.inputs)
    sequences, constants = set(inner["sequences"]), set(inner["constants"])
    uses = count_uses(body)
    producers = {var: body_eqn for body_eqn in body.eqns for var in body_eqn.outputs}
    weight_products = [body_eqn for body_eqn in body.eqns if body_eqn.op == "matmul"
                       and _is_weight(body_eqn.inputs[1], constants)]
    weight_lefts = Counter(body_eqn.inputs[0] for body_eqn in weight_products)
    slices, eqns = [], []
    for body_eqn in body.eqns:
        parts = _split_parts(body_eqn, producers, uses, weight_lefts, constants)
        if parts and any(part in sequences or weight_lefts[part] for part in parts):
            weight_rows, block = _split(body_eqn, parts)
            slices.extend(weight_rows)
            eqns.extend(block)
        else:
            eqns.append(body_eqn)
    if not slices and body is eqn.params["body"]:
        return eqn
    # the weight slices first: merge_gemms.py merges a matmul only with weights defined
    # before the first matmul of its left operand
    body = body.replace(eqns=slices + eqns)
    return eqn.replace(params=eqn.params.replace(body=body))


def _is_weight(atom, constants) -> bool:
    return (isinstance(atom, Var) and atom in constants and atom.ndim == 2
            and all(isinstance(dim, int) for dim in atom.shape))


def _split_parts(eqn, producers, uses, weight_lefts, constants):
    """The concatenated parts of `eqn`'s left operand when `eqn` may be split, else None."""
    if eqn.op != "matmul" or not _is_weight(eqn.inputs[1], constants):
        return None
    left = eqn.inputs[0]
    concatenation = producers.get(left) if isinstance(left, Var) else None
    if concatenation is None or concatenation.op != "concatenate" \
            or uses[left] != weight_lefts[left]:
        return None
    parts = concatenation.inputs
    if normalize_axis(concatenation.params["axis"], left.ndim) != left.ndim - 1 \
            or not all(isinstance(part, Var) and part.dtype == left.dtype
                       and isinstance(part.shape[-1], int) for part in parts):
        return None
    return parts


def _split(eqn, parts) -> tuple:
    """([slice of the weight's rows per part], [matmul per part, the adds summing them])."""
    weight = eqn.inputs[1]
    slices, block, products, start = [], [], [], 0
    for part in parts:
        stop = start + part.shape[-1]
        rows = make_eqn("slice", [weight], axis=0, start=start, stop=stop)
        product = make_eqn("matmul", [part, rows.outputs[0]])
        slices.append(rows)
        block.append(product)
        products.append(product.outputs[0])
        start = stop
    total = products[0]
    for position, product in enumerate(products[1:], start=2):
        add = make_eqn("add", [total, product])
        if position == len(products):   # the last sum is the matmul's own result
            add = add.replace(outputs=eqn.outputs)
        block.append(add)
        total = add.outputs[0]
    return slices, block
