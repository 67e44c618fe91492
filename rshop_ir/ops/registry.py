"""The one op table: every fact about an op lives in its `OpDef` entry.

The interpreter, the verifier, constant folding, fusion and (later) code generators all
read this table; nothing else knows an op's semantics. An op missing from the table
raises `UnsupportedError`.

An entry holds:
    shape_rule(input_types, **params) -> tuple of output TensorTypes (raises ValueError
        on bad inputs);
    impl(*arrays, **params) -> array or tuple of arrays: the numpy reference semantics;
    params: name -> default (REQUIRED when the caller must give it); the builder fills
        the defaults in, so a printed equation shows every param;
    elementwise: the output is a pure per-element function of its (broadcast) inputs,
        so it may join a fused loop;
    commutative: a binary op whose two inputs may be swapped (CSE, pattern matching);
    num_inputs: the exact input count, or None when variadic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from rshop_ir.errors import UnsupportedError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


@dataclass(frozen=True)
class OpDef:
    name: str
    shape_rule: Callable
    impl: Callable
    params: dict = field(default_factory=dict)
    elementwise: bool = False
    commutative: bool = False
    num_inputs: "int | None" = None
    doc: str = ""

    def complete_params(self, given: dict) -> dict:
        """Fill in defaults; reject unknown and missing params with a clear message."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise ValueError(f"Op {self.name!r} has no param(s) {unknown}. Its params are "
                             f"{sorted(self.params)}.")
        completed = {}
        for name, default in self.params.items():
            if name in given:
                completed[name] = given[name]
            elif default is REQUIRED:
                raise ValueError(f"Op {self.name!r} requires the param {name!r}.")
            else:
                completed[name] = default
        return completed

    def infer(self, input_types, params) -> tuple:
        """Run the shape rule after checking the input count."""
        if self.num_inputs is not None and len(input_types) != self.num_inputs:
            raise ValueError(f"Op {self.name!r} takes {self.num_inputs} input(s), "
                             f"received {len(input_types)}.")
        return tuple(self.shape_rule(*input_types, **dict(params)))


OPS: dict = {}


def register(name: str, shape_rule: Callable, impl: Callable, **options) -> OpDef:
    """Add one entry to the table (each op is registered once)."""
    if name in OPS:
        raise ValueError(f"Op {name!r} is already registered.")
    op = OpDef(name=name, shape_rule=shape_rule, impl=impl, **options)
    OPS[name] = op
    return op


def get_op(name: str) -> OpDef:
    """The table entry for `name`, or `UnsupportedError` naming the op."""
    try:
        return OPS[name]
    except KeyError:
        raise UnsupportedError(f"Op {name!r} is not in the rshop_ir op table; the compiler "
                               f"cannot run it. Known ops: {', '.join(sorted(OPS))}.") from None
