"""What every compiled program (CPU `CompiledProgram`, CUDA `CompiledCudaProgram`) shares.

`CompiledProgramBase` holds the text views (`ir`, `ir_before_passes`, `source`), the
weights (`weights`, `set_weights`, `refresh_weights`, `to_bound_program`), the sorting
of a call's arguments into inputs (`_call_inputs`) and the host input check. A target's subclass supplies `_set_weights(weights)` (bind the full weight
dict and derive what its kernels read: the prologue on the CPU, the packed device
buffer on CUDA), `__call__` and `__repr__`, and calls `_set_weights` at the end of its
`__init__`. Nothing here imports Keras or a target.
"""

from __future__ import annotations

import numpy as np

from rshop_ir.bound import BoundProgram
from rshop_ir.shapes import bind_shape


class CompiledProgramBase:
    """The target-independent part of a compiled program.

    Attributes:
        program: the optimised `Program`; kernel: the generated module description
        (its `.source` is the text); module: the loaded module; name: the program name.
    """

    def __init__(self, optimized: BoundProgram, original: BoundProgram, kernel, module,
                 weight_reader=None, name: str = "program"):
        self.program = optimized.program
        self._original_program = original.program
        self.kernel = kernel
        self.module = module
        self.name = name
        self._weight_reader = weight_reader

    # ---- text views --------------------------------------------------------------------

    @property
    def ir(self) -> str:
        return str(self.program)

    @property
    def ir_before_passes(self) -> str:
        return str(self._original_program)

    @property
    def source(self) -> str:
        return self.kernel.source

    # ---- weights -----------------------------------------------------------------------

    @property
    def weights(self) -> dict:
        """The current weights, name -> a copy (change them with `set_weights`)."""
        return {name: np.array(value) for name, value in self._weights.items()}

    def set_weights(self, weights: dict) -> None:
        """Replace the weights (name -> array); what the kernels read from them is
        derived again at once (the prologue on the CPU; packed and uploaded on CUDA)."""
        self._set_weights({**self._weights, **dict(weights)})

    def _set_weights(self, weights: dict) -> None:
        """Bind the complete weight dict `weights`; each target implements it."""
        raise NotImplementedError

    def refresh_weights(self) -> bool:
        """Re-read the weights from their source; True when they changed."""
        return self._bind_changed(self._changed_weights())

    def _bind_changed(self, changed) -> bool:
        """Bind `changed` (the weights a question found changed, else None); True when
        there were any."""
        if changed is None:
            return False
        self._set_weights(changed)
        return True

    def _changed_weights(self):
        """The weights read from their source (name -> array) when they differ from the
        bound ones, else None. Runs before every call (on the CPU, a team's member may
        run it: kernels/cpu/team_poll.py)."""
        if self._weight_reader is None:
            return None
        poll = getattr(self._weight_reader, "poll", None)
        if poll is not None:
            # The reader knows cheaply whether its source changed since its last read.
            current = poll()
            if current is None:
                return None
        else:
            current = self._weight_reader()
        # NaN weights where the bound ones have NaN at the same places are unchanged
        if all(_same_values(current[name], self._weights[name]) for name in self._weights):
            return None
        return current

    def to_bound_program(self) -> BoundProgram:
        """The program before passes with the current weights (what `rshop_ir.save`
        writes; `compile(rshop_ir.load(path))` gives this kernel back)."""
        self.refresh_weights()
        return BoundProgram(self._original_program, self._weights)

    # ---- inputs ------------------------------------------------------------------------

    @staticmethod
    def _is_array(value) -> bool:
        """True when `value` is one array (not a list of them); targets taking device
        arrays extend it."""
        return isinstance(value, np.ndarray)

    def _call_inputs(self, inputs: tuple, initial_state, initial_readout,
                     named_inputs: dict) -> tuple:
        """The (positional, named) inputs of a call: `initial_state` (one array or a
        list) and `initial_readout` join the named inputs, and a list given as the only
        positional input of a program with inputs `x/0`, `x/1`, ... becomes `x`."""
        if initial_state is not None:
            if self._is_array(initial_state) or not isinstance(initial_state, (list, tuple)):
                initial_state = [initial_state]
            named_inputs["initial_state"] = list(initial_state)
        if initial_readout is not None:
            named_inputs["initial_readout"] = initial_readout
        if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)) \
                and "x/0" in self.program.input_names and "x" not in named_inputs:
            named_inputs["x"] = list(inputs[0])
            inputs = ()
        return inputs, named_inputs

    @staticmethod
    def _checked_host_array(value, var, name: str, dims: dict) -> np.ndarray:
        """`value` as a C-contiguous numpy array of `var`'s dtype, its shape bound into
        `dims`; a TypeError (not numeric) or ValueError (shape) names the input."""
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as error:
            raise TypeError(f"Input {name!r}: expected a numeric array of dtype "
                            f"{var.dtype}; could not convert {type(value).__name__}: "
                            f"{error}") from None
        if array.dtype.kind not in "biuf" and array.dtype.name != "bfloat16":
            raise TypeError(f"Input {name!r}: expected a numeric array of dtype "
                            f"{var.dtype}; received dtype {array.dtype}. Convert it with "
                            f"np.asarray(x, dtype='{var.dtype}').")
        if array.dtype != np.dtype(var.dtype):
            array = array.astype(var.dtype)
        bind_shape(var.shape, array.shape, dims, f"Input {name!r}")
        return np.ascontiguousarray(array)


def _same_values(new, bound: np.ndarray) -> bool:
    """True when the array `new` holds the values of `bound` (NaN equal to NaN)."""
    new = np.asarray(new)
    inexact = np.issubdtype(new.dtype, np.inexact) and np.issubdtype(bound.dtype, np.inexact)
    return bool(np.array_equal(new, bound, equal_nan=inexact))
