"""RHNCell: the recurrent highway network step (Zilly et al., 2017)."""

import keras
from keras import layers

from recurrentshop.cells import ExtendedRNNCell


@keras.saving.register_keras_serializable(package="recurrentshop")
class RHNCell(ExtendedRNNCell):
    """Recurrent highway network step with `recurrence_depth` highway layers.

    With a coupled carry gate, each micro-layer l = 1..L computes

        hh_l = activation(R_h^l s_{l-1} + b_h^l  [+ x_t W_h at l = 1])
        t_l  = recurrent_activation(R_t^l s_{l-1} + b_t^l  [+ x_t W_t at l = 1])
        s_l  = s_{l-1} + t_l * (hh_l - s_{l-1})     # = t hh + (1 - t) s

    with s_0 the previous state; the output and the new state are s_L. The Dense
    layers are named `{cell name}_candidate_recurrent_{l}`, `..._gate_recurrent_{l}`,
    `..._candidate_input` and `..._gate_input`.

    Args:
        units: int, output size.
        recurrence_depth: int >= 1, the number of highway micro-layers per step.
        **kwargs: `ExtendedRNNCell` arguments and `input_dim`.

    Example:

    >>> rnn = RHNCell(16, recurrence_depth=3, input_dim=8).get_layer()
    """

    def __init__(self, units=None, recurrence_depth=1, **kwargs):
        super().__init__(units, **kwargs)
        if (
            not isinstance(recurrence_depth, int)
            or isinstance(recurrence_depth, bool)
            or recurrence_depth < 1
        ):
            raise ValueError(
                "`recurrence_depth` must be a positive integer. Received: "
                f"recurrence_depth={recurrence_depth!r}"
            )
        self.recurrence_depth = recurrence_depth

    def _dense(self, use_bias, recurrent, name):
        return layers.Dense(
            self.units,
            name=f"{self.name}_{name}",
            use_bias=use_bias,
            kernel_initializer=self.recurrent_initializer if recurrent else self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            kernel_regularizer=(
                self.recurrent_regularizer if recurrent else self.kernel_regularizer
            ),
            bias_regularizer=self.bias_regularizer,
            kernel_constraint=self.recurrent_constraint if recurrent else self.kernel_constraint,
            bias_constraint=self.bias_constraint,
        )

    def build_model(self, input_shape):
        x = keras.Input(tuple(input_shape[1:]))
        s_prev = keras.Input((self.units,))
        state = s_prev
        for depth in range(self.recurrence_depth):
            candidate = self._dense(self.use_bias, True, f"candidate_recurrent_{depth}")(state)
            gate = self._dense(self.use_bias, True, f"gate_recurrent_{depth}")(state)
            if depth == 0:
                candidate = layers.add(
                    [candidate, self._dense(False, False, "candidate_input")(x)]
                )
                gate = layers.add([gate, self._dense(False, False, "gate_input")(x)])
            candidate = layers.Activation(self.activation)(candidate)
            gate = layers.Activation(self.recurrent_activation)(gate)
            state = layers.add([state, layers.multiply([gate, layers.subtract([candidate, state])])])
        return keras.Model([x, s_prev], [state, state])

    def get_config(self):
        return {**super().get_config(), "recurrence_depth": self.recurrence_depth}
