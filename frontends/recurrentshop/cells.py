"""`RNNCell` and its helpers: a Layer that computes ONE step from a functional model."""

import keras

from recurrentshop.recurrent_model import RecurrentModel, as_list


def _declared_input_shape(input_dim, input_shape, batch_input_shape):
    if batch_input_shape is not None:
        return tuple(batch_input_shape[1:]), batch_input_shape[0]
    if input_shape is not None:
        return tuple(input_shape), None
    if input_dim is not None:
        return (input_dim,), None
    return None, None


@keras.saving.register_keras_serializable(package="recurrentshop")
class RNNCell(keras.layers.Layer):
    """Base class of the cells: a layer that runs one step of an RNN.

    Subclasses implement `build_model(input_shape)`, returning a functional
    `keras.Model([x, *states], [y, *new_states])`. The cell can then be stacked in a
    `RecurrentSequential`, or turned into a sequence layer with `get_layer()`.

    Args:
        units: int, the output size (`output_dim` is accepted as an alias).
        input_dim, input_shape, batch_input_shape: optional, the shape of one
            step's input (without the time axis), so that `get_layer()` can be used
            before the cell was called.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: list `[x, *states]`.
        training: Python bool.

    Returns:
        list `[y, *new_states]`.

    Example:

    >>> class MinimalCell(RNNCell):
    ...     def build_model(self, input_shape):
    ...         x = keras.Input(input_shape[1:])
    ...         h = keras.Input((self.units,))
    ...         y = keras.layers.Dense(self.units, activation="tanh")(
    ...             keras.layers.concatenate([x, h]))
    ...         return keras.Model([x, h], [y, y])
    >>> rnn = MinimalCell(8, input_dim=3).get_layer(return_sequences=True)
    """

    def __init__(
        self,
        units=None,
        output_dim=None,
        input_dim=None,
        input_shape=None,
        batch_input_shape=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if units is None:
            units = output_dim
        elif output_dim is not None and output_dim != units:
            raise ValueError(
                f"`units` and its alias `output_dim` disagree. Received: units={units}, "
                f"output_dim={output_dim}"
            )
        if units is not None and (
            not isinstance(units, int) or isinstance(units, bool) or units <= 0
        ):
            raise ValueError(f"`units` must be a positive integer. Received: units={units!r}")
        self.units = units
        self.declared_input_shape, self.declared_batch_size = _declared_input_shape(
            input_dim, input_shape, batch_input_shape
        )
        self.model = None

    @property
    def output_dim(self):
        return self.units

    def build_model(self, input_shape):
        """Returns `keras.Model([x, *states], [y, *new_states])` for inputs of
        `input_shape` (`(batch, ...)`, one step)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement build_model(input_shape), returning a "
            "functional keras.Model([x, *states], [y, *new_states])."
        )

    def build(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(
            input_shape[0], (list, tuple)
        ):
            input_shape = input_shape[0]
        model = self.build_model(tuple(input_shape))
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"{type(self).__name__}.build_model must return a keras.Model; received "
                f"{type(model).__name__}."
            )
        if len(model.inputs) != len(model.outputs):
            raise ValueError(
                f"The step model of {type(self).__name__} has {len(model.inputs)} inputs "
                f"[x, *states] but {len(model.outputs)} outputs [y, *new_states]: every "
                "state needs a new state."
            )
        self.model = model
        self.built = True

    def call(self, inputs, training=None):
        return list(self.model(as_list(inputs), training=training))

    def compute_output_shape(self, input_shape):
        batch_size = input_shape[0][0]
        return [(batch_size, *t.shape[1:]) for t in self.model.outputs]

    def step_output_shape(self, input_shape):
        """Shape of y for one step's input of `input_shape`, without building."""
        if self.model is not None:
            return (input_shape[0], *self.model.outputs[0].shape[1:])
        return (input_shape[0], self.units)

    def _ensure_built(self):
        if self.model is None:
            if self.declared_input_shape is None:
                raise ValueError(
                    f"{type(self).__name__} does not know its input shape yet: pass "
                    "`input_dim=` (or `input_shape=`) to the cell, or call it first."
                )
            self.build((self.declared_batch_size, *self.declared_input_shape))

    @property
    def num_states(self):
        """Number of states of the cell."""
        self._ensure_built()
        return len(self.model.inputs) - 1

    @property
    def state_shape(self):
        """Shapes of the states, batch dimension first (`None`)."""
        self._ensure_built()
        shapes = [tuple(t.shape) for t in self.model.inputs[1:]]
        return shapes[0] if len(shapes) == 1 else shapes

    def get_layer(self, **kwargs):
        """Returns a `RecurrentModel` running this cell over sequences.

        Args:
            **kwargs: `RecurrentModel` arguments (`return_sequences`, `go_backwards`,
                `stateful`, ...).
        """
        self._ensure_built()
        batch_size = self.declared_batch_size
        inputs = [
            keras.Input(batch_shape=(batch_size, *t.shape[1:]), dtype=t.dtype)
            for t in self.model.inputs
        ]
        outputs = self(inputs)
        return RecurrentModel(
            input=inputs[0],
            initial_states=inputs[1:],
            output=outputs[0],
            final_states=outputs[1:],
            **kwargs,
        )

    def get_config(self):
        base_config = super().get_config()
        config = {"units": self.units}
        if self.declared_input_shape is not None:
            config["batch_input_shape"] = (self.declared_batch_size, *self.declared_input_shape)
        return {**base_config, **config}


@keras.saving.register_keras_serializable(package="recurrentshop")
class ExtendedRNNCell(RNNCell):
    """An `RNNCell` with the usual arguments of Keras's recurrent cells.

    Args:
        units: int, output size.
        activation: activation of the candidate state (default `"tanh"`).
        recurrent_activation: activation of the gates (default `"sigmoid"`).
        use_bias: bool.
        kernel_initializer, recurrent_initializer, bias_initializer: initializers of
            the input kernel, the recurrent kernel and the bias.
        kernel_regularizer, recurrent_regularizer, bias_regularizer,
            activity_regularizer: regularizers.
        kernel_constraint, recurrent_constraint, bias_constraint: constraints.
        **kwargs: `RNNCell` arguments.
    """

    def __init__(
        self,
        units=None,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(units, activity_regularizer=activity_regularizer, **kwargs)
        self.activation = keras.activations.get(activation)
        self.recurrent_activation = keras.activations.get(recurrent_activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = keras.regularizers.get(recurrent_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.recurrent_constraint = keras.constraints.get(recurrent_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)

    def weight_arguments(self):
        """Keyword arguments shared with Keras's own recurrent cells."""
        return {
            "activation": self.activation,
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer,
            "recurrent_initializer": self.recurrent_initializer,
            "bias_initializer": self.bias_initializer,
            "kernel_regularizer": self.kernel_regularizer,
            "recurrent_regularizer": self.recurrent_regularizer,
            "bias_regularizer": self.bias_regularizer,
            "kernel_constraint": self.kernel_constraint,
            "recurrent_constraint": self.recurrent_constraint,
            "bias_constraint": self.bias_constraint,
        }

    def get_config(self):
        base_config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config = {
            "activation": keras.activations.serialize(self.activation),
            "recurrent_activation": keras.activations.serialize(self.recurrent_activation),
            "use_bias": self.use_bias,
        }
        for name in (
            "kernel_initializer",
            "recurrent_initializer",
            "bias_initializer",
            "kernel_regularizer",
            "recurrent_regularizer",
            "bias_regularizer",
            "kernel_constraint",
            "recurrent_constraint",
            "bias_constraint",
        ):
            config[name] = serialize(getattr(self, name))
        return {**base_config, **config}


@keras.saving.register_keras_serializable(package="recurrentshop")
class RNNCellFromModel(RNNCell):
    """Wraps any step model `keras.Model([x, *states], [y, *new_states])` as a cell.

    Args:
        model: the functional step model.
        **kwargs: base `Layer` arguments.

    Example:

    >>> cell = RNNCellFromModel(step_model)
    >>> rnn = cell.get_layer(return_sequences=True)
    """

    def __init__(self, model, **kwargs):
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"RNNCellFromModel expects a keras.Model; received {type(model).__name__}."
            )
        kwargs.pop("units", None)
        kwargs.pop("batch_input_shape", None)
        units = model.outputs[0].shape[-1]
        super().__init__(
            units=units, batch_input_shape=tuple(model.inputs[0].shape), **kwargs
        )
        self.step_model = model

    def build_model(self, input_shape):
        return self.step_model

    def get_config(self):
        base_config = super().get_config()
        base_config.pop("units", None)
        base_config.pop("batch_input_shape", None)
        return {**base_config, "model": keras.saving.serialize_keras_object(self.step_model)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return cls(model, **config)
