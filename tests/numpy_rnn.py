"""Independent plain-numpy implementations of the RNN steps and of the time loop.

The tests compare the Keras layers against these, so they are written from the
published formulas, not from the code under test.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def simple_rnn_step(x, h, kernel, recurrent_kernel, bias):
    return np.tanh(x @ kernel + h @ recurrent_kernel + bias)


def lstm_step(x, h, c, kernel, recurrent_kernel, bias):
    """Keras gate order i, f, c, o; returns (h, c)."""
    z = x @ kernel + h @ recurrent_kernel + bias
    i, f, g, o = np.split(z, 4, axis=-1)
    c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c_new), c_new


def gru_step(x, h, kernel, recurrent_kernel, bias, reset_after=True):
    """Keras gate order z, r, h."""
    units = h.shape[-1]
    if reset_after:
        input_bias, recurrent_bias = bias[0], bias[1]
    else:
        input_bias, recurrent_bias = bias, np.zeros_like(bias)
    x_proj = x @ kernel + input_bias
    x_z, x_r, x_h = np.split(x_proj, 3, axis=-1)
    rec_z = h @ recurrent_kernel[:, :units] + recurrent_bias[:units]
    rec_r = h @ recurrent_kernel[:, units : 2 * units] + recurrent_bias[units : 2 * units]
    z = sigmoid(x_z + rec_z)
    r = sigmoid(x_r + rec_r)
    if reset_after:
        rec_h = h @ recurrent_kernel[:, 2 * units :] + recurrent_bias[2 * units :]
        candidate = np.tanh(x_h + r * rec_h)
    else:
        candidate = np.tanh(x_h + (r * h) @ recurrent_kernel[:, 2 * units :])
    return z * h + (1.0 - z) * candidate


def run_loop(
    step,
    x,
    states,
    *,
    readout=None,
    go_backwards=False,
    mask=None,
    decode_length=None,
    ground_truth=None,
    return_sequences=True,
):
    """The RNN semantics in a plain Python loop.

    Args:
        step: `(x_t, states, readout_or_None) -> (y_t, new_states)`.
        x: `(batch, time, ...)` or, with `decode_length`, `(batch, ...)` seen at
            every step.
        states: list of initial states.
        readout: initial readout (zeros for none) or `None` when the RNN has no
            readout.
        mask: `(batch, time)` bool; masked rows keep states, readout and output.
        ground_truth: teacher forcing: the readout at processing step k is
            `ground_truth[:, k-1]` (the initial readout at k = 0).

    Returns:
        `(outputs, final_states)`, outputs `(batch, steps, ...)` in processing order
        (or the last output when `return_sequences=False`).
    """
    num_steps = decode_length if decode_length is not None else x.shape[1]
    order = range(num_steps - 1, -1, -1) if go_backwards else range(num_steps)
    states = [np.array(s, dtype=np.float64) for s in states]
    previous_output = None
    outputs = []
    for position, t in enumerate(order):
        x_t = x if decode_length is not None else x[:, t]
        if ground_truth is not None and readout is not None:
            step_readout = readout if position == 0 else ground_truth[:, position - 1]
        else:
            step_readout = readout
        y, new_states = step(x_t, states, step_readout)
        if previous_output is None:
            previous_output = np.zeros_like(y)
        if mask is not None:
            keep = ~mask[:, t].astype(bool)

            def choose(new, old):
                index = keep.reshape((-1,) + (1,) * (new.ndim - 1))
                return np.where(index, old, new)

            if readout is not None:
                readout = choose(y, readout)
            y = choose(y, previous_output)
            new_states = [choose(n, o) for n, o in zip(new_states, states)]
        elif readout is not None:
            readout = y
        states = list(new_states)
        previous_output = y
        outputs.append(y)
    if return_sequences:
        return np.stack(outputs, axis=1), states
    return outputs[-1], states
