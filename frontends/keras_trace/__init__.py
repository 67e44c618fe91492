"""Keras -> IR tracer (imported as `rshop_ir.frontends.keras_trace`).

`trace(target)` turns a recurrent layer (ours or Keras's) or a whole Keras model into a
`BoundProgram`: the IR program plus the current values of its weights. The Keras
variable behind each param is kept in `TraceResult.variables`, so a compiled kernel can
re-read weights when they change.
"""

from rshop_ir.frontends.keras_trace.trace import TraceResult, trace, trace_with_variables

# Importing the rule modules registers their rules.
from rshop_ir.frontends.keras_trace import (  # noqa: F401,E402
    attention_rules,
    cell_rules,
    composite_rules,
    window_rules,
    core_rules,
    normalization_rules,
    op_rules,
    recurrent_rules,
)

__all__ = ["TraceResult", "trace", "trace_with_variables"]
