"""Which recurrent product of a scan step may take its input projection in, for many rows.

The hoisted input projection computes `x_t @ W` for the steps of a chunk in one GEMM
before them: at one row or a few, the only way its weight is read at the speed of
the vector units. With many rows a step's own `x_t @ W` is already a big product, and
an RNN step of the common form `f(x_t @ W + h @ U)` then pays twice for hoisting it:
the projection's rows are written to memory by one product and read back by the step,
and the step's own product stores its sums for the gate loop to add the two. The
wide-batch kernel (`generate(..., merged=True)`) instead computes `x_t @ W + h @ U` as
ONE packed product over both contractions (`packed_pair_product`) and reads nothing
else. Measured on the 2-core Zen 4 VM (LSTM at S4 = (256, 50, 256, 512), row slices of
128 rows, a hand-edited kernel, ad-hoc script, 11 interleaved rounds): 220.1 -> 207.8 ms
a call (BENCHMARKS.md run 30).

That is exact only where the step uses the projected sequence and the product solely
as their sum, column for column: every use of either, directly or through slices of
the same columns (also inside a fused element-wise region), is an `add` of the two
partners, or an add of one of them and another value (a bias) used the same way in
turn, so that each sum the step computes holds the sequence and the product once. `paired_matmul` checks that; the generator then reads the sequence as -0.0
(`x + (-0.0)` is `x` for every float, NaN and -0.0 included, and LLVM folds it away)
and the product as the merged sum. A projection followed by additions of weight-like
values (the bias a SimpleRNN's projection carries) merges too: the sequence then
reads -0.0 plus those values (codegen's `_chain_addends`, values.MergedSequence).
The runtime uses the variant for calls of MERGED_MIN_ROWS rows and MERGED_MIN_FLOPS
(kernels/cpu/runtime.py), passing the weight arguments in the variant's own order.
"""

from __future__ import annotations

from rshop_ir.ir import Program, Var


def paired_matmul(body: Program, sequence: Var):
    """The body's `matmul` eqn whose output the body uses only added to `sequence`,
    column for column (see the module docstring), else None. `sequence` is the body
    input of the projected sequence, (B, N)."""
    if sequence.ndim != 2:
        return None
    for eqn in body.eqns:
        if eqn.op != "matmul" or len(eqn.inputs) != 2:
            continue
        product = eqn.outputs[0]
        if product.shape == sequence.shape and product.dtype == sequence.dtype \
                and _only_added(body, sequence, product):
            return eqn
    return None


def _only_added(body: Program, sequence: Var, product: Var) -> bool:
    # var -> (which of the two it views, the (start, stop) columns or None for all)
    views = {sequence: ("sequence", None), product: ("product", None)}
    return _uses_pair(body.eqns, views, body.outputs, slices=True)


def _uses_pair(eqns, views: dict, outputs, slices: bool) -> bool:
    """Whether `eqns` use the views of the sequence and the product (`views`, grown as
    it goes) only as: a slice of the columns (`slices`: at the body's level), an add
    of a view and something else (a view again: `sequence + bias` reads as -0.0 +
    bias, `product + bias` as the merged sum + bias), or an add of two partners; and
    no output is a view."""
    for eqn in eqns:
        read = [atom for atom in eqn.inputs if isinstance(atom, Var) and atom in views]
        if not read:
            continue
        if slices and eqn.op == "slice" and _column_slice(eqn) is not None \
                and views[eqn.inputs[0]][1] is None:
            views[eqn.outputs[0]] = (views[eqn.inputs[0]][0], _column_slice(eqn))
        elif eqn.op == "add" and _partners(views, eqn.inputs):
            continue
        elif eqn.op in ("add", "bias_add") and len(read) == 1 and len(eqn.inputs) == 2 \
                and eqn.outputs[0].shape == read[0].shape:
            views[eqn.outputs[0]] = views[read[0]]
        elif eqn.op == "fused" and _fused_uses_pair(eqn, views):
            continue
        else:
            return False
    return not any(isinstance(atom, Var) and atom in views for atom in outputs)


def _column_slice(eqn):
    """(start, stop) of a slice of the last axis of a 2-D value, else None."""
    (x,) = eqn.inputs
    axis = eqn.params.get("axis")
    if x.ndim != 2 or axis not in (1, -1) or eqn.params.get("step", 1) not in (1, None):
        return None
    dim = x.shape[1]
    if not isinstance(dim, int):
        return None
    start, stop, _ = slice(eqn.params.get("start"), eqn.params.get("stop")).indices(dim)
    return start, stop


def _partners(views: dict, operands) -> bool:
    """Whether `operands` are the sequence and the product over the same columns."""
    if len(operands) != 2 or not all(isinstance(a, Var) and a in views for a in operands):
        return False
    (kind, columns), (other_kind, other_columns) = views[operands[0]], views[operands[1]]
    return kind != other_kind and columns == other_columns


def _fused_uses_pair(eqn, views: dict) -> bool:
    """`_uses_pair` inside the fused region `eqn`, its inputs viewing what the outer
    values they take view."""
    body = eqn.params["body"]
    inner = {var: views[outer] for outer, var in zip(eqn.inputs, body.inputs)
             if isinstance(outer, Var) and outer in views}
    return _uses_pair(body.eqns, inner, body.outputs, slices=False)
