"""`accelerate(model)`: a whole Keras model, compiled where possible, Keras elsewhere.

The whole model is compiled into one program when every layer can be. Otherwise the
model's graph is cut around the layers that cannot: each maximal run of compilable
layers (in execution order) becomes one compiled sub-model, and each layer that cannot
be compiled runs in Keras, fed with numpy arrays. `fallbacks` lists those layers with
the reason. Keras is imported here lazily: this module is the join between the
frontend and the kernels.
"""

import logging
import numbers

import numpy as np

from rshop_ir.errors import UnsupportedError
from rshop_ir.output_structure import flatten_outputs, nest_outputs, structure_of
from rshop_ir.targets import compile_for, resolve_target

LOGGER = logging.getLogger("rshop_ir")


def accelerate(model, target="auto"):
    """Compile a built Keras model for fast inference.

    Args:
        model: a built `keras.Model` (functional or Sequential).
        target: `"auto"` (CUDA when a GPU is usable, else CPU), `"cpu"` or `"cuda"`.

    Returns:
        An `AcceleratedModel` with `predict(x, batch_size=None)` (equal to
        `model.predict(x)` within the numeric contract), `__call__` and `fallbacks`.
    """
    return AcceleratedModel(model, target)


class AcceleratedModel:
    """A Keras model run by compiled kernels, with Keras for the layers that cannot be
    compiled (see `fallbacks`)."""

    def __init__(self, model, target="auto"):
        import keras

        from recurrentshop import compat

        if not isinstance(model, keras.Model):
            raise TypeError(f"accelerate expects a keras.Model; received "
                            f"{type(model).__name__}.")
        if not model.built or not getattr(model, "inputs", None):
            raise ValueError(f"Model {model.name!r} must be built (called on inputs, or "
                             "defined with keras.Input) before accelerate().")
        self.model = model
        self.target = resolve_target(target)
        self._requested_target = target
        self.fallbacks = []
        self._parts = []
        self._structure = structure_of(compat.output_template(model))
        try:
            self._whole = self._compile(model)
        except UnsupportedError as error:
            self._whole = None
            graph = model
            if isinstance(model, keras.Sequential):
                graph = compat.sequential_functional(model) or model
            self._graph = graph
            self._plan_parts(graph, error)

    # ---------------------------------------------------------------- planning
    def _plan_parts(self, graph, whole_error):
        import keras

        from recurrentshop import compat
        from rshop_ir.frontends.keras_trace import trace

        nodes = compat.functional_nodes(graph)
        compilable = []
        for node in nodes:
            try:
                inputs = list({id(t): t for t in node.input_tensors}.values())
                trace(keras.Model(inputs, list(node.outputs)))
                compilable.append(True)
            except UnsupportedError as error:
                compilable.append(False)
                self._record_fallback(node.operation, error)
            except Exception as error:  # a node Keras cannot cut out on its own
                compilable.append(False)
                self._record_fallback(node.operation, UnsupportedError(str(error)))
        run = []
        for node, ok in zip(nodes, compilable):
            if ok:
                run.append(node)
                continue
            if run:
                self._add_run(run, nodes, graph)
                run = []
            self._parts.append(("keras", node))
        if run:
            self._add_run(run, nodes, graph)
        if not self.fallbacks:
            self._record_fallback(graph, whole_error)
        self._plan_input_masks(graph)

    def _plan_input_masks(self, graph):
        """The Keras masks of the inputs of the layers run in Keras. In a Keras model
        every tensor carries its mask (`_keras_mask`), which a layer reads when it is
        called (MultiHeadAttention's query and value masks after an
        `Embedding(mask_zero=True)`); the numpy arrays these layers get carry none. The
        masks are computed by one Keras model of the graph's inputs, when some layer run
        in Keras has a masked input, and set on its inputs before the call."""
        import keras

        from recurrentshop import compat

        self._input_masks = {}
        masks = {}
        for part in self._parts:
            if part[0] != "keras":
                continue
            node = part[1]
            masked = {id(tensor): mask for tensor in node.input_tensors
                      if (mask := compat.keras_mask(tensor)) is not None}
            if masked:
                self._input_masks[id(node)] = masked
                masks.update({id(mask): mask for mask in masked.values()})
        self._mask_ids = list(masks)
        self._mask_model = keras.Model(graph.inputs, list(masks.values())) if masks else None

    def _add_run(self, run, nodes, graph):
        """The parts of a run of traceable nodes: one compiled segment; where the kernel
        generator refuses it (an `UnsupportedError` only the generator sees), its two
        halves, each the same way, down to single nodes, which then run in Keras. Then
        neighbouring compiled pieces are joined again where their union compiles (the
        halving cut them apart only to find the refused node)."""
        pieces = self._split_run(run, nodes, graph)
        joined = [pieces[0]]
        for piece in pieces[1:]:
            before = joined[-1]
            if piece[0] == "compiled" and before[0] == "compiled":
                union = before[1] + piece[1]
                try:
                    joined[-1] = ("compiled", union,
                                  self._compiled_segment(union, nodes, graph))
                    continue
                except UnsupportedError:
                    pass
            joined.append(piece)
        for kind, run_nodes, part in joined:
            if kind == "keras":
                self._record_fallback(run_nodes[0].operation, part)
                part = ("keras", run_nodes[0])
            self._parts.append(part)

    def _split_run(self, run, nodes, graph):
        """[(kind, nodes, part or error)]: "compiled" pieces with their segment, "keras"
        single nodes with the generator's error."""
        try:
            return [("compiled", run, self._compiled_segment(run, nodes, graph))]
        except UnsupportedError as error:
            if len(run) == 1:
                return [("keras", run, error)]
        half = len(run) // 2
        return (self._split_run(run[:half], nodes, graph)
                + self._split_run(run[half:], nodes, graph))

    def _record_fallback(self, layer, error):
        name = getattr(layer, "name", type(layer).__name__)
        reason = str(error)
        self.fallbacks.append((name, reason))
        LOGGER.info("rshop_ir: layer %r runs in Keras: %s", name, reason)

    def _compile(self, target_object):
        """Compiled for `self.target`; with target="auto", CPU where CUDA cannot."""
        return compile_for(target_object,
                           "auto" if self._requested_target == "auto" else self.target)

    def _compiled_segment(self, run, nodes, graph):
        import keras

        inside = {id(t) for node in run for t in node.outputs}
        inputs, seen = [], set()
        for node in run:
            for tensor in node.input_tensors:
                if id(tensor) not in inside and id(tensor) not in seen:
                    inputs.append(tensor)
                    seen.add(id(tensor))
        later = {id(t) for node in nodes if node not in run for t in node.input_tensors}
        later |= {id(t) for t in graph.outputs}
        outputs = [t for node in run for t in node.outputs if id(t) in later]
        segment = keras.Model(inputs, outputs)
        return ("compiled", self._compile(segment), inputs, outputs)

    # ---------------------------------------------------------------- running
    def __call__(self, x):
        """Runs the model on numpy input(s); returns numpy output(s), nested as the
        model's outputs are."""
        return nest_outputs(self._flat_call(self._as_inputs(x)), self._structure)

    def _flat_call(self, inputs) -> list:
        """The outputs of a call on the list of input arrays, flat."""
        if self._whole is not None:
            return flatten_outputs(self._whole(*inputs),
                                   self._whole.program.output_structure)
        return self._run_parts(inputs)

    def _run_parts(self, inputs):
        import keras

        from recurrentshop import compat

        values = {}
        for tensor, value in zip(self._graph.inputs, inputs):
            values[id(tensor)] = value
        if self._mask_model is not None:
            masks = self._mask_model(inputs if len(inputs) > 1 else inputs[0],
                                     training=False)
            masks = masks if isinstance(masks, (list, tuple)) else [masks]
            values.update(zip(self._mask_ids, (np.asarray(mask) for mask in masks)))
        for part in self._parts:
            if part[0] == "compiled":
                _, compiled, part_inputs, part_outputs = part
                results = compiled(*[values[id(t)] for t in part_inputs])
                results = results if isinstance(results, list) else [results]
                for tensor, result in zip(part_outputs, results):
                    values[id(tensor)] = result
            else:
                node = part[1]
                arguments = values
                masked = self._input_masks.get(id(node))
                if masked:
                    arguments = dict(values)
                    for key, mask in masked.items():
                        arguments[key] = compat.with_keras_mask(values[key], values[id(mask)])
                args, kwargs = compat.fill_node_arguments(node, arguments)
                if getattr(node.operation, "_call_has_training_arg", False):
                    kwargs["training"] = False
                results = keras.tree.flatten(node.operation(*args, **kwargs))
                for tensor, result in zip(node.outputs, results):
                    values[id(tensor)] = np.asarray(result)
        return [values[id(t)] for t in self._graph.outputs]

    def predict(self, x, batch_size=None, verbose=0):
        """`model.predict` semantics: batches of `batch_size` (32 by default)."""
        inputs = self._as_inputs(x)
        total = inputs[0].shape[0]
        if batch_size is None:
            batch_size = 32
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) \
                or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer. Received: "
                             f"batch_size={batch_size!r}")
        batch_size = int(batch_size)
        chunks = []
        for start in range(0, max(total, 1), batch_size):
            chunk = [value[start:start + batch_size] for value in inputs]
            chunks.append(self._flat_call(chunk))
            if total == 0:
                break
        merged = [np.concatenate([chunk[k] for chunk in chunks], axis=0)
                  for k in range(len(chunks[0]))]
        return nest_outputs(merged, self._structure)


    def _as_inputs(self, x):
        """The model's inputs as a list of arrays, in `model.inputs` order, from one
        array, a list or tuple of them, or a dict keyed by input name (as Keras's
        `predict` takes them)."""
        inputs = self.model.inputs
        if isinstance(x, dict):
            x = _from_dict(self.model, x)
        values = list(x) if isinstance(x, (list, tuple)) else [x]
        if len(values) != len(inputs):
            raise ValueError(f"Model {self.model.name!r} takes {len(inputs)} input(s); "
                             f"received {len(values)}. Pass one array per input, in a "
                             "list or a dict keyed by input name.")
        arrays = []
        for value, tensor in zip(values, inputs):
            if value is None or isinstance(value, (str, bytes)):
                raise TypeError(f"Input {tensor.name!r} must be an array; received "
                                f"{type(value).__name__}.")
            array = np.asarray(value)
            if array.ndim == 0:
                raise ValueError(f"Input {tensor.name!r} must be an array with a batch axis "
                                 f"(shape {tuple(tensor.shape)}); received a scalar "
                                 f"{value!r}.")
            arrays.append(array)
        return arrays


def _from_dict(model, x):
    """`x` (input name -> array) as a list in `model.inputs` order: by the keys of a
    model built from a dict of inputs, else by the names of its `keras.Input`s."""
    import keras

    structure = getattr(model, "_inputs_struct", None)
    if isinstance(structure, dict):
        names = list(structure)
        ordered = keras.tree.flatten({name: name for name in names})
    else:
        ordered = [tensor.name for tensor in model.inputs]
    missing = [name for name in ordered if name not in x]
    unknown = sorted(set(x) - set(ordered))
    if missing or unknown:
        raise ValueError(f"Model {model.name!r} takes the inputs {ordered}; received the "
                         f"keys {sorted(x)} (missing {missing}, unknown {unknown}).")
    return [x[name] for name in ordered]
