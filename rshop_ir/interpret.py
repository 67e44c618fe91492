"""The numpy reference interpreter: the living definition of every op.

Runs any program by reading each op's `impl` from the op table (scan and fused run their
bodies through `evaluate` again). Every pass and every kernel is checked against it.

    interpret(program, *inputs, weights=None, precomputed=None, **named_inputs)

* `program` is a `Program` or a `BoundProgram` (a program with its weights attached; see
  bound.py), whose weights are used when `weights` is None.
* `inputs` are given positionally in `program.inputs` order and/or by name
  (`program.input_names`). A name "g" with a list value fills the inputs "g/0", "g/1",
  ...; None leaves the input unset. So a frontend that names its inputs "x",
  "initial_state/0", ... gets `interpret(opt, x, initial_state=[h0, c0])`.
  An input with a default (`program.input_defaults`, e.g. zeros for an initial state)
  may be omitted; any other missing input is an error.
* `weights`: a dict name -> array (extra names are ignored) or a sequence in
  `program.params` order.
* `precomputed`: the outputs of `program.prologue` (from `run_prologue`) to reuse.
* Returns the single output as an array, or a list when the program has several.

Inputs are checked against their declared types: rank and fixed dims must agree, each
symbolic dim ("B", "T") must have one size throughout, and the dtype is converted when
numpy's "same_kind" rule allows it (float64 -> float32 yes, float -> int no).
"""

from __future__ import annotations

import numpy as np

from rshop_ir.ir import Literal, Program, Var
from rshop_ir.ops import get_op
from rshop_ir.output_structure import nest_outputs
from rshop_ir.shapes import bind_shape, resolve_shape

def interpret(program, *inputs, weights=None, precomputed=None, **named_inputs):
    from rshop_ir.bound import BoundProgram

    if isinstance(program, BoundProgram):
        if weights is None:
            weights = program.weights
        program = program.program
    arrays = gather_inputs(program, inputs, named_inputs)
    param_values = bind_weights(program, weights)
    results = evaluate(program, arrays, param_values, precomputed=precomputed)
    return nest_outputs(results, program.output_structure)


def gather_inputs(program: Program, positional, named) -> list:
    """Order positional and named inputs as `program.inputs`."""
    if len(positional) > len(program.inputs):
        raise ValueError(f"The program takes {len(program.inputs)} inputs "
                         f"{list(program.input_names)}; received {len(positional)}.")
    values = dict(zip(program.input_names, positional))
    for name, value in named.items():
        if value is None:
            continue
        if name in program.input_names:
            group = {name: value}
        else:
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            group = {f"{name}/{index}": item for index, item in enumerate(items)}
            expected = sum(1 for input_name in program.input_names
                           if input_name.rpartition("/")[0] == name)
            if expected and len(items) != expected:
                raise ValueError(f"{name!r}: the program takes {expected} of them "
                                 f"({name}/0 .. {name}/{expected - 1}); received "
                                 f"{len(items)}. Give all {expected}, as Keras requires, "
                                 f"or none.")
        for key, item in group.items():
            if key not in program.input_names:
                raise ValueError(f"Unknown input {key!r}. The program's inputs are "
                                 f"{list(program.input_names)}.")
            if key in values:
                raise ValueError(f"Input {key!r} was given twice.")
            values[key] = item
    for name, var, default in zip(program.input_names, program.inputs,
                                  program.input_defaults):
        if name not in values and default is not None:
            values[name] = _filled_like_declared(var, default, program, values)
    missing = [name for name in program.input_names if values.get(name) is None]
    if missing:
        raise ValueError(f"Missing input(s) {missing}. The program's inputs are "
                         f"{list(program.input_names)}.")
    return [values[name] for name in program.input_names]


def _filled_like_declared(var: Var, value, program: Program, values: dict):
    """`var`'s declared shape filled with `value`, sizing symbolic dims from the given
    inputs; None (left missing) when a size cannot be told."""
    dims = {}
    for name, other in zip(program.input_names, program.inputs):
        if name in values and np.ndim(values[name]) == other.ndim:
            for declared, actual in zip(other.shape, np.shape(values[name])):
                if isinstance(declared, str):
                    dims.setdefault(declared, actual)
    try:
        return np.full(resolve_shape(var.shape, dims), value, dtype=var.dtype)
    except ValueError:
        return None


def bind_weights(program: Program, weights) -> dict:
    """Map each param Var to its checked weight array."""
    if not program.params:
        return {}
    if weights is None:
        raise ValueError(f"This program needs weights for its params "
                         f"{list(program.param_names)}; pass weights={{name: array}} or "
                         f"use a BoundProgram.")
    if not hasattr(weights, "keys"):
        weights = list(weights)
        if len(weights) != len(program.params):
            raise ValueError(f"Expected {len(program.params)} weights in the order "
                             f"{list(program.param_names)}; received {len(weights)}.")
        weights = dict(zip(program.param_names, weights))
    missing = [name for name in program.param_names if name not in weights]
    if missing:
        raise ValueError(f"Missing weight(s) {missing} for this program.")
    dims = {}
    return {var: _checked_array(weights[name], var, dims, f"Weight {name!r}")
            for name, var in program.params}


def _checked_array(value, var: Var, dims: dict, what: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != np.dtype(var.dtype):
        if not np.can_cast(array.dtype, var.dtype, casting="same_kind"):
            raise ValueError(f"{what}: expected dtype {var.dtype}, received {array.dtype}, "
                             f"which does not convert safely; cast it first.")
        array = array.astype(var.dtype)
    bind_shape(var.shape, array.shape, dims, what)
    return np.require(array, requirements="C")   # keeps a 0-d weight 0-d


def run_prologue(program: Program, param_values: dict) -> tuple:
    """The weight-precompute results, to cache per weight version (by Var order)."""
    if program.prologue is None:
        return ()
    environment = dict(param_values)
    with np.errstate(all="ignore"):
        for eqn in program.prologue.eqns:
            _run_eqn(eqn, environment, {})
    return tuple(_read(environment, atom) for atom in program.prologue.outputs)


def evaluate(program: Program, inputs, param_values=None, precomputed=None) -> list:
    """Run `program` on input arrays (in order) and param arrays (by Var); a list."""
    if len(inputs) != len(program.inputs):
        raise ValueError(f"The program takes {len(program.inputs)} inputs, received "
                         f"{len(inputs)}.")
    dims = {}
    environment = dict(param_values or {})
    for index, (var, value) in enumerate(zip(program.inputs, inputs)):
        name = program.input_names[index]
        environment[var] = _checked_array(value, var, dims, f"Input {index} ({name!r})")
    if program.prologue is not None:
        if precomputed is None:
            precomputed = run_prologue(program, environment)
        environment.update(zip(program.prologue.outputs, precomputed))
    with np.errstate(all="ignore"):
        for eqn in program.eqns:
            _run_eqn(eqn, environment, dims)
    return [_read(environment, atom) for atom in program.outputs]


def _read(environment: dict, atom):
    if isinstance(atom, Literal):
        return np.asarray(atom.value, dtype=atom.dtype)
    return environment[atom]


def _run_eqn(eqn, environment: dict, dims: dict) -> None:
    op = get_op(eqn.op)
    arguments = [_read(environment, atom) for atom in eqn.inputs]
    params = dict(eqn.params)
    if isinstance(params.get("shape"), tuple):
        params["shape"] = resolve_shape(params["shape"], dims)
    results = op.impl(*arguments, **params)
    if not isinstance(results, tuple):
        results = (results,)
    if len(results) != len(eqn.outputs):
        raise RuntimeError(f"Op {eqn.op!r} returned {len(results)} values for "
                           f"{len(eqn.outputs)} outputs.")
    for var, result in zip(eqn.outputs, results):
        array = np.asarray(result, dtype=var.dtype)
        try:
            bind_shape(var.shape, array.shape, dims, f"Output of {eqn.op!r}")
        except ValueError as error:
            raise ValueError(f"{error} The inputs' sizes disagree with the program's "
                             f"types (sizes bound so far: {dims}).") from None
        environment[var] = array
