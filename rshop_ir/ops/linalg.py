"""Contractions and normalisation: matmul, einsum, layer_norm.

`matmul` is numpy's `matmul` for ranks >= 2: a Dense layer on the last axis is
`matmul(x, kernel)` with a 2-D kernel, for x of shape (B, I) or (B, T, I); batch dims
broadcast. `einsum` takes an explicit equation ("bti,ij->btj"; no "...") and covers
batch_dot and attention contractions.
"""

from __future__ import annotations

import numpy as np

from rshop_ir.ir import TensorType
from rshop_ir.ops.registry import REQUIRED, register
from rshop_ir.shapes import broadcast_shapes, normalize_axes


def _result_dtype(*types: TensorType) -> str:
    return np.result_type(*(np.dtype(t.dtype) for t in types)).name


def matmul_rule(a: TensorType, b: TensorType) -> tuple:
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul takes inputs of rank >= 2. Received {a} and {b}; use "
                         f"expand_dims or einsum for vectors.")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: contracted dims differ: {a} @ {b} "
                         f"({a.shape[-1]} != {b.shape[-2]}).")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return (TensorType(_result_dtype(a, b), batch + (a.shape[-2], b.shape[-1])),)


def parse_einsum(equation: str) -> tuple:
    """"ij,jk->ik" -> (("ij", "jk"), "ik"); only explicit, ellipsis-free equations."""
    text = equation.replace(" ", "")
    if "->" not in text or "." in text:
        raise ValueError(f"einsum needs an explicit '->' and no '...'. "
                         f"Received equation={equation!r}.")
    inputs_text, output = text.split("->")
    return tuple(inputs_text.split(",")), output


def einsum_rule(*operands: TensorType, equation: str) -> tuple:
    input_labels, output_labels = parse_einsum(equation)
    if len(input_labels) != len(operands):
        raise ValueError(f"einsum {equation!r} names {len(input_labels)} operands, "
                         f"received {len(operands)}.")
    sizes = {}
    for labels, operand in zip(input_labels, operands):
        if len(labels) != operand.ndim:
            raise ValueError(f"einsum {equation!r}: operand {operand} has rank "
                             f"{operand.ndim}, its labels {labels!r} say {len(labels)}.")
        for label, dim in zip(labels, operand.shape):
            if sizes.setdefault(label, dim) != dim:
                raise ValueError(f"einsum {equation!r}: label {label!r} is both "
                                 f"{sizes[label]} and {dim}.")
    missing = [label for label in output_labels if label not in sizes]
    if missing:
        raise ValueError(f"einsum {equation!r}: output labels {missing} are not inputs.")
    shape = tuple(sizes[label] for label in output_labels)
    return (TensorType(_result_dtype(*operands), shape),)


def layer_norm_rule(x: TensorType, gamma: TensorType, beta: TensorType, axis, epsilon):
    normalize_axes(axis, x.ndim)
    for name, value in (("gamma", gamma), ("beta", beta)):
        if broadcast_shapes(x.shape, value.shape) != x.shape:
            raise ValueError(f"layer_norm: {name} {value} does not broadcast to x {x}.")
    return (TensorType(_result_dtype(x, gamma, beta), x.shape),)


def layer_norm_impl(x, gamma, beta, axis, epsilon):
    axes = normalize_axes(axis, x.ndim)
    mean = np.mean(x, axis=axes, keepdims=True)
    variance = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def is_row_norm(eqn) -> bool:
    """A layer norm over the last axis only: each row is normalised on its own, so rows
    may be normalised in any grouping (all steps at once, a chunk of steps)."""
    x = eqn.inputs[0]
    if eqn.op != "layer_norm" or not hasattr(x, "ndim"):
        return False
    try:
        return list(normalize_axes(eqn.params["axis"], x.ndim)) == [x.ndim - 1]
    except ValueError:
        return False


register("matmul", matmul_rule, np.matmul, num_inputs=2)
register("einsum", einsum_rule, lambda *operands, equation: np.einsum(equation, *operands),
         params={"equation": REQUIRED})
register("layer_norm", layer_norm_rule, layer_norm_impl,
         params={"axis": -1, "epsilon": 1e-3}, num_inputs=3)
