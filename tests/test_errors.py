"""Every user error gets an exception of the right type whose message says what was
received and how to fix it."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from recurrentshop import (GRUCell, LSTMCell, RecurrentModel, RecurrentSequential,
                           RHNCell, RNNCell, SimpleRNNCell, get_slices)


def _seq(batch=2, time=7, features=5):
    return np.zeros((batch, time, features), "float32")


def _step(states=1, readout=False):
    """A step model with input (5,), `states` states of (10,), optional readout."""
    x_t = keras.Input((5,))
    state_inputs = [keras.Input((10,)) for _ in range(states)]
    readout_input = keras.Input((10,)) if readout else None
    parts = [x_t, *state_inputs] + ([readout_input] if readout else [])
    joined = layers.concatenate(parts) if len(parts) > 1 else x_t
    h_t = layers.Dense(10, activation="tanh")(joined)
    return dict(input=x_t, output=h_t, initial_states=state_inputs,
                final_states=[h_t] * states, readout_input=readout_input)


def _rnn(states=1, readout=False, **kwargs):
    return RecurrentModel(**_step(states, readout), **kwargs)


# ------------------------------------------------------------ construction
def test_initial_and_final_state_counts_differ():
    step = _step(states=2)
    step["final_states"] = step["final_states"][:1]
    with pytest.raises(ValueError, match="received 2 initial_states and 1 final_states"):
        RecurrentModel(**step)


def test_output_states_alias_counts_too():
    step = _step(states=1)
    final = step.pop("final_states")
    with pytest.raises(ValueError, match="received 1 initial_states and 2 final_states"):
        RecurrentModel(output_states=final * 2, **step)


def test_final_and_output_states_both_given():
    step = _step()
    with pytest.raises(ValueError, match="either `final_states` or its alias"):
        RecurrentModel(output_states=step["final_states"], **step)


def test_state_that_changes_shape():
    step = _step()
    step["final_states"] = [layers.Dense(3)(step["output"])]
    with pytest.raises(ValueError, match=r"State 0 changes shape.*\(None, 10\).*\(None, 3\)"):
        RecurrentModel(**step)


def test_step_model_without_any_state():
    x_t = keras.Input((5,))
    with pytest.raises(ValueError, match="no recurrent state.*initial_states"):
        RecurrentModel(input=x_t, output=layers.Dense(3)(x_t))


def test_missing_input_or_output():
    with pytest.raises(ValueError, match="needs the step model's `input` and `output`"):
        RecurrentModel()
    with pytest.raises(ValueError, match="needs both `input` and `output`"):
        RecurrentModel(input=keras.Input((5,)))


def test_teacher_force_without_readout_recurrent_model():
    with pytest.raises(ValueError, match="teacher_force=True` requires a `readout_input`"):
        _rnn(teacher_force=True)


def test_teacher_force_without_readout_recurrent_sequential():
    with pytest.raises(ValueError, match="teacher_force=True` requires a readout: pass "
                                         "readout=True"):
        RecurrentSequential(teacher_force=True)


def test_readout_input_with_wrong_shape():
    step = _step()
    step["readout_input"] = keras.Input((4,))
    with pytest.raises(ValueError, match=r"readout_input is \(None, 4\), output is "
                                         r"\(None, 10\)"):
        RecurrentModel(**step)


@pytest.mark.parametrize("output_length", [None, 0, -3, 2.5, True])
def test_decode_without_valid_output_length(output_length):
    with pytest.raises(ValueError, match=f"needs `output_length`.*Received: "
                                         f"output_length={output_length!r}"):
        _rnn(decode=True, output_length=output_length)
    with pytest.raises(ValueError, match="needs `output_length`"):
        RecurrentSequential(decode=True, output_length=output_length)


def test_state_with_unknown_non_batch_dimension():
    x_t = keras.Input((5,))
    h_tm1 = keras.Input((None,))
    with pytest.raises(ValueError, match=r"State 0 has an unknown non-batch dimension: "
                                         r"\(None, None\).*keras.Input\(\(10,\)\)"):
        RecurrentModel(input=x_t, output=x_t, initial_states=[h_tm1], final_states=[h_tm1])


def test_unknown_backend_name():
    with pytest.raises(ValueError, match=r"Unknown backend. Received: backend='fast'.*"
                                         r"'auto', 'keras'"):
        _rnn(backend="fast")
    with pytest.raises(ValueError, match="Unknown backend"):
        LSTMCell(4, input_dim=5).get_layer(backend="cuda")


def test_cuda_backend_without_a_gpu_says_what_to_use():
    from rshop_ir.kernels.cuda.device import cuda_available

    layer = _rnn(backend="numba-cuda")       # accepted: the GPU is looked for at a call
    assert RecurrentSequential(backend="numba-cuda").backend == "numba-cuda"
    x = np.random.default_rng(0).standard_normal((2, 7, 5)).astype("float32")
    if cuda_available()[0]:  # a GPU (or the simulator): the kernel runs
        reference = _rnn(backend="keras")
        reference.build(x.shape)
        layer.build(x.shape)
        reference.set_weights(layer.get_weights())
        np.testing.assert_allclose(layer(x), reference(x), atol=1e-4)
        return
    with pytest.raises(ValueError, match="(?s)backend='numba-cuda', but no CUDA GPU.*"
                                         "backend='auto'.*'numba-cpu' or 'keras'"):
        layer(x)
    np.testing.assert_allclose(layer(x, training=True), _same_weights(layer)(x),
                               atol=1e-6)  # training never needs the GPU


def _same_weights(layer):
    reference = _rnn(backend="keras")
    reference.build((None, 7, 5))
    reference.set_weights(layer.get_weights())
    return reference


@pytest.mark.parametrize("backend", ["auto", "keras", "numba-cpu"])
def test_available_backends_are_accepted(backend):
    assert _rnn(backend=backend)(_seq()).shape == (2, 10)


# ------------------------------------------------------- RecurrentSequential
def test_unknown_readout_mode():
    with pytest.raises(ValueError, match=r"Unknown readout mode. Received: readout='sum'.*"
                                         r"'add', 'mul', 'avg', 'max', 'readout_only'"):
        RecurrentSequential(readout="sum")


def test_readout_mode_with_mismatched_shapes():
    rnn = RecurrentSequential(readout="add")
    rnn.add(SimpleRNNCell(7))
    with pytest.raises(ValueError, match=r"readout='add'.*the input is \(5\) per step, the "
                                         r"output \(7\).*readout='readout_only'"):
        rnn(keras.Input((7, 5)))


def test_state_sync_with_heterogeneous_cells():
    rnn = RecurrentSequential(state_sync=True)
    rnn.add(LSTMCell(4))
    rnn.add(GRUCell(4))
    with pytest.raises(ValueError, match=r"state_sync=True needs every cell to have the same "
                                         r"states.*\[\(4,\)\].*\[\(4,\), \(4,\)\].*"
                                         r"state_sync=False"):
        rnn(keras.Input((7, 5)))


def test_state_sync_with_cells_of_different_sizes():
    rnn = RecurrentSequential(state_sync=True)
    rnn.add(SimpleRNNCell(4))
    rnn.add(SimpleRNNCell(6))
    with pytest.raises(ValueError, match=r"states \[\(6,\)\] while the stack carries "
                                         r"\[\(4,\)\]"):
        rnn(_seq())


def test_empty_stack_and_stateless_stack():
    with pytest.raises(ValueError, match="is empty: add"):
        RecurrentSequential()(_seq())
    rnn = RecurrentSequential()
    rnn.add(layers.Dense(3))
    with pytest.raises(ValueError, match="no recurrent state: add an RNNCell"):
        rnn(_seq())


def test_sequential_rejects_step_tensors_and_non_layers():
    with pytest.raises(ValueError, match="does not take `input`"):
        RecurrentSequential(input=keras.Input((5,)))
    with pytest.raises(TypeError, match="received int"):
        RecurrentSequential().add(3)


def test_add_after_build():
    rnn = RecurrentSequential()
    rnn.add(SimpleRNNCell(3))
    rnn(_seq())
    with pytest.raises(ValueError, match="already built"):
        rnn.add(SimpleRNNCell(3))


# ------------------------------------------------------------------ calling
def test_wrong_input_feature_size():
    with pytest.raises(ValueError, match=r"expects inputs of shape \(batch, time, 5\).*"
                                         r"received an input of shape \(None, 7, 6\)"):
        _rnn()(keras.Input((7, 6)))
    with pytest.raises(ValueError, match=r"received an input of shape \(2, 7, 6\)"):
        _rnn()(_seq(features=6))


def test_sequence_given_to_a_decoder():
    with pytest.raises(ValueError, match=r"expects inputs of shape \(batch, 5\).*\(2, 7, 5\).*"
                                         r"not a sequence"):
        _rnn(decode=True, output_length=3)(_seq())


def test_unroll_with_unknown_number_of_steps():
    rnn = _rnn(unroll=True)
    traced = tf.function(rnn, input_signature=[tf.TensorSpec((None, None, 5))])
    with pytest.raises(ValueError, match="unroll=True but the number of time steps is "
                                         r"unknown.*keras.Input\(\(7, 5\)\).*unroll=False"):
        traced(_seq())
    assert rnn(_seq()).shape == (2, 10)  # a known length unrolls fine


def test_wrong_number_of_initial_state_tensors():
    rnn = _rnn(states=2)
    h = np.zeros((2, 10), "float32")
    with pytest.raises(ValueError, match=r"has 2 state\(s\); received 1 initial_state"):
        rnn(_seq(), initial_state=[h])
    with pytest.raises(ValueError, match=r"has 2 state\(s\); received 3 initial_state"):
        rnn(_seq(), initial_state=[h, h, h])


def test_teacher_forcing_in_training_without_ground_truth():
    rnn = _rnn(readout=True, teacher_force=True)
    with pytest.raises(ValueError, match="teacher_force=True: in training it needs the "
                                         "`ground_truth` call argument"):
        rnn(_seq(), training=True)
    assert rnn(_seq(), training=False).shape == (2, 10)  # inference needs none

    seq = RecurrentSequential(readout=True, teacher_force=True)
    seq.add(SimpleRNNCell(5))
    with pytest.raises(ValueError, match="`ground_truth`"):
        seq(_seq(), training=True)


def test_stateful_with_unknown_batch_size():
    with pytest.raises(ValueError, match=r"is stateful, so its batch size must be known: "
                                         r"received input shape \(None, 7, 5\).*batch_shape"):
        _rnn(stateful=True)(keras.Input((7, 5)))
    fixed = _rnn(stateful=True)(keras.Input(batch_shape=(2, 7, 5)))
    assert fixed.shape == (2, 10)


def test_reset_states_errors():
    with pytest.raises(ValueError, match="is not stateful: pass stateful=True"):
        _rnn().reset_states()
    rnn = _rnn(stateful=True)
    rnn(_seq())
    with pytest.raises(ValueError, match=r"expects 1 state values; received 2"):
        rnn.reset_states([np.zeros((2, 10)), np.zeros((2, 10))])
    with pytest.raises(ValueError, match=r"shape \(3, 10\) does not fit the state of shape "
                                         r"\(2, 10\)"):
        rnn.reset_states([np.zeros((3, 10))])


# -------------------------------------------------------------------- cells
def test_get_slices_with_indivisible_size():
    with pytest.raises(ValueError, match=r"divisible by n=3.*Received: x.shape=\(None, 10\)"):
        get_slices(keras.Input((10,)), 3)
    with pytest.raises(ValueError, match="positive integer. Received: n=0"):
        get_slices(keras.Input((10,)), 0)
    assert [s.shape for s in get_slices(keras.Input((10,)), 2)] == [(None, 5), (None, 5)]


def test_cell_without_build_model():
    class NoStep(RNNCell):
        pass

    with pytest.raises(NotImplementedError, match="NoStep must implement build_model"):
        NoStep(4, input_dim=3).get_layer()


def test_cell_build_model_returning_something_else():
    class NotAModel(RNNCell):
        def build_model(self, input_shape):
            return keras.Input((4,))

    with pytest.raises(TypeError, match="must return a keras.Model; received KerasTensor"):
        NotAModel(4, input_dim=3).get_layer()


def test_cell_step_model_with_a_state_missing_its_new_value():
    class Lopsided(RNNCell):
        def build_model(self, input_shape):
            x = keras.Input(input_shape[1:])
            h = keras.Input((self.units,))
            y = layers.Dense(self.units)(layers.concatenate([x, h]))
            return keras.Model([x, h], [y])

    with pytest.raises(ValueError, match=r"has 2 inputs \[x, \*states\] but 1 outputs"):
        Lopsided(4, input_dim=3).get_layer()


def test_cell_without_known_input_shape():
    with pytest.raises(ValueError, match="does not know its input shape yet: pass "
                                         "`input_dim=`"):
        LSTMCell(4).get_layer()


@pytest.mark.parametrize("units", [0, -1, 2.5, "8"])
def test_cell_with_bad_units(units):
    with pytest.raises(ValueError, match=f"positive integer. Received: units={units!r}"):
        SimpleRNNCell(units)


def test_units_and_output_dim_disagree():
    with pytest.raises(ValueError, match="units=4, output_dim=5"):
        SimpleRNNCell(4, output_dim=5)
    assert SimpleRNNCell(output_dim=5).units == 5


@pytest.mark.parametrize("depth", [0, -2, 1.5])
def test_rhn_bad_recurrence_depth(depth):
    with pytest.raises(ValueError, match=f"Received: recurrence_depth={depth!r}"):
        RHNCell(4, recurrence_depth=depth)
