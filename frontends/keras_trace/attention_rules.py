"""Tracing rule for `keras.ops.dot_product_attention` (what MultiHeadAttention calls
without dropout at inference), lowered as Keras's TensorFlow backend computes it:

    logits = einsum("btnh,bsnh->bnts", query, key) * scale  (+ bias)
    logits = where(mask and, with is_causal, s <= t, logits, -0.7 * the dtype's max)
    output = einsum("bnts,bsnh->btnh", softmax(logits over s), value)

Grouped query heads (more query heads than key heads) repeat each key and value head
for its group. Flash attention and a soft cap on the logits are refused.

`keras.layers.Attention` needs no rule: its call() is re-traced, additive scores
(`score_mode="concat"`, whose `weight * tensor` products put the weight first)
included (variable_operators.py).
"""

import numpy as np

from rshop_ir.frontends.keras_trace.op_rules import _fail
from rshop_ir.frontends.keras_trace.walk import op_rule

_ARGUMENTS = ("query", "key", "value", "bias", "mask", "scale")


@op_rule("DotProductAttention")
def trace_dot_product_attention(context, operation, args, kwargs):
    given = dict(zip(_ARGUMENTS, args))
    given.update({name: kwargs[name] for name in _ARGUMENTS if name in kwargs})
    query, key, value = given["query"], given["key"], given["value"]
    bias, mask, scale = given.get("bias"), given.get("mask"), given.get("scale")
    if operation.flash_attention or operation.attn_logits_soft_cap is not None:
        raise _fail(operation, "flash attention or a soft cap on the logits")
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise _fail(operation, "attention over other than (batch, steps, heads, depth)")
    query_heads, key_heads = query.shape[2], key.shape[2]
    if query_heads != key_heads:
        if key_heads == 1 or query_heads % key_heads:
            raise _fail(operation, f"{query_heads} query heads over {key_heads} key heads")
        groups = query_heads // key_heads
        key = context.apply("repeat", key, repeats=groups, axis=2)
        value = context.apply("repeat", value, repeats=groups, axis=2)
    if scale is None:
        scale = 1.0 / float(np.sqrt(key.shape[-1]))
    if not isinstance(scale, (int, float)):
        raise _fail(operation, "a scale other than a Python number")
    logits = context.apply("einsum", query, key, equation="btnh,bsnh->bnts")
    logits = context.apply("mul", logits, float(scale))
    if bias is not None:
        logits = context.apply("add", logits, bias)
    keep = mask
    if operation.is_causal:
        steps, sources = logits.shape[2], logits.shape[3]
        if isinstance(steps, str) or isinstance(sources, str):
            raise _fail(operation, "causal attention over an unknown number of steps")
        causal = context.constant(np.tril(np.ones((1, 1, steps, sources), dtype=bool)))
        keep = causal if keep is None else context.apply("logical_and", keep, causal)
    if keep is not None:
        lowest = float(np.dtype(logits.dtype).type(-0.7 * np.finfo(logits.dtype).max))
        logits = context.apply("where", keep, logits, lowest)
    probabilities = context.apply("softmax", logits, axis=-1)
    return context.apply("einsum", probabilities, value, equation="bnts,bsnh->btnh")
