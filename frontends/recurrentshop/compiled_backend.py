"""The compiled path of a recurrent layer: `backend="auto"`, `"numba-cpu"` or
`"numba-cuda"` at inference ("auto": CUDA on a real GPU, else the CPU).

The layer is traced and compiled once (lazily, at its first inference call). Each call
then runs the kernel through `tf.numpy_function`, so it works in eager calls and inside
`model.predict`'s graph alike; the layer's current weights are passed in with the
inputs, so the kernel never sees stale weights. What cannot be compiled falls back to
the Keras reference: `"auto"` logs the reason once at INFO level and keeps it in
`layer.fallback_reason`; an explicit `"numba-cpu"`/`"numba-cuda"` raises a `ValueError`
(also `"numba-cuda"` without a GPU).
"""

import logging

import numpy as np
import tensorflow as tf

from rshop_ir.errors import UnsupportedError
from rshop_ir.targets import compile_for

TARGETS = {"numba-cpu": "cpu", "numba-cuda": "cuda"}

LOGGER = logging.getLogger("rshop_ir")


def _same_buffer(a, b) -> bool:
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0] \
        and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype


class CompiledPath:
    """The kernel of one layer, with the Keras variables its weights come from."""

    def __init__(self, layer):
        import rshop_ir
        from rshop_ir.frontends.keras_trace import trace_with_variables

        traced = trace_with_variables(layer)
        if layer.backend == "auto":
            self.compiled = compile_for(traced.bound, "auto")
        else:
            self.compiled = rshop_ir.compile(traced.bound, target=TARGETS[layer.backend])
        self.names = list(traced.bound.program.param_names)
        self.variables = [traced.variables[name] for name in self.names]
        self.num_outputs = len(traced.bound.program.outputs)
        self._last_weights = None

    def _update_weights(self, arrays):
        """Bind the weights passed in with this call if they changed.

        The arrays of the previous call are kept (not copied): inside a graph
        (`model.predict`) TensorFlow hands the variables' own buffers to
        `tf.numpy_function` and copies a variable on write while such a buffer is held,
        so the same buffer again means the same values and the element-wise comparison
        (~0.1 ms per MB) is skipped. Other arrays are compared element by element."""
        last = self._last_weights
        if last is not None and all(
                _same_buffer(a, b) or np.array_equal(a, b) for a, b in zip(arrays, last)):
            return
        self.compiled.set_weights(dict(zip(self.names, arrays)))
        self._last_weights = list(arrays)

    def run(self, layer, inputs, states, readout, dtype):
        num_states = len(states)
        has_readout = readout is not None

        def kernel(x, *arrays):
            state_values = list(arrays[:num_states])
            readout_value = arrays[num_states] if has_readout else None
            self._update_weights(arrays[num_states + int(has_readout):])
            outputs = self.compiled(x, initial_state=state_values or None,
                                    initial_readout=readout_value)
            outputs = outputs if isinstance(outputs, list) else [outputs]
            return [np.asarray(o, dtype=dtype) for o in outputs]

        extra = list(states) + ([readout] if has_readout else [])
        weights = [variable.value for variable in self.variables]

        @tf.custom_gradient
        def run_kernel(*arguments):
            outputs = tf.numpy_function(kernel, list(arguments),
                                        [dtype] * self.num_outputs, stateful=False)
            if not isinstance(outputs, (list, tuple)):  # one output comes back bare
                outputs = [outputs]
            return list(outputs), _no_gradient(layer)

        outputs = run_kernel(inputs, *extra, *weights)
        shapes = layer.compute_output_shape(tuple(inputs.shape))
        shapes = list(shapes) if layer.return_states else [shapes]
        batch = inputs.shape[0]
        for output, shape in zip(outputs, shapes):
            output.set_shape((batch, *shape[1:]))
        return outputs[0] if self.num_outputs == 1 else list(outputs)


def _no_gradient(layer):
    def gradient(*upstream):
        raise ValueError(
            f"Layer {layer.name!r} ran its compiled kernel (backend={layer.backend!r}, "
            "called with training=None or False), which has no gradients. Call the "
            "layer with training=True (as model.fit does) to run the differentiable "
            "Keras reference, or pass backend='keras'."
        )
    return gradient


def _require_cuda(layer):
    from rshop_ir.kernels.cuda.device import cuda_available

    available, reason = cuda_available()
    if not available:
        raise ValueError(f"Layer {layer.name!r} has backend='numba-cuda', but {reason}. "
                         "Pass backend='auto' (CUDA when a GPU is present, the CPU "
                         "kernel otherwise), 'numba-cpu' or 'keras'.")


def compiled_path_for(layer):
    """The layer's `CompiledPath`, or None (with the reason recorded) when it cannot
    be compiled and the backend is "auto"."""
    if layer._compiled_path is not None or layer.fallback_reason is not None:
        return layer._compiled_path
    if layer.backend == "numba-cuda":
        _require_cuda(layer)
    try:
        if layer.stateful:
            raise UnsupportedError(f"Layer {layer.name!r}: stateful layers run in Keras "
                                   "(the compiled path does not keep states yet)")
        with tf.init_scope():  # trace and read weights eagerly, also inside predict
            layer._compiled_path = CompiledPath(layer)
    except UnsupportedError as error:
        if layer.backend != "auto":
            raise ValueError(
                f"Layer {layer.name!r} cannot run on backend={layer.backend!r}: "
                f"{str(error).rstrip('.')}. "
                "Pass backend='auto' to run what cannot be compiled in Keras."
            ) from None
        layer.fallback_reason = str(error)
        LOGGER.info("rshop_ir: layer %r runs in Keras: %s", layer.name, error)
    return layer._compiled_path
