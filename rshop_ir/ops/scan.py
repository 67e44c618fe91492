"""The `scan` op: the recurrence, holding the program of one timestep as its `body`.

Inputs, in order (counts in params):
    num_sequences sequences (B, T, ...)   sliced along axis 1, one slice per step
    num_states initial states (B, ...)
    one initial readout (B, *y_shape)     if readout
    num_constants constants               passed whole to every step (weights, memories)
    one mask (B, T) bool                  if masked
`body` inputs: [sequence slices..., states..., readout (if readout), constants...];
`body` outputs: [y_t, *new_states]. The body has no params (weights come as constants).

Params: go_backwards (process t = T-1 .. 0), return_sequences, readout (feed the previous
step's y back as a body input), masked, length (the step count; required when there are
no sequences: the decoder case).

Outputs: [y, *final_states]; y is (B, T, *y_shape) in processing order when
return_sequences (reversed time order when go_backwards, as Keras), else the last y.
Masking follows Keras's rnn with zero_output_for_mask=False: where mask[b, t] is False,
the states, the readout and the output of row b keep their previous values (the output
before the first step is zeros). With zero steps, y is zeros and the states pass through.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rshop_ir.ir import Program, TensorType
from rshop_ir.ops.registry import REQUIRED, register
from rshop_ir.shapes import is_symbolic

SCAN_PARAMS = {
    "body": REQUIRED, "num_sequences": REQUIRED, "num_states": REQUIRED,
    "num_constants": 0, "readout": False, "masked": False, "go_backwards": False,
    "return_sequences": False, "length": None,
}


@dataclass(frozen=True)
class ScanLayout:
    """Where each input group of a scan starts, from its params."""

    num_sequences: int
    num_states: int
    readout: bool
    num_constants: int
    masked: bool

    @classmethod
    def from_params(cls, params) -> "ScanLayout":
        return cls(params["num_sequences"], params["num_states"], bool(params["readout"]),
                   params.get("num_constants", 0), bool(params.get("masked", False)))

    @property
    def num_body_inputs(self) -> int:
        return self.num_sequences + self.num_states + int(self.readout) + self.num_constants

    @property
    def num_inputs(self) -> int:
        return self.num_body_inputs + int(self.masked)

    def split(self, items) -> dict:
        """Split scan inputs (or body inputs, without the mask) into named groups."""
        items = list(items)
        position = 0
        groups = {}
        for name, count in (("sequences", self.num_sequences), ("states", self.num_states),
                            ("readout", int(self.readout)),
                            ("constants", self.num_constants), ("mask", int(self.masked))):
            groups[name] = items[position:position + count]
            position += count
        return groups


def _check_same(what: str, outer: TensorType, inner: TensorType) -> None:
    if outer != inner:
        raise ValueError(f"scan: {what} is {outer} outside but {inner} in the body.")


def scan_rule(*types: TensorType, body: Program, num_sequences, num_states, num_constants,
              readout, masked, go_backwards, return_sequences, length) -> tuple:
    layout = ScanLayout(num_sequences, num_states, bool(readout), num_constants, bool(masked))
    if len(types) != layout.num_inputs:
        raise ValueError(f"scan expects {layout.num_inputs} inputs for its params, "
                         f"received {len(types)}.")
    if body.params or body.prologue is not None:
        raise ValueError("scan: the body has no params; pass weights as constants.")
    if len(body.inputs) != layout.num_body_inputs or len(body.outputs) != 1 + num_states:
        raise ValueError(f"scan: the body must take {layout.num_body_inputs} inputs and "
                         f"return {1 + num_states} outputs [y, *states]; it takes "
                         f"{len(body.inputs)} and returns {len(body.outputs)}.")
    groups = layout.split(types)
    body_groups = layout.split([atom.type for atom in body.inputs])
    outputs = [atom.type for atom in body.outputs]
    if num_sequences:
        time = groups["sequences"][0].shape[1] if groups["sequences"][0].ndim >= 2 else None
        for index, (outer, inner) in enumerate(zip(groups["sequences"],
                                                   body_groups["sequences"])):
            if outer.ndim < 2 or outer.shape[1] != time:
                raise ValueError(f"scan: sequence {index} {outer} must be (B, T, ...) with "
                                 f"the same T as the first sequence.")
            _check_same(f"sequence {index} (one step)",
                        TensorType(outer.dtype, outer.shape[:1] + outer.shape[2:]), inner)
        if length is not None and not is_symbolic(time) and length != time:
            raise ValueError(f"scan: length={length} but the sequences have {time} steps.")
    else:
        if not isinstance(length, int) or length < 0:
            raise ValueError(f"scan without sequences needs an int length >= 0 (the number "
                             f"of steps). Received length={length!r}.")
        time = length
    for index, (outer, inner, new) in enumerate(zip(groups["states"], body_groups["states"],
                                                    outputs[1:])):
        _check_same(f"state {index}", outer, inner)
        _check_same(f"new state {index}", outer, new)
    if readout:
        _check_same("the readout", groups["readout"][0], body_groups["readout"][0])
        _check_same("the readout (as the output y)", groups["readout"][0], outputs[0])
    for index, (outer, inner) in enumerate(zip(groups["constants"], body_groups["constants"])):
        _check_same(f"constant {index}", outer, inner)
    if masked:
        mask = groups["mask"][0]
        if mask.dtype != "bool" or mask.ndim != 2 or mask.shape[1] != time:
            raise ValueError(f"scan: the mask must be bool (B, {time}). Received {mask}.")
    y_type = outputs[0]
    if return_sequences:
        if y_type.ndim < 1:
            raise ValueError(f"scan: y must have a batch axis. Received {y_type}.")
        y_type = TensorType(y_type.dtype, y_type.shape[:1] + (time,) + y_type.shape[1:])
    return (y_type,) + tuple(outputs[1:])


def scan_impl(*arrays, body: Program, num_sequences, num_states, num_constants, readout,
              masked, go_backwards, return_sequences, length):
    from rshop_ir.interpret import evaluate  # the interpreter runs the body

    layout = ScanLayout(num_sequences, num_states, bool(readout), num_constants, bool(masked))
    groups = layout.split(arrays)
    sequences, states = groups["sequences"], list(groups["states"])
    readout_value = groups["readout"][0] if readout else None
    if sequences:
        num_steps = sequences[0].shape[1]
        if length is not None and length != num_steps:
            raise ValueError(f"scan: length={length} but the sequences have {num_steps} "
                             f"steps.")
    else:
        num_steps = length
    mask = groups["mask"][0] if masked else None
    steps = range(num_steps - 1, -1, -1) if go_backwards else range(num_steps)
    previous_y = None
    ys = []
    for step in steps:
        body_inputs = [sequence[:, step] for sequence in sequences] + states
        if readout:
            body_inputs.append(readout_value)
        y, *new_states = evaluate(body, body_inputs + list(groups["constants"]))
        if previous_y is None:
            previous_y = np.zeros_like(y)
        if masked:
            keep = mask[:, step]
            new_states = [_select(keep, new, old) for new, old in zip(new_states, states)]
            if readout:
                readout_value = _select(keep, y, readout_value)
            y = _select(keep, y, previous_y)
        elif readout:
            readout_value = y
        states = new_states
        previous_y = y
        if return_sequences:
            ys.append(y)
    if previous_y is None:  # zero steps
        batched = sequences + states + groups["readout"] + groups["mask"]
        previous_y = _zero_output(body, batched)
    if return_sequences:
        y_all = np.stack(ys, axis=1) if ys else np.expand_dims(previous_y, 1)[:, :0]
        return (y_all, *states)
    return (previous_y, *states)


def _select(keep, new, old):
    """Rows of `new` where keep[b] is True, rows of `old` elsewhere."""
    keep = np.asarray(keep, dtype=bool).reshape((-1,) + (1,) * (np.ndim(new) - 1))
    return np.where(keep, new, old)


def _zero_output(body: Program, batched_arrays) -> np.ndarray:
    y_var = body.outputs[0]
    batch_arrays = [a for a in batched_arrays if np.ndim(a) >= 1]
    if not batch_arrays:
        raise ValueError("scan with zero steps: cannot tell the batch size.")
    batch = batch_arrays[0].shape[0]
    shape = tuple(batch if d == "B" else d for d in y_var.shape)
    if any(is_symbolic(d) for d in shape):
        raise ValueError(f"scan with zero steps: cannot size y of shape {y_var.shape}.")
    return np.zeros(shape, dtype=y_var.dtype)


register("scan", scan_rule, scan_impl, params=SCAN_PARAMS)
