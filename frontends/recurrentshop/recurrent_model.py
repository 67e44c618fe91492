"""`RecurrentModel`: a Keras functional model of ONE timestep becomes a sequence layer."""

import keras
from keras import ops

from recurrentshop import compat
from recurrentshop.backends import check_backend_name


def as_list(value):
    """`None` -> `[]`, a single tensor -> `[tensor]`, a list or tuple -> a list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _shape_text(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


@keras.saving.register_keras_serializable(package="recurrentshop")
class RecurrentModel(keras.layers.Layer):
    """Turns a Keras functional model of one timestep into a recurrent layer.

    The step model maps the input at time t and the states at time t-1 to the output
    and the states at time t. Optionally it also reads the previous step's output
    (readout), which during training may be replaced by the ground truth (teacher
    forcing). The reference time loop is Keras's own RNN loop, so gradients, masking,
    `go_backwards`, `unroll` and `stateful` behave as in `keras.layers.RNN`; at
    inference the layer runs a compiled `rshop_ir` kernel instead where it can (see
    `backend`), with the same numbers.

    Args:
        input: KerasTensor, the step model's input at time t, shape `(batch, ...)`.
        output: KerasTensor, the step model's output at time t.
        initial_states: KerasTensor or list of KerasTensors: the states at time t-1
            (inputs of the step model, made with `keras.Input`).
        final_states: KerasTensor or list: the states at time t, one per initial
            state, with the same shapes. `output_states` is accepted as an alias.
        readout_input: optional KerasTensor (a `keras.Input` with the output's shape):
            receives the previous step's output. Its value before the first step is
            zeros, or the `initial_readout` call argument.
        teacher_force: bool. During training, the ground truth of step t-1 (the
            `ground_truth` call argument) replaces the readout at step t. At inference
            the model's own output is fed back. Requires `readout_input`.
        decode: bool. The layer input `(batch, ...)` is not a sequence: it is seen
            whole at every one of `output_length` steps (the input may itself be a
            sequence, e.g. the memory of an attention decoder).
        output_length: int, number of steps when `decode=True`.
        return_states: bool. Return `[output, *final_states]`.
        state_initializer: one initializer (name, instance or callable) for all
            states, or a list with one per state (missing entries mean zeros). Used
            when no `initial_state` is passed.
        return_sequences: bool. Return the output of every step, else the last one.
        go_backwards: bool. Process the sequence backwards; with
            `return_sequences=True` the outputs come in processing order.
        stateful: bool. The final states of a batch are the initial states of the
            next one. Requires a fixed batch size.
        unroll: bool. Unroll the time loop (requires a known number of steps).
        backend: `"auto"` (default): a compiled kernel at inference (traced and
            compiled at the first inference call; CUDA on a real GPU, else the CPU)
            where the step can be compiled, the Keras reference otherwise (reason in
            `fallback_reason`, logged once at INFO on the "rshop_ir" logger) and
            always when training, stateful or masked. `"keras"`: always the
            reference. `"numba-cpu"` / `"numba-cuda"`: like "auto" on that target,
            but a step that cannot be compiled (or no GPU) raises a `ValueError`.
        **kwargs: base `Layer` arguments (`name`, `dtype`, `trainable`, ...).

    Call arguments:
        inputs: `(batch, time, ...)`, or `(batch, ...)` when `decode=True`.
        initial_state: optional list of initial state tensors.
        initial_readout: optional tensor, the readout before the first step.
        ground_truth: `(batch, time, *output_shape)`; with `teacher_force=True` it
            is required in training and ignored at inference.
        mask: optional boolean `(batch, time)`; masked steps keep the previous
            states and output.
        training: Python bool.

    Output shape:
        `(batch, time, *output_shape)` with `return_sequences`, else
        `(batch, *output_shape)`; with `return_states`, a list followed by the final
        states.

    Example:

    >>> x_t = keras.Input((5,))
    >>> h_tm1 = keras.Input((10,))
    >>> h_t = keras.layers.Activation("tanh")(keras.layers.add(
    ...     [keras.layers.Dense(10)(x_t), keras.layers.Dense(10, use_bias=False)(h_tm1)]))
    >>> rnn = RecurrentModel(input=x_t, initial_states=[h_tm1], output=h_t,
    ...                      final_states=[h_t])
    >>> rnn(np.zeros((2, 7, 5), "float32")).shape
    TensorShape([2, 10])
    """

    def __init__(
        self,
        input=None,
        output=None,
        initial_states=None,
        final_states=None,
        readout_input=None,
        teacher_force=False,
        decode=False,
        output_length=None,
        return_states=False,
        state_initializer=None,
        return_sequences=False,
        go_backwards=False,
        stateful=False,
        unroll=False,
        backend="auto",
        output_states=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if output_states is not None:
            if final_states is not None:
                raise ValueError(
                    "Pass either `final_states` or its alias `output_states`, not both."
                )
            final_states = output_states
        self.teacher_force = bool(teacher_force)
        self.decode = bool(decode)
        self.output_length = output_length
        self.return_states = bool(return_states)
        self.return_sequences = bool(return_sequences)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        self.unroll = bool(unroll)
        self.backend = check_backend_name(backend)
        self.state_initializer = state_initializer
        self.supports_masking = True
        # Attributes `keras.layers.Bidirectional` reads.
        self.zero_output_for_mask = False
        self.state_variables = None
        self.model = None
        # The compiled path (see compiled_backend.py), built at the first inference
        # call; `fallback_reason` says why the layer runs in Keras instead.
        self._compiled_path = None
        self.fallback_reason = None
        if self.decode:
            if (
                not isinstance(output_length, int)
                or isinstance(output_length, bool)
                or output_length <= 0
            ):
                raise ValueError(
                    "`decode=True` needs `output_length`, the number of steps to decode, "
                    f"a positive integer. Received: output_length={output_length!r}"
                )
        if input is not None or output is not None:
            if input is None or output is None:
                raise ValueError(
                    "RecurrentModel needs both `input` and `output` (KerasTensors of the "
                    f"step model). Received: input={input!r}, output={output!r}"
                )
            self._set_step_graph(
                input, output, as_list(initial_states), as_list(final_states), readout_input
            )
        elif not self._builds_step_model_lazily():
            raise ValueError(
                "RecurrentModel needs the step model's `input` and `output` KerasTensors "
                "(and usually `initial_states` and `final_states`)."
            )

    # ----------------------------------------------------------------- step model
    def _builds_step_model_lazily(self):
        """Subclasses that build their step model in `build()` return True."""
        return False

    def _set_step_graph(self, input, output, initial_states, final_states, readout_input):
        """Checks the step graph and wraps it into one functional `keras.Model`."""
        if len(initial_states) != len(final_states):
            raise ValueError(
                "Every initial state needs a final state: received "
                f"{len(initial_states)} initial_states and {len(final_states)} "
                "final_states (alias output_states). Pass one final state per "
                "initial state, in the same order."
            )
        if not initial_states and readout_input is None:
            raise ValueError(
                "The step model has no recurrent state: received no initial_states and "
                "no readout_input. Pass initial_states=[...] and final_states=[...] "
                "(keras.Input tensors of the states at t-1 and their values at t), or a "
                "readout_input."
            )
        for index, (initial, final) in enumerate(zip(initial_states, final_states)):
            if tuple(initial.shape[1:]) != tuple(final.shape[1:]):
                raise ValueError(
                    f"State {index} changes shape over one step: initial state "
                    f"{_shape_text(initial.shape)}, final state {_shape_text(final.shape)}."
                    " A state must keep its shape from step to step."
                )
            if any(dim is None for dim in initial.shape[1:]):
                raise ValueError(
                    f"State {index} has an unknown non-batch dimension: "
                    f"{_shape_text(initial.shape)}. Give the state's `keras.Input` a "
                    "fully known shape, e.g. keras.Input((10,))."
                )
        if self.teacher_force and readout_input is None:
            raise ValueError(
                "`teacher_force=True` requires a `readout_input`: the ground truth of "
                "step t-1 replaces the readout at step t. Pass readout_input=..."
            )
        if readout_input is not None and tuple(readout_input.shape[1:]) != tuple(
            output.shape[1:]
        ):
            raise ValueError(
                "`readout_input` must have the output's shape: readout_input is "
                f"{_shape_text(readout_input.shape)}, output is {_shape_text(output.shape)}."
            )
        inputs = [input, *initial_states] + ([readout_input] if readout_input is not None else [])
        step_model = keras.Model(
            inputs=inputs, outputs=[output, *final_states], name=f"{self.name}_step"
        )
        self._set_step_model(step_model, len(initial_states), readout_input is not None)

    def _set_step_model(self, step_model, num_states, readout):
        """Installs a step model `[x, *states, (readout)] -> [y, *final_states]`."""
        self.model = step_model
        self._num_states = num_states
        self.readout = bool(readout)
        initializers = self.state_initializer
        if not isinstance(initializers, (list, tuple)):
            initializers = [initializers] * num_states
        initializers = list(initializers) + [None] * (num_states - len(initializers))
        self._state_initializers = [
            keras.initializers.get(init if init is not None else "zeros")
            for init in initializers[:num_states]
        ]

    @property
    def num_states(self):
        """Number of recurrent states (the readout is not counted)."""
        if self.model is None:
            raise ValueError(
                f"Layer {self.name!r} has no step model yet: build it first "
                "(call it on an input)."
            )
        return self._num_states

    @property
    def step_input_shape(self):
        return tuple(self.model.inputs[0].shape[1:])

    @property
    def state_shapes(self):
        """Shapes of the states, without the batch dimension."""
        return [tuple(t.shape[1:]) for t in self.model.inputs[1 : 1 + self.num_states]]

    @property
    def output_shape_per_step(self):
        return tuple(self.model.outputs[0].shape[1:])

    @property
    def return_state(self):
        """Alias of `return_states`, the name `keras.layers.Bidirectional` reads."""
        return self.return_states

    @property
    def states(self):
        """The state variables of a stateful layer, else None (as
        `keras.layers.RNN.states`; `keras.layers.Bidirectional` reads it when it
        returns states)."""
        return self.state_variables

    # ------------------------------------------------------------------- building
    def _ensure_step_model(self, input_shape):
        """Hook for subclasses that need the input shape to build the step model."""

    def _check_input_shape(self, input_shape):
        expected = self.step_input_shape
        received = tuple(input_shape[1:]) if self.decode else tuple(input_shape[2:])
        if len(input_shape) != len(expected) + (1 if self.decode else 2) or any(
            e is not None and r is not None and e != r for e, r in zip(expected, received)
        ):
            layout = "(batch, " if self.decode else "(batch, time, "
            expected_text = layout + ", ".join(
                "None" if d is None else str(d) for d in expected
            ) + ")"
            raise ValueError(
                f"Layer {self.name!r} expects inputs of shape {expected_text} (its step "
                f"model's input is {_shape_text((None, *expected))}); received an input of "
                f"shape {_shape_text(input_shape)}."
                + (" With decode=True the input is not a sequence: it is fed whole "
                   "at every step." if self.decode else "")
            )

    def build(self, input_shape, *args, **kwargs):
        input_shape = tuple(input_shape)
        self._ensure_step_model(input_shape)
        self._check_input_shape(input_shape)
        if self.unroll and not self.decode and input_shape[1] is None:
            raise ValueError(self._unknown_length_message())
        if self.stateful and self.state_variables is None:
            batch_size = input_shape[0]
            if batch_size is None:
                raise ValueError(
                    f"Layer {self.name!r} is stateful, so its batch size must be known: "
                    f"received input shape {_shape_text(input_shape)}. Use "
                    "keras.Input(batch_shape=(batch, ...)) or pass `batch_size`."
                )
            self._create_state_variables(batch_size)
        self.built = True

    @compat.no_automatic_dependency_tracking
    def _create_state_variables(self, batch_size):
        values = self._initial_state_values(batch_size)
        self.state_variables = [
            keras.Variable(value, trainable=False, dtype=self.variable_dtype, name="rnn_state")
            for value in values
        ]

    def _initial_state_values(self, batch_size):
        """Initial states (and readout) when the caller gives none."""
        values = [
            initializer(shape=(batch_size, *shape), dtype=self.compute_dtype)
            for initializer, shape in zip(self._state_initializers, self.state_shapes)
        ]
        if self.readout:
            values.append(ops.zeros((batch_size, *self.output_shape_per_step), self.compute_dtype))
        return values

    def reset_states(self, values=None):
        """Resets the states of a stateful layer.

        Args:
            values: optional list of arrays, one per state (and one more for the
                readout when the layer has one); by default the states go back to
                their initial values (`state_initializer`, zeros by default).
        """
        if not self.stateful:
            raise ValueError(f"Layer {self.name!r} is not stateful: pass stateful=True.")
        if self.state_variables is None:
            return
        if values is None:
            values = self._initial_state_values(self.state_variables[0].shape[0])
        values = as_list(values)
        expected = len(self.state_variables)
        if len(values) not in (expected, self.num_states):
            raise ValueError(
                f"reset_states expects {self.num_states} state values"
                + (f" (or {expected} with the readout)" if self.readout else "")
                + f"; received {len(values)}."
            )
        for variable, value in zip(self.state_variables, values):
            if tuple(ops.shape(value)) != tuple(variable.shape):
                raise ValueError(
                    f"State value of shape {tuple(ops.shape(value))} does not fit the state "
                    f"of shape {tuple(variable.shape)}."
                )
            variable.assign(ops.cast(value, variable.dtype))

    def reset_state(self):
        self.reset_states()

    # ---------------------------------------------------------------- the loop
    def call(
        self,
        inputs,
        initial_state=None,
        initial_readout=None,
        ground_truth=None,
        mask=None,
        training=None,
    ):
        self._check_input_shape(tuple(inputs.shape))
        batch_size = ops.shape(inputs)[0]
        if self.decode:
            num_steps = self.output_length
            mask = None
        else:
            num_steps = inputs.shape[1]
        if self.unroll and num_steps is None:
            raise ValueError(self._unknown_length_message())
        states = self._initial_states(batch_size, initial_state, initial_readout)
        if self.backend != "keras" and (training is None or training is False) and (
                mask is None):
            from recurrentshop.compiled_backend import compiled_path_for

            compiled = compiled_path_for(self)
            if compiled is not None:
                readout = states[self.num_states] if self.readout else None
                return compiled.run(self, inputs, states[:self.num_states], readout,
                                    self.compute_dtype)
        teacher_forcing = bool(training) and self.teacher_force
        if teacher_forcing and ground_truth is None:
            raise ValueError(
                f"Layer {self.name!r} has teacher_force=True: in training it needs the "
                "`ground_truth` call argument, shape (batch, time, *output_shape)."
            )

        if self.decode:
            sequences = [ops.zeros((batch_size, num_steps, 1), self.compute_dtype)]
            constants = [inputs]
        else:
            sequences = [inputs]
            constants = []
        if teacher_forcing:
            sequences.append(self._shifted_ground_truth(ground_truth, states[-1]))

        num_states = self.num_states
        model = self.model
        readout = self.readout
        decode = self.decode

        def step(step_inputs, carried):
            states_t = list(carried[:num_states])
            step_x = carried[len(carried) - 1] if decode else step_inputs[0]
            step_inputs_list = [step_x, *states_t]
            if readout:
                step_inputs_list.append(
                    step_inputs[-1] if teacher_forcing else carried[num_states]
                )
            outputs = model(step_inputs_list, training=training)
            output = outputs[0]
            new_states = list(outputs[1:])
            if readout:
                new_states.append(output)
            return output, new_states

        last_output, outputs, final_states = compat.backend_rnn(
            step,
            sequences,
            states,
            go_backwards=self.go_backwards,
            mask=mask,
            constants=constants,
            unroll=self.unroll,
            input_length=num_steps,
            return_all_outputs=self.return_sequences,
        )
        if self.stateful:
            for variable, value in zip(self.state_variables, final_states):
                variable.assign(ops.cast(value, variable.dtype))
        output = outputs if self.return_sequences else last_output
        if self.return_states:
            return [output, *final_states[:num_states]]
        return output

    def _unknown_length_message(self):
        return (
            f"Layer {self.name!r} has unroll=True but the number of time steps is "
            "unknown. Give the input a fixed length, e.g. keras.Input((7, 5)), or "
            "pass unroll=False."
        )

    def _check_initial_state_count(self, initial_state):
        if initial_state is not None and len(as_list(initial_state)) != self.num_states:
            raise ValueError(
                f"Layer {self.name!r} has {self.num_states} state(s); received "
                f"{len(as_list(initial_state))} initial_state tensor(s)."
            )

    def _initial_states(self, batch_size, initial_state, initial_readout):
        if initial_state is not None:
            self._check_initial_state_count(initial_state)
            states = [ops.convert_to_tensor(s, self.compute_dtype) for s in as_list(initial_state)]
            if self.readout:
                states.append(self._readout_start(batch_size, initial_readout))
            return states
        if self.stateful:
            states = [variable.value for variable in self.state_variables]
            if initial_readout is not None and self.readout:
                states[-1] = ops.convert_to_tensor(initial_readout, self.compute_dtype)
            return states
        states = self._initial_state_values(batch_size)
        if self.readout:
            states[-1] = self._readout_start(batch_size, initial_readout)
        return states

    def _readout_start(self, batch_size, initial_readout):
        if initial_readout is None:
            return ops.zeros((batch_size, *self.output_shape_per_step), self.compute_dtype)
        return ops.convert_to_tensor(initial_readout, self.compute_dtype)

    def _shifted_ground_truth(self, ground_truth, readout_start):
        """The readout fed at each step under teacher forcing, in input time order.

        Step k (in processing order) reads the ground truth of step k-1, and the
        initial readout at k = 0. The ground truth is aligned with the outputs, which
        come in processing order; Keras's loop reverses its inputs when
        `go_backwards`, so the shifted sequence is reversed here to compensate.
        """
        ground_truth = ops.convert_to_tensor(ground_truth, self.compute_dtype)
        shifted = ops.concatenate(
            [ops.expand_dims(readout_start, 1), ground_truth[:, :-1]], axis=1
        )
        if self.go_backwards:
            shifted = ops.flip(shifted, axis=1)
        return shifted

    # ------------------------------------------------------------ shapes, masks
    def compute_output_shape(self, input_shape, *args, **kwargs):
        input_shape = tuple(input_shape)
        self._ensure_step_model(input_shape)
        batch_size = input_shape[0]
        num_steps = self.output_length if self.decode else input_shape[1]
        if self.return_sequences:
            output_shape = (batch_size, num_steps, *self.output_shape_per_step)
        else:
            output_shape = (batch_size, *self.output_shape_per_step)
        if self.return_states:   # a tuple, as keras.layers.RNN's (Bidirectional slices it)
            return (output_shape, *[(batch_size, *shape) for shape in self.state_shapes])
        return output_shape

    def compute_output_spec(self, inputs, initial_state=None, *args, **kwargs):
        self._ensure_step_model(tuple(inputs.shape))
        self._check_initial_state_count(initial_state)
        return super().compute_output_spec(inputs, initial_state, *args, **kwargs)

    def compute_mask(self, inputs, mask=None):
        output_mask = mask if (self.return_sequences and not self.decode) else None
        if self.return_states:
            return [output_mask] + [None] * self.num_states
        return output_mask

    # ----------------------------------------------------------------- nesting
    def get_cell(self, **kwargs):
        """Returns an `RNNCell` that runs one step of this RNN (weights shared).

        A readout becomes one more state of the cell. Useful to nest this RNN in a
        `RecurrentSequential` or in another step model.
        """
        from recurrentshop.cells import RNNCellFromModel

        if self.model is None:
            raise ValueError(f"Layer {self.name!r} must be built before get_cell().")
        model = self.model
        if self.readout:
            inputs = [keras.Input(tuple(t.shape[1:]), dtype=t.dtype) for t in model.inputs]
            outputs = model(inputs)
            model = keras.Model(inputs, [*outputs, outputs[0]])
        return RNNCellFromModel(model, **kwargs)

    # ----------------------------------------------------------- serialisation
    def get_config(self):
        base_config = super().get_config()
        config = {
            "step_model": keras.saving.serialize_keras_object(self.model),
            "num_states": self.num_states,
            "readout": self.readout,
            **self._loop_config(),
        }
        return {**base_config, **config}

    def _loop_config(self):
        """The config entries of the time loop, shared with `RecurrentSequential`."""
        return {
            "teacher_force": self.teacher_force,
            "decode": self.decode,
            "output_length": self.output_length,
            "return_states": self.return_states,
            "state_initializer": self._serialized_state_initializer(),
            "return_sequences": self.return_sequences,
            "go_backwards": self.go_backwards,
            "stateful": self.stateful,
            "unroll": self.unroll,
            "backend": self.backend,
        }

    def _serialized_state_initializer(self):
        initializer = self.state_initializer
        if isinstance(initializer, (list, tuple)):
            return [
                None if init is None else keras.initializers.serialize(keras.initializers.get(init))
                for init in initializer
            ]
        if initializer is None:
            return None
        return keras.initializers.serialize(keras.initializers.get(initializer))

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        step_model = keras.saving.deserialize_keras_object(
            config.pop("step_model"), custom_objects=custom_objects
        )
        num_states = config.pop("num_states")
        readout = config.pop("readout")
        config["state_initializer"] = _deserialize_initializers(config.get("state_initializer"))
        inputs = list(step_model.inputs)
        outputs = list(step_model.outputs)
        return cls(
            input=inputs[0],
            initial_states=inputs[1 : 1 + num_states],
            readout_input=inputs[-1] if readout else None,
            output=outputs[0],
            final_states=outputs[1:],
            **config,
        )


def _deserialize_initializers(config):
    if config is None:
        return None
    if isinstance(config, list):
        return [None if c is None else keras.initializers.deserialize(c) for c in config]
    return keras.initializers.deserialize(config)
