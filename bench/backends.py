"""The backends: the Keras reference and built-ins, XLA, the rshop_ir compiled kernels,
and the optional peers (peers.py). `BACKENDS` maps each name to one instance."""

import numpy as np

from .backend_base import Backend, NotApplicable
from .peers import PEERS


def _predict(model):
    def run(*inputs):
        return model.predict_on_batch(inputs[0] if len(inputs) == 1 else list(inputs))

    return run


class KerasReference(Backend):
    """recurrentshop's RecurrentModel on Keras's own time loop (`predict_on_batch`)."""

    name = "keras-reference"
    kind = "reference"

    def prepare(self, case, settings):
        return _predict(case.model)


class KerasBuiltin(Backend):
    """`keras.layers.LSTM` / `GRU` / `SimpleRNN` with the same weights."""

    name = "keras-builtin"
    kind = "peer"

    def prepare(self, case, settings):
        if case.builtin is None:
            raise NotApplicable("no keras.layers equivalent of this step model")
        return _predict(case.builtin())


class KerasXla(Backend):
    """The reference model under `tf.function(jit_compile=True)`."""

    name = "keras-xla"
    kind = "peer"

    def availability(self):
        import keras

        if keras.backend.backend() != "tensorflow":
            return f"needs the tensorflow Keras backend (this is {keras.backend.backend()})"
        return None

    def prepare(self, case, settings):
        import tensorflow as tf

        model = case.model

        @tf.function(jit_compile=True)
        def forward(inputs):
            return model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)

        def run(*inputs):
            outputs = forward(list(inputs))
            if isinstance(outputs, (list, tuple)):
                return [np.asarray(output) for output in outputs]
            return np.asarray(outputs)

        return run


def _find_compile():
    """`rshop_ir.compile` (the function), or None while it does not exist yet."""
    try:
        import rshop_ir
    except ImportError:
        return None
    function = getattr(rshop_ir, "compile", None)
    if function is None or not callable(function):
        try:
            from rshop_ir.compile import compile as function
        except ImportError:
            return None
    return function


class RshopCompiled(Backend):
    """`rshop_ir.compile(model, target=...)`: the fused Numba kernels."""

    kind = "ours"

    def __init__(self, name, target):
        self.name = name
        self.target = target

    def availability(self):
        if _find_compile() is None:
            return "rshop_ir.compile is not available in this checkout yet"
        if self.target == "cuda":
            try:
                from rshop_ir.kernels.cuda.device import cuda_available

                available, reason = cuda_available()
            except ImportError as error:  # numba without its CUDA parts
                return f"numba.cuda unusable: {error}"
            if not available:
                return reason
        return None

    def prepare(self, case, settings):
        if self.target == "cpu" and settings.threads:
            import numba

            numba.set_num_threads(min(settings.threads, numba.config.NUMBA_NUM_THREADS))
        compiled = _find_compile()(case.model, target=self.target)

        def run(*inputs):
            return compiled(*inputs)

        if self.target == "cpu":
            from rshop_ir.kernels.cpu.background_compile import wait_all

            run.finish_compiles = wait_all    # see runner.finish_compiles
        return run


BACKEND_LIST = [KerasReference(), KerasBuiltin(), KerasXla(), RshopCompiled("numba-cpu", "cpu"),
                RshopCompiled("numba-cuda", "cuda"), *PEERS]
BACKENDS = {backend.name: backend for backend in BACKEND_LIST}
REFERENCE = "keras-reference"
DEFAULT_BACKENDS = ("keras-reference", "keras-builtin", "keras-xla", "numba-cpu",
                    "numba-cuda", "onnxruntime", "torch", "jax")


def parse_backends(names):
    """Backend names (comma or space separated, `all` for every one), the reference
    always first."""
    chosen = []
    for item in names:
        for name in str(item).replace(",", " ").split():
            if name == "all":
                chosen.extend(DEFAULT_BACKENDS)
            elif name not in BACKENDS:
                raise ValueError(f"Unknown backend {name!r}. Expected some of "
                                 f"{', '.join(BACKENDS)} or 'all'.")
            else:
                chosen.append(name)
    ordered = [REFERENCE] + [name for name in dict.fromkeys(chosen) if name != REFERENCE]
    return ordered
