"""Whether a program's batch rows are independent, so a call may be split by rows.

An RNN never mixes the rows of a batch: row b of every output depends only on row b
of the inputs (and on the weights). When a program keeps that property, a compiled
call can run its batch as several slices at once, one per core, and join the outputs
along axis 0, with no synchronisation between the slices at all.

`rows_independent(program)` proves it conservatively from the types and the ops:
  * every value carries the batch dim "B" only as its first axis, or not at all;
  * an eqn reading a value with "B" returns values with "B" (no reduction over it);
  * an op with an axis (softmax, slice, concatenate, gather, ...) never works along
    axis 0 of a value with "B", and transposes/tiles keep axis 0 in place;
  * nested programs (scan and fused bodies) obey the same rules;
  * an op not listed below is assumed to mix rows.
"""

from __future__ import annotations

from rshop_ir.ir import Program, Var
from rshop_ir.ops import OPS
from rshop_ir.shapes import normalize_axes, normalize_axis

BATCH_DIM = "B"

# Ops whose every output row depends only on the same row of their inputs, once the
# types satisfy the rules above (axis params are checked in `_axis_ok`).
_ROW_WISE_OPS = frozenset({
    "fused", "scan", "matmul", "einsum", "layer_norm", "reduce_sum", "reduce_mean",
    "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "softmax",
    "log_softmax", "concatenate", "slice", "reshape", "expand_dims", "squeeze",
    "repeat", "tile", "transpose", "broadcast_to", "reverse", "shift", "gather", "constant",
    "fill", "where", "cast", "cumsum", "cumprod",
})


def has_batch_rows(var) -> bool:
    """True when `var`'s first axis is the batch dim."""
    return isinstance(var, Var) and len(var.shape) > 0 and var.shape[0] == BATCH_DIM


def rows_independent(program: Program) -> bool:
    """True when every output row of `program` depends only on the same input row."""
    return all(_value_ok(var) for var in program.inputs) and \
        all(_eqn_ok(eqn) for eqn in program.eqns)


def _value_ok(var) -> bool:
    shape = getattr(var, "shape", ())
    return not any(BATCH_DIM in str(dim) for dim in shape[1:]) and \
        (not shape or shape[0] == BATCH_DIM or BATCH_DIM not in str(shape[0]))


def _eqn_ok(eqn) -> bool:
    if eqn.op not in _ROW_WISE_OPS and not OPS[eqn.op].elementwise:
        return False
    if not all(_value_ok(atom) for atom in (*eqn.inputs, *eqn.outputs)):
        return False
    reads_rows = any(has_batch_rows(atom) for atom in eqn.inputs)
    if reads_rows and not all(has_batch_rows(var) for var in eqn.outputs):
        return False
    if not _axis_ok(eqn):
        return False
    return all(rows_independent(body) for body in eqn.nested_programs())


def _axis_ok(eqn) -> bool:
    """False when the op works along axis 0 of an input with batch rows."""
    first = eqn.inputs[0] if eqn.inputs else None
    if not has_batch_rows(first) and eqn.op not in ("concatenate", "matmul", "einsum"):
        return True
    params = eqn.params
    if eqn.op == "layer_norm":
        return 0 not in normalize_axes(params["axis"], first.ndim)
    if eqn.op in ("softmax", "log_softmax", "slice", "reverse", "shift", "repeat", "gather",
                  "cumsum", "cumprod"):
        return normalize_axis(params["axis"], first.ndim) != 0
    if eqn.op == "concatenate":
        rows = [atom for atom in eqn.inputs if has_batch_rows(atom)]
        return not rows or normalize_axis(params["axis"], rows[0].ndim) != 0
    if eqn.op in ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod"):
        return 0 not in normalize_axes(params["axes"], first.ndim)
    if eqn.op in ("argmax", "argmin"):
        return normalize_axis(params["axis"], first.ndim) != 0
    if eqn.op == "transpose":
        return tuple(params["perm"])[0] == 0
    if eqn.op == "tile":
        return tuple(params["repeats"])[0] == 1
    if eqn.op == "matmul":
        left, right = eqn.inputs
        # A right operand with batch rows is row-wise where each batch item is one
        # product: a batched matmul, or a 2-D left operand (a weight, `W @ x`).
        return not has_batch_rows(right) or (left.ndim == 2 and right.ndim >= 3) or (
            left.ndim >= 3 and right.ndim >= 3 and has_batch_rows(left))
    if eqn.op == "einsum":
        return _einsum_ok(eqn)
    return True


def _einsum_ok(eqn) -> bool:
    """The batch letter of every operand with rows is output letter 0."""
    spec = eqn.params["equation"].replace(" ", "")
    if "..." in spec or "->" not in spec:
        return False
    operands, output = spec.split("->")
    letters = operands.split(",")
    batch_letters = {term[0] for term, atom in zip(letters, eqn.inputs)
                     if has_batch_rows(atom) and term}
    if not batch_letters:
        return True
    if len(batch_letters) != 1 or not output or output[0] not in batch_letters:
        return False
    letter = output[0]
    # The batch letter may appear only at position 0 of operands with batch rows.
    return all(letter not in term[1:] and (term[:1] != letter or has_batch_rows(atom))
               for term, atom in zip(letters, eqn.inputs))
