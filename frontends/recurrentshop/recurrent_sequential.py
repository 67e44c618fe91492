"""`RecurrentSequential`: a stack of cells and ordinary layers forming one step."""

import keras
from keras import layers

from recurrentshop.cells import RNNCell
from recurrentshop.recurrent_model import RecurrentModel, _shape_text

READOUT_MODES = ("add", "mul", "avg", "max", "readout_only")
_MERGE_LAYERS = {
    "add": layers.Add,
    "mul": layers.Multiply,
    "avg": layers.Average,
    "max": layers.Maximum,
}


def _readout_mode(readout):
    if readout is False or readout is None:
        return None
    if readout is True:
        return "add"
    if isinstance(readout, str) and readout in READOUT_MODES:
        return readout
    raise ValueError(
        "Unknown readout mode. Received: readout="
        f"{readout!r}. Expected False, True or one of {', '.join(map(repr, READOUT_MODES))}."
    )


@keras.saving.register_keras_serializable(package="recurrentshop")
class RecurrentSequential(RecurrentModel):
    """A recurrent layer whose step is a stack of cells and ordinary layers.

    `add()` `RNNCell`s (e.g. `LSTMCell`) and ordinary layers (`Dense`, `Activation`,
    `Dropout`, ...); at each step the input flows through the stack in order, each
    cell reading and updating its own states.

    Args:
        state_sync: bool. All cells share one set of states: each cell receives the
            states the previous cell produced. The cells must have the same states
            (number and shapes).
        readout: `False`, `True` (same as `"add"`), `"add"`, `"mul"`, `"avg"`,
            `"max"` or `"readout_only"`. The previous step's output is merged with
            the input (which must then have the output's shape), or replaces it
            (`"readout_only"`).
        readout_activation: activation applied to the readout before merging.
        teacher_force: bool. In training, the ground truth of step t-1 replaces
            the readout at step t (requires `readout`).
        decode, output_length, return_states, state_initializer, return_sequences,
        go_backwards, stateful, unroll, backend: as in `RecurrentModel`.
        **kwargs: base `Layer` arguments.

    Call arguments:
        As `RecurrentModel`. `initial_state` lists the states of every cell in
        stack order (one set only with `state_sync`).

    Example:

    >>> rnn = RecurrentSequential(return_sequences=True)
    >>> rnn.add(LSTMCell(32))
    >>> rnn.add(keras.layers.Dropout(0.2))
    >>> rnn.add(LSTMCell(16))
    >>> rnn(np.zeros((4, 10, 8), "float32")).shape
    TensorShape([4, 10, 16])
    """

    def __init__(
        self,
        state_sync=False,
        decode=False,
        output_length=None,
        return_states=False,
        readout=False,
        readout_activation="linear",
        teacher_force=False,
        state_initializer=None,
        **kwargs,
    ):
        for name in ("input", "output", "initial_states", "final_states", "readout_input"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"RecurrentSequential builds its step from the layers you add(); it does "
                    f"not take `{name}`. Use RecurrentModel for a hand-written step model."
                )
        self.readout_mode = _readout_mode(readout)
        if teacher_force and self.readout_mode is None:
            raise ValueError(
                "`teacher_force=True` requires a readout: pass readout=True (or a mode "
                "such as 'add' or 'readout_only')."
            )
        super().__init__(
            decode=decode,
            output_length=output_length,
            return_states=return_states,
            teacher_force=teacher_force,
            state_initializer=state_initializer,
            **kwargs,
        )
        self.state_sync = bool(state_sync)
        self.readout = self.readout_mode is not None
        self.readout_activation = keras.activations.get(readout_activation)
        self.stack = []

    def _builds_step_model_lazily(self):
        return True

    def add(self, layer):
        """Appends a cell or an ordinary layer to the step."""
        if self.model is not None:
            raise ValueError(f"Layer {self.name!r} is already built: add() layers before use.")
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                f"RecurrentSequential.add expects a keras Layer or an RNNCell; received "
                f"{type(layer).__name__}."
            )
        self.stack.append(layer)
        return self

    # ------------------------------------------------------------- step model
    def _output_shape_of_stack(self, step_shape):
        shape = (None, *step_shape)
        for layer in self.stack:
            if isinstance(layer, RNNCell):
                shape = layer.step_output_shape(shape)
            else:
                shape = tuple(layer.compute_output_shape(shape))
        return tuple(shape[1:])

    def _readout_shape(self, step_shape):
        output_shape = self._output_shape_of_stack(step_shape)
        if self.readout_mode == "readout_only":
            if self._output_shape_of_stack(output_shape) != output_shape:
                raise ValueError(
                    f"With readout='readout_only' the stack reads its own output, so it "
                    f"must map shape {_shape_text(output_shape)} to itself; it maps it to "
                    f"{_shape_text(self._output_shape_of_stack(output_shape))}."
                )
        elif output_shape != tuple(step_shape):
            raise ValueError(
                f"readout={self.readout_mode!r} merges the previous output with the input, "
                f"so their shapes must match: the input is {_shape_text(step_shape)} per "
                f"step, the output {_shape_text(output_shape)}. Use readout='readout_only' "
                "or make the last layer's size equal to the input's."
            )
        return output_shape

    def _ensure_step_model(self, input_shape):
        if self.model is not None:
            return
        if not self.stack:
            raise ValueError(f"Layer {self.name!r} is empty: add() at least one layer first.")
        step_shape = tuple(input_shape[1:]) if self.decode else tuple(input_shape[2:])
        if any(dim is None for dim in step_shape):
            raise ValueError(
                f"Layer {self.name!r} needs a known per-step input shape; received input "
                f"shape {_shape_text(input_shape)}."
            )
        x = keras.Input(step_shape)
        readout_input = None
        hidden = x
        if self.readout:
            readout_input = keras.Input(self._readout_shape(step_shape))
            readout = readout_input
            if self.readout_activation is not keras.activations.linear:
                readout = layers.Activation(self.readout_activation)(readout)
            if self.readout_mode == "readout_only":
                hidden = readout
            else:
                hidden = _MERGE_LAYERS[self.readout_mode]()([x, readout])
        initial_states, final_states = [], []
        shared_states = None
        for layer in self.stack:
            if not isinstance(layer, RNNCell):
                hidden = layer(hidden)
                continue
            if not layer.built:
                layer.build((None, *hidden.shape[1:]))
            state_shapes = [tuple(t.shape[1:]) for t in layer.model.inputs[1:]]
            if self.state_sync:
                if shared_states is None:
                    shared_states = [keras.Input(shape) for shape in state_shapes]
                    initial_states = list(shared_states)
                    current_states = list(shared_states)
                current_shapes = [tuple(t.shape[1:]) for t in current_states]
                if state_shapes != current_shapes:
                    raise ValueError(
                        "state_sync=True needs every cell to have the same states, but cell "
                        f"{layer.name!r} has states {state_shapes} while the stack carries "
                        f"{current_shapes}. Use cells of one type and size, or "
                        "state_sync=False."
                    )
                outputs = layer([hidden, *current_states])
                current_states = outputs[1:]
            else:
                cell_states = [keras.Input(shape) for shape in state_shapes]
                initial_states += cell_states
                outputs = layer([hidden, *cell_states])
                final_states += outputs[1:]
            hidden = outputs[0]
        if self.state_sync and shared_states is not None:
            final_states = list(current_states)
        if not initial_states and not self.readout:
            raise ValueError(
                f"Layer {self.name!r} has no recurrent state: add an RNNCell or use a "
                "readout."
            )
        self._set_step_graph(x, hidden, initial_states, final_states, readout_input)

    # ---------------------------------------------------------- serialisation
    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update(
            {
                "layers": [keras.saving.serialize_keras_object(layer) for layer in self.stack],
                "state_sync": self.state_sync,
                "readout": self.readout_mode or False,
                "readout_activation": keras.activations.serialize(self.readout_activation),
                **self._loop_config(),
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        from recurrentshop.recurrent_model import _deserialize_initializers

        config = dict(config)
        stack = [
            keras.saving.deserialize_keras_object(layer, custom_objects=custom_objects)
            for layer in config.pop("layers")
        ]
        config["state_initializer"] = _deserialize_initializers(config.get("state_initializer"))
        layer = cls(**config)
        for item in stack:
            layer.add(item)
        return layer
