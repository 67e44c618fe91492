"""The one module that touches private Keras API.

Keras 3 keeps its backend-generic RNN loop (`keras.src.backend.rnn`) private; it is the
same machinery that `keras.layers.RNN` runs, so our reference backend is exactly as fast
and behaves exactly like Keras's RNNs (masking, go_backwards, unroll). If a Keras release
moves it, only this file changes.
"""

from keras.src.backend import rnn as _keras_backend_rnn
from keras.src.utils.tracking import no_automatic_dependency_tracking


def backend_rnn(
    step_function,
    inputs,
    initial_states,
    *,
    go_backwards,
    mask,
    constants,
    unroll,
    input_length,
    return_all_outputs,
):
    """Runs `step_function` over the time axis of `inputs` with Keras's own loop.

    Masked steps keep the previous output and states (`zero_output_for_mask=False`),
    as `keras.layers.RNN` does by default.

    Returns:
        `(last_output, outputs, final_states)`.
    """
    return _keras_backend_rnn(
        step_function,
        inputs,
        initial_states,
        go_backwards=go_backwards,
        mask=mask,
        constants=constants,
        unroll=unroll,
        input_length=input_length,
        zero_output_for_mask=False,
        return_all_outputs=return_all_outputs,
    )


__all__ = ["backend_rnn", "no_automatic_dependency_tracking"]
