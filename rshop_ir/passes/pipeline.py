"""The standard pass pipeline: one named list of `Program -> Program` functions.

`optimize(program)` runs PIPELINE in order and, by default, verifies the result of each
pass. `RSHOP_DEBUG=1` logs the IR after every pass to stderr.
A `BoundProgram` is optimised with its weights kept attached.
"""

from __future__ import annotations

import os
import sys

from rshop_ir.passes.cse import cse
from rshop_ir.passes.dce import dce
from rshop_ir.passes.fold_constants import fold_constants
from rshop_ir.passes.fuse_elementwise import fuse_elementwise
from rshop_ir.passes.hoist import hoist
from rshop_ir.passes.merge_gemms import merge_gemms
from rshop_ir.passes.precompute_weights import precompute_weights
from rshop_ir.passes.reassociate_products import reassociate_products
from rshop_ir.passes.simplify import simplify
from rshop_ir.passes.sink_output_projection import sink_output_projection
from rshop_ir.passes.sink_slices import sink_slices
from rshop_ir.passes.split_concat_matmul import split_concat_matmul
from rshop_ir.verify import verify

PIPELINE = (
    ("fold_constants", fold_constants),
    ("simplify", simplify),
    ("cse", cse),
    ("dce", dce),
    ("split_concat_matmul", split_concat_matmul),
    ("dce_after_split", dce),          # the split concatenations are read no more
    ("reassociate_products", reassociate_products),   # einsum(a, R) @ W -> einsum(a, R @ W)
    ("sink_output_projection", sink_output_projection),   # y's Dense after the loop
    ("merge_gemms", merge_gemms),
    ("hoist", hoist),
    ("merge_gemms_after_hoist", merge_gemms),   # e.g. two scans projecting the same x
    ("cse_after_hoist", cse),
    ("dce_after_hoist", dce),
    ("precompute_weights", precompute_weights),
    ("sink_slices", sink_slices),      # gates read slices of the operands, not of a sum
    ("cse_after_sink", cse),
    ("fuse_elementwise", fuse_elementwise),
)


def debug_level() -> int:
    try:
        return int(os.environ.get("RSHOP_DEBUG", "0") or 0)
    except ValueError:
        return 0


def optimize(program, passes=PIPELINE, check: bool = True):
    """Run `passes` (default: PIPELINE) on a Program or BoundProgram."""
    from rshop_ir.bound import BoundProgram

    if isinstance(program, BoundProgram):
        return program.with_program(optimize(program.program, passes, check))
    show = debug_level() >= 1
    if show:
        _log("input", program)
    for name, pass_fn in passes:
        program = pass_fn(program)
        if check:
            verify(program)
        if show:
            _log(name, program)
    return program


def _log(name: str, program) -> None:
    print(f"--- IR after {name} ({program.count_eqns()} eqns) ---\n{program}",
          file=sys.stderr)
