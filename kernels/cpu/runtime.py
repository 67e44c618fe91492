"""The callable a CPU compilation returns: checks inputs, keeps weights current, runs.

`CompiledProgram(bound_optimized, ...)` wraps the generated module's `run`. A call:
  1. orders the inputs by name (`x`, `initial_state=[...]`, `initial_readout=...`) and
     fills omitted ones that have defaults (zeros for initial states), as the
     interpreter does;
  2. checks each: numeric (else TypeError), cast to the declared dtype (float64 ->
     float32 as Keras does), rank and fixed dims (else ValueError naming the input),
     made C-contiguous;
  3. re-reads the weights if a `weight_reader` is set (e.g. Keras variables) and
     recomputes the weight prologue only when they changed;
  4. calls `run(B, T, chunk, *inputs, *weights)` with `chunk` sized so the chunk
     buffers of the input projection stay under `max_chunk_bytes` whatever T is.
Nothing here imports Keras.
"""

from __future__ import annotations

import numpy as np

from rshop_ir.bound import BoundProgram
from rshop_ir.kernels.compiled_program_base import CompiledProgramBase
from rshop_ir.kernels.cpu.blas_threads import blas_threads_for
from rshop_ir.interpret import bind_weights, gather_inputs, run_prologue

DEFAULT_CHUNK_STEPS = 256
DEFAULT_MAX_CHUNK_BYTES = 16 * 2 ** 20


class CompiledProgram(CompiledProgramBase):
    """A program compiled to a Numba CPU kernel. Call it like the layer it came from.

    Attributes:
        ir: the optimised IR as text; ir_before_passes: before the pass pipeline.
        source: the generated Python/Numba module source.
        program: the optimised `Program`; weights: the current weights (name -> array).
    """

    def __init__(self, optimized: BoundProgram, original: BoundProgram, kernel, module,
                 weight_reader=None, chunk_steps: int = DEFAULT_CHUNK_STEPS,
                 max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES, name: str = "program"):
        if chunk_steps < 1:
            raise ValueError(f"chunk_steps must be >= 1. Received: chunk_steps={chunk_steps}")
        super().__init__(optimized, original, kernel, module, weight_reader, name)
        self.chunk_steps = int(chunk_steps)
        self.max_chunk_bytes = int(max_chunk_bytes)
        self._run = getattr(module, kernel.entry)
        self._set_weights(optimized.weights)

    def __repr__(self) -> str:
        return (f"<CompiledProgram {self.name!r}: target=cpu, inputs "
                f"{list(self.program.input_names)}, {len(self.program.params)} weights>")

    # ---- weights -----------------------------------------------------------------------

    def _set_weights(self, weights: dict) -> None:
        """Bind `weights` and recompute the prologue."""
        checked = bind_weights(self.program, weights)
        self._weights = {name: checked[var] for name, var in self.program.params}
        self._prologue = tuple(np.ascontiguousarray(value) for value in
                               run_prologue(self.program, checked))

    # ---- calling -----------------------------------------------------------------------

    def __call__(self, *inputs, initial_state=None, initial_readout=None, chunk_steps=None,
                 **named_inputs):
        program = self.program
        inputs, named_inputs = self._call_inputs(inputs, initial_state, initial_readout,
                                                 named_inputs)
        try:
            values = gather_inputs(program, inputs, named_inputs)
        except ValueError:
            # A default could not be sized: report a bad given input first, if any.
            given_dims = {}
            for value, var, name in zip(inputs, program.inputs, program.input_names):
                self._checked_host_array(value, var, name, given_dims)
            raise
        dims = {}
        arrays = [self._checked_host_array(value, var, name, dims)
                  for value, var, name in zip(values, program.inputs, program.input_names)]
        self.refresh_weights()
        batch, steps = dims.get("B", 0), dims.get("T", 0)
        chunk = self._chunk(batch, chunk_steps)
        weights = [self._weights[key] if kind == "param" else self._prologue[key]
                   for kind, key in self.kernel.weight_slots]
        with blas_threads_for(batch * self.kernel.step_flops_per_row):
            results = self._run(batch, steps, chunk, *arrays, *weights)
        results = list(results)
        return results[0] if len(results) == 1 else results

    def _chunk(self, batch: int, chunk_steps) -> int:
        chunk = self.chunk_steps if chunk_steps is None else int(chunk_steps)
        if chunk < 1:
            raise ValueError(f"chunk_steps must be >= 1. Received: chunk_steps={chunk}")
        row_bytes = self.kernel.projection_row_bytes
        if row_bytes and batch > 0:
            chunk = min(chunk, max(1, self.max_chunk_bytes // (batch * row_bytes)))
        return chunk
