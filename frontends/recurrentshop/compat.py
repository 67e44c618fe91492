"""The one module that touches private Keras API.

Keras 3 keeps its backend-generic RNN loop (`keras.src.backend.rnn`) private; it is the
same machinery that `keras.layers.RNN` runs, so our reference backend is exactly as fast
and behaves exactly like Keras's RNNs (masking, go_backwards, unroll). The Keras -> IR
tracer walks functional graphs with Keras's own traversal (`Functional._run_through_graph`)
so that call arguments are matched to graph values exactly as Keras does. If a Keras
release moves either, only this file changes.
"""

from keras.src.backend import rnn as _keras_backend_rnn
from keras.src.utils.tracking import no_automatic_dependency_tracking


def backend_rnn(
    step_function,
    inputs,
    initial_states,
    *,
    go_backwards,
    mask,
    constants,
    unroll,
    input_length,
    return_all_outputs,
):
    """Runs `step_function` over the time axis of `inputs` with Keras's own loop.

    Masked steps keep the previous output and states (`zero_output_for_mask=False`),
    as `keras.layers.RNN` does by default.

    Returns:
        `(last_output, outputs, final_states)`.
    """
    return _keras_backend_rnn(
        step_function,
        inputs,
        initial_states,
        go_backwards=go_backwards,
        mask=mask,
        constants=constants,
        unroll=unroll,
        input_length=input_length,
        zero_output_for_mask=False,
        return_all_outputs=return_all_outputs,
    )


def run_functional_graph(model, inputs, call_function):
    """Walks a functional `model` in Keras's topological order.

    `call_function(operation, *args, **kwargs)` is called for every node with the
    node's call arguments, KerasTensors replaced by the values computed so far (graph
    inputs map to `inputs`, in `model.inputs` order). Returns the outputs in the
    structure of `model.outputs`.
    """
    return model._run_through_graph(inputs, call_fn=call_function)


def built_input_shape(layer):
    """The first input shape a built layer was built with, or None."""
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    for shape in shapes.values():
        return tuple(shape) if shape is not None else None
    return None


def functional_nodes(model):
    """The call nodes of a functional model in execution order (inputs excluded).

    Each node has `.operation` (the layer or op), `.input_tensors`, `.outputs` and
    `.arguments` (see `fill_node_arguments`).
    """
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                nodes.append(node)
    return nodes


def fill_node_arguments(node, values_by_id):
    """A node's `(args, kwargs)` with each KerasTensor replaced by
    `values_by_id[id(tensor)]`."""
    return node.arguments.fill_in(values_by_id)


def keras_mask(tensor):
    """The Keras mask a (symbolic or concrete) tensor carries, or None."""
    from keras.src.backend.common.masking import get_keras_mask

    return get_keras_mask(tensor)


def with_keras_mask(value, mask):
    """`value` as a backend tensor carrying `mask` as its Keras mask, as the tensors
    between the layers of a Keras model carry theirs (a layer's call reads it)."""
    import keras
    from keras.src.backend.common.masking import set_keras_mask

    tensor = keras.ops.convert_to_tensor(value)
    set_keras_mask(tensor, keras.ops.convert_to_tensor(mask))
    return tensor


def sequential_functional(model):
    """The functional graph behind a built `keras.Sequential`, or None."""
    return getattr(model, "_functional", None)


def output_template(model):
    """A built model's output tensors nested as its calls and `predict` return
    them, or its flat `outputs` list where Keras does not say."""
    graph = sequential_functional(model) if hasattr(model, "_functional") else model
    template = getattr(graph, "_outputs_struct", None)
    return template if template is not None else list(model.outputs)


__all__ = [
    "backend_rnn",
    "built_input_shape",
    "fill_node_arguments",
    "functional_nodes",
    "keras_mask",
    "no_automatic_dependency_tracking",
    "output_template",
    "run_functional_graph",
    "sequential_functional",
    "with_keras_mask",
]
