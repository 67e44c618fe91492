"""The scan interpreter against hand-written numpy loops (the semantics in ops/scan.py)."""

import numpy as np
import pytest

from rshop_ir import ProgramBuilder, interpret, verify
from rshop_ir.examples import decoder_program, lstm_program, random_weights, readout_program

RNG = np.random.default_rng(7)
BATCH, STEPS, INPUT, UNITS = 3, 6, 4, 5


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference_lstm(x, h, c, w, mask=None, go_backwards=False):
    """A plain numpy LSTM loop; returns (outputs in processing order, h, c)."""
    outputs = []
    previous_output = np.zeros_like(h)
    steps = range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])
    for t in steps:
        x_t = x[:, t]
        gate = {g: x_t @ w[f"lstm/W{g}"] + h @ w[f"lstm/U{g}"] + w[f"lstm/b{g}"]
                for g in "ifco"}
        new_c = sigmoid(gate["f"]) * c + sigmoid(gate["i"]) * np.tanh(gate["c"])
        new_h = sigmoid(gate["o"]) * np.tanh(new_c)
        if mask is not None:
            keep = mask[:, t][:, None]
            new_c = np.where(keep, new_c, c)
            new_h_state = np.where(keep, new_h, h)
            output = np.where(keep, new_h, previous_output)
        else:
            new_h_state, output = new_h, new_h
        h, c = new_h_state, new_c
        previous_output = output
        outputs.append(output)
    return np.stack(outputs, axis=1), h, c


def lstm_inputs(dtype="float64"):
    x = RNG.standard_normal((BATCH, STEPS, INPUT)).astype(dtype)
    h0 = RNG.standard_normal((BATCH, UNITS)).astype(dtype)
    c0 = RNG.standard_normal((BATCH, UNITS)).astype(dtype)
    return x, h0, c0


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_lstm_scan_matches_numpy_loop(return_sequences, go_backwards):
    program = verify(lstm_program(INPUT, UNITS, "float64", return_sequences=return_sequences,
                                  go_backwards=go_backwards))
    weights = random_weights(program, seed=3)
    x, h0, c0 = lstm_inputs()
    y, h, c = interpret(program, x, h0, c0, weights=weights)
    ys, h_ref, c_ref = reference_lstm(x, h0, c0, weights, go_backwards=go_backwards)
    np.testing.assert_allclose(y, ys if return_sequences else ys[:, -1], rtol=1e-12)
    np.testing.assert_allclose(h, h_ref, rtol=1e-12)
    np.testing.assert_allclose(c, c_ref, rtol=1e-12)


def test_initial_states_matter_and_go_backwards_differs():
    program = lstm_program(INPUT, UNITS, "float64", return_sequences=True)
    weights = random_weights(program, seed=3)
    x, h0, c0 = lstm_inputs()
    first = interpret(program, x, h0, c0, weights=weights)[0]
    zeros = interpret(program, x, 0 * h0, 0 * c0, weights=weights)[0]
    assert np.abs(first - zeros).max() > 1e-3
    backwards = lstm_program(INPUT, UNITS, "float64", return_sequences=True, go_backwards=True)
    assert np.abs(interpret(backwards, x, h0, c0, weights=weights)[0] - first).max() > 1e-3


@pytest.mark.parametrize("go_backwards", [False, True])
def test_masked_lstm_keeps_state_and_output(go_backwards):
    program = verify(lstm_program(INPUT, UNITS, "float64", return_sequences=True,
                                  go_backwards=go_backwards, masked=True))
    weights = random_weights(program, seed=4)
    x, h0, c0 = lstm_inputs()
    mask = RNG.random((BATCH, STEPS)) < 0.6
    mask[0, :2] = False   # masked first steps: output stays zeros, states stay initial
    mask[1, -1] = False
    y, h, c = interpret(program, x, h0, c0, mask, weights=weights)
    ys, h_ref, c_ref = reference_lstm(x, h0, c0, weights, mask=mask, go_backwards=go_backwards)
    np.testing.assert_allclose(y, ys, rtol=1e-12)
    np.testing.assert_allclose(h, h_ref, rtol=1e-12)
    np.testing.assert_allclose(c, c_ref, rtol=1e-12)
    if not go_backwards:
        np.testing.assert_array_equal(y[0, :2], 0.0)


def test_readout_feeds_previous_output():
    program = verify(readout_program(INPUT, UNITS))
    w, r = RNG.standard_normal((INPUT, UNITS)), RNG.standard_normal((UNITS, UNITS)) * 0.3
    x = RNG.standard_normal((BATCH, STEPS, INPUT))
    s0, r0 = RNG.standard_normal((BATCH, UNITS)), RNG.standard_normal((BATCH, UNITS))
    y, s = interpret(program, x, s0, r0, weights={"W": w, "R": r})
    state, previous, outputs = s0, r0, []
    for t in range(STEPS):
        out = np.tanh(x[:, t] @ w + previous @ r + state)
        state, previous = state + out, out
        outputs.append(out)
    np.testing.assert_allclose(y, np.stack(outputs, 1), rtol=1e-12)
    np.testing.assert_allclose(s, state, rtol=1e-12)


def test_masked_readout_keeps_previous_readout_not_zero_output():
    program = verify(readout_program(INPUT, UNITS, masked=True))
    w, r = RNG.standard_normal((INPUT, UNITS)), RNG.standard_normal((UNITS, UNITS)) * 0.3
    x = RNG.standard_normal((BATCH, STEPS, INPUT))
    s0, r0 = RNG.standard_normal((BATCH, UNITS)), RNG.standard_normal((BATCH, UNITS))
    mask = np.ones((BATCH, STEPS), bool)
    mask[:, 0] = False
    mask[1, 3] = False
    y, s = interpret(program, x, s0, r0, mask, weights={"W": w, "R": r})
    state, readout, output, outputs = s0, r0, np.zeros_like(s0), []
    for t in range(STEPS):
        raw = np.tanh(x[:, t] @ w + readout @ r + state)
        keep = mask[:, t][:, None]
        state = np.where(keep, state + raw, state)
        readout = np.where(keep, raw, readout)
        output = np.where(keep, raw, output)
        outputs.append(output)
    np.testing.assert_allclose(y, np.stack(outputs, 1), rtol=1e-12)
    np.testing.assert_allclose(s, state, rtol=1e-12)
    np.testing.assert_array_equal(y[:, 0], 0.0)


def test_decoder_scan_without_sequences_uses_length():
    """num_sequences=0: the encoded input is a constant seen at every one of `length` steps."""
    program = verify(decoder_program(INPUT, UNITS, length=4))
    y = program.eqns[0].outputs[0]
    assert y.shape == ("B", 4, UNITS)
    weights = {"W": RNG.standard_normal((INPUT, UNITS)), "U": RNG.standard_normal((UNITS,) * 2)}
    e, state = RNG.standard_normal((BATCH, INPUT)), RNG.standard_normal((BATCH, UNITS))
    ys, hT = interpret(program, e, state, weights=weights)
    outputs = []
    for _ in range(4):
        state = np.tanh(e @ weights["W"] + state @ weights["U"])
        outputs.append(state)
    np.testing.assert_allclose(ys, np.stack(outputs, 1), rtol=1e-12)
    np.testing.assert_allclose(hT, state, rtol=1e-12)


def test_scan_without_sequences_requires_length():
    body = ProgramBuilder()
    h = body.input("float32", ("B", 2))
    builder = ProgramBuilder()
    h0 = builder.input("float32", ("B", 2))
    with pytest.raises(ValueError, match="length"):
        builder.scan(body.build([h, h]), states=[h0])


def test_zero_length_sequence_passes_states_through():
    program = lstm_program(INPUT, UNITS, "float64", return_sequences=True)
    weights = random_weights(program)
    _, h0, c0 = lstm_inputs()
    y, h, c = interpret(program, np.zeros((BATCH, 0, INPUT)), h0, c0, weights=weights)
    assert y.shape == (BATCH, 0, UNITS)
    np.testing.assert_array_equal(h, h0)
    last = lstm_program(INPUT, UNITS, "float64")
    y_last = interpret(last, np.zeros((BATCH, 0, INPUT)), h0, c0, weights=weights)[0]
    np.testing.assert_array_equal(y_last, np.zeros((BATCH, UNITS)))


def test_body_type_mismatch_is_rejected():
    body = ProgramBuilder()
    x = body.input("float32", ("B", 3))
    h = body.input("float32", ("B", 5))
    builder = ProgramBuilder()
    xs = builder.input("float32", ("B", "T", 4))
    h0 = builder.input("float32", ("B", 5))
    with pytest.raises(ValueError, match="sequence 0"):
        builder.scan(body.build([h, h]), sequences=[xs], states=[h0])
    del x


def test_bad_inputs_get_clear_errors():
    program = lstm_program(INPUT, UNITS, "float32")
    weights = random_weights(program)
    x, h0, c0 = lstm_inputs("float32")
    with pytest.raises(ValueError, match="expected shape"):
        interpret(program, x[:, :, :2], h0, c0, weights=weights)
    with pytest.raises(ValueError, match="'B'"):
        interpret(program, x, h0[:2], c0, weights=weights)
    with pytest.raises(ValueError, match="does not convert"):
        interpret(program, x.astype("complex64"), h0, c0, weights=weights)
    with pytest.raises(ValueError, match="Missing weight"):
        interpret(program, x, h0, c0, weights={})
    masked = lstm_program(INPUT, UNITS, "float32", masked=True)
    with pytest.raises(ValueError, match=r"Missing input\(s\) \['mask'\]"):
        interpret(masked, x, h0, c0, weights=weights)
    # Non-contiguous input and batch size 0 give the documented results.
    strided = np.asfortranarray(x)
    np.testing.assert_array_equal(interpret(program, strided, h0, c0, weights=weights)[0],
                                  interpret(program, x, h0, c0, weights=weights)[0])
    empty = interpret(program, x[:0], h0[:0], c0[:0], weights=weights)[0]
    assert empty.shape == (0, UNITS)


def test_named_inputs_layer_spec_call():
    program = lstm_program(INPUT, UNITS, "float64")
    weights = random_weights(program)
    x, h0, c0 = lstm_inputs()
    positional = interpret(program, x, h0, c0, weights=weights)
    named = interpret(program, x, initial_state=[h0, c0], weights=weights)
    for a, b in zip(positional, named):
        np.testing.assert_array_equal(a, b)
    # Initial states left out default to zeros, as in Keras.
    defaulted = interpret(program, x, weights=weights)
    explicit = interpret(program, x, 0 * h0, 0 * c0, weights=weights)
    for a, b in zip(defaulted, explicit):
        np.testing.assert_array_equal(a, b)
    assert np.abs(defaulted[0] - positional[0]).max() > 1e-3
    with pytest.raises(ValueError, match="Unknown input 'initial_sate/0'"):
        interpret(program, x, initial_sate=[h0, c0], weights=weights)
