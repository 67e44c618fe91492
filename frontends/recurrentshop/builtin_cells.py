"""SimpleRNNCell, GRUCell and LSTMCell: the classic cells as step models.

Each step model holds Keras's own cell of the same name, so with identical weights the
numbers equal `keras.layers.SimpleRNN`/`GRU`/`LSTM`, and the weight list is in Keras's
order (kernel, recurrent_kernel, bias): `cell.set_weights(keras_lstm.get_weights())`
works both ways.
"""

import keras

from recurrentshop.cells import ExtendedRNNCell


def _step_model_around(keras_cell, input_shape, num_states, units):
    x = keras.Input(tuple(input_shape[1:]))
    states = [keras.Input((units,)) for _ in range(num_states)]
    output, new_states = keras_cell(x, states if num_states > 1 else states[0])
    if not isinstance(new_states, (list, tuple)):
        new_states = [new_states]
    return keras.Model([x, *states], [output, *new_states])


@keras.saving.register_keras_serializable(package="recurrentshop")
class SimpleRNNCell(ExtendedRNNCell):
    """Fully connected RNN step: `h_t = activation(x_t W + h_{t-1} U + b)`.

    Args:
        units: int, output size.
        **kwargs: `ExtendedRNNCell` arguments (`activation`, `use_bias`,
            initializers, regularizers, constraints) and `input_dim`.

    Example:

    >>> rnn = SimpleRNNCell(16, input_dim=8).get_layer(return_sequences=True)
    """

    def build_model(self, input_shape):
        arguments = self.weight_arguments()
        cell = keras.layers.SimpleRNNCell(self.units, **arguments)
        return _step_model_around(cell, input_shape, 1, self.units)


@keras.saving.register_keras_serializable(package="recurrentshop")
class GRUCell(ExtendedRNNCell):
    """Gated recurrent unit step (Cho et al., 2014), as `keras.layers.GRUCell`.

    Args:
        units: int, output size.
        reset_after: bool, apply the reset gate after the recurrent matmul
            (Keras 3 default `True`; the bias then has shape `(2, 3 * units)`).
        **kwargs: `ExtendedRNNCell` arguments and `input_dim`.

    Example:

    >>> rnn = GRUCell(16, input_dim=8).get_layer()
    """

    def __init__(self, units=None, reset_after=True, **kwargs):
        super().__init__(units, **kwargs)
        self.reset_after = bool(reset_after)

    def build_model(self, input_shape):
        cell = keras.layers.GRUCell(
            self.units,
            recurrent_activation=self.recurrent_activation,
            reset_after=self.reset_after,
            **self.weight_arguments(),
        )
        return _step_model_around(cell, input_shape, 1, self.units)

    def get_config(self):
        return {**super().get_config(), "reset_after": self.reset_after}


@keras.saving.register_keras_serializable(package="recurrentshop")
class LSTMCell(ExtendedRNNCell):
    """Long short-term memory step, as `keras.layers.LSTMCell` (gates i, f, c, o).

    States are `[h, c]`.

    Args:
        units: int, output size.
        unit_forget_bias: bool, initialise the forget gate's bias to one.
        **kwargs: `ExtendedRNNCell` arguments and `input_dim`.

    Example:

    >>> rnn = LSTMCell(16, input_dim=8).get_layer(return_sequences=True)
    """

    def __init__(self, units=None, unit_forget_bias=True, **kwargs):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def build_model(self, input_shape):
        cell = keras.layers.LSTMCell(
            self.units,
            recurrent_activation=self.recurrent_activation,
            unit_forget_bias=self.unit_forget_bias,
            **self.weight_arguments(),
        )
        return _step_model_around(cell, input_shape, 2, self.units)

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}
