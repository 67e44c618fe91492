"""Optional peer libraries: ONNX Runtime, PyTorch and JAX rebuilding a `PeerSpec`.

Each peer turns the case's `PeerSpec` (embedding, SimpleRNN/GRU/LSTM layers in Keras
weight layout, dense head) into its own model with the same weights. The weight maps
are the error-prone part; the harness's correctness gate checks every peer's numbers
against the Keras reference before timing, so a wrong map shows up as WRONG:

    Keras  LSTM gates i,f,c,o   kernel (I, 4H), recurrent (H, 4H), bias (4H,)
    ONNX   LSTM gates i,o,f,c   W (1, 4H, I), R (1, 4H, H), B (1, 8H) = [Wb, Rb]
    torch  LSTM gates i,f,g,o   weight_ih (4H, I), weight_hh (4H, H), bias_ih, bias_hh
    Keras  GRU  gates z,r,h     bias (2, 3H) = [input bias, recurrent bias] (reset_after)
    ONNX   GRU  gates z,r,h     linear_before_reset=1 is Keras's reset_after=True
    torch  GRU  gates r,z,n     the reset gate applies after the matmul, as reset_after

A peer that is not installed is skipped with a note; a case without a `PeerSpec`
(custom step models) is "n/a" for every peer.
"""

import importlib

import numpy as np

from .backend_base import Backend, NotApplicable


def _import(name):
    """importlib.import_module, one seam for the tests to simulate a missing library."""
    return importlib.import_module(name)


def _installed(module_name, pip_name):
    try:
        _import(module_name)
    except ImportError as error:
        return f"not installed ({error.__class__.__name__}: {error}); pip install {pip_name}"
    return None


def _spec(case, peer):
    if case.peer is None:
        raise NotApplicable(f"{peer} has no equivalent of this step model")
    return case.peer


def _chunks(matrix, count, order):
    """Reorders the `count` gate blocks along the last axis."""
    parts = np.split(np.asarray(matrix), count, axis=-1)
    return np.concatenate([parts[k] for k in order], axis=-1)


def _gru_biases(bias, hidden):
    bias = np.asarray(bias)
    if bias.ndim == 2:
        return bias[0], bias[1], True
    return bias, np.zeros(3 * hidden, bias.dtype), False


# ------------------------------------------------------------------ ONNX Runtime
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    kind = "peer"

    def availability(self):
        return _installed("onnx", "onnx") or _installed("onnxruntime", "onnxruntime")

    def prepare(self, case, settings):
        spec = _spec(case, "ONNX")
        onnx = _import("onnx")
        ort = _import("onnxruntime")
        model = build_onnx_model(onnx, spec, case.inputs[0])
        options = ort.SessionOptions()
        if settings.threads:
            options.intra_op_num_threads = settings.threads
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def run(x):
            return session.run(None, {input_name: x})[0]

        return run


def build_onnx_model(onnx, spec, example_input):
    """An ONNX graph: [Gather] -> Transpose to time-major -> RNN/GRU/LSTM nodes ->
    [MatMul + Add (+ Softmax)] -> Transpose back to batch-major."""
    helper, TensorProto = onnx.helper, onnx.TensorProto
    initializers, nodes = [], []

    def constant(name, value):
        initializers.append(onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    tokens = spec.embedding is not None
    input_type = TensorProto.INT32 if tokens else TensorProto.FLOAT
    graph_input = helper.make_tensor_value_info("x", input_type,
                                                ["batch", *example_input.shape[1:]])
    current = "x"
    if tokens:
        nodes.append(helper.make_node("Gather", [constant("embedding", spec.embedding),
                                                 "x"], ["embedded"]))
        current = "embedded"
    nodes.append(helper.make_node("Transpose", [current], ["time_major"], perm=[1, 0, 2]))
    current = "time_major"
    squeeze_axes = constant("squeeze_axes", np.array([1], np.int64))
    for index, (kind, (kernel, recurrent, bias)) in enumerate(spec.recurrent):
        hidden = recurrent.shape[0]
        attributes = {"hidden_size": hidden}
        if kind == "lstm":
            order = [0, 3, 1, 2]  # Keras i,f,c,o -> ONNX i,o,f,c
            w = _chunks(kernel, 4, order).T
            r = _chunks(recurrent, 4, order).T
            b = np.concatenate([_chunks(bias, 4, order), np.zeros_like(bias)])
            op = "LSTM"
        elif kind == "gru":
            input_bias, recurrent_bias, reset_after = _gru_biases(bias, hidden)
            w, r, b = kernel.T, recurrent.T, np.concatenate([input_bias, recurrent_bias])
            attributes["linear_before_reset"] = int(reset_after)
            op = "GRU"
        else:
            w, r, b = kernel.T, recurrent.T, np.concatenate([bias, np.zeros_like(bias)])
            op = "RNN"
        names = [constant(f"{part}{index}", value[None].astype("float32"))
                 for part, value in (("W", w), ("R", r), ("B", b))]
        nodes.append(helper.make_node(op, [current, *names], [f"y{index}"], **attributes))
        nodes.append(helper.make_node("Squeeze", [f"y{index}", squeeze_axes],
                                      [f"h{index}"]))
        current = f"h{index}"
    if spec.head is not None:
        kernel, bias, activation = spec.head
        nodes.append(helper.make_node("MatMul", [current, constant("head_kernel", kernel)],
                                      ["logits_nobias"]))
        nodes.append(helper.make_node("Add", ["logits_nobias", constant("head_bias", bias)],
                                      ["logits"]))
        current = "logits"
        if activation == "softmax":
            nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=-1))
            current = "probabilities"
    nodes.append(helper.make_node("Transpose", [current], ["y"], perm=[1, 0, 2]))
    graph_output = helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                 ["batch", "time", "features"])
    graph = helper.make_graph(nodes, "rshop_bench_peer", [graph_input], [graph_output],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="rshop-bench")
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model


# ------------------------------------------------------------------ PyTorch
class TorchBackend(Backend):
    name = "torch"
    kind = "peer"

    def availability(self):
        return _installed("torch", "torch")

    def prepare(self, case, settings):
        spec = _spec(case, "torch")
        torch = _import("torch")
        if settings.threads:
            torch.set_num_threads(settings.threads)
        module = build_torch_module(torch, spec).eval()
        tokens = spec.embedding is not None

        def run(x):
            tensor = torch.from_numpy(x.astype("int64") if tokens else x)
            with torch.inference_mode():
                return module(tensor).numpy()

        return run


def build_torch_module(torch, spec):
    nn = torch.nn

    def parameter(value):
        return nn.Parameter(torch.from_numpy(np.ascontiguousarray(value, "float32")),
                            requires_grad=False)

    class Peer(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = None
            if spec.embedding is not None:
                self.embedding = nn.Embedding(*spec.embedding.shape)
                self.embedding.weight = parameter(spec.embedding)
            self.recurrent = nn.ModuleList()
            for kind, (kernel, recurrent, bias) in spec.recurrent:
                features, hidden = kernel.shape[0], recurrent.shape[0]
                if kind == "lstm":
                    layer = nn.LSTM(features, hidden, batch_first=True)
                    ih, hh = kernel.T, recurrent.T  # the same gate order i,f,g,o
                    bias_ih, bias_hh = bias, np.zeros_like(bias)
                elif kind == "gru":
                    input_bias, recurrent_bias, reset_after = _gru_biases(bias, hidden)
                    if not reset_after:
                        raise NotApplicable("torch.nn.GRU has no reset_after=False form")
                    order = [1, 0, 2]  # Keras z,r,h -> torch r,z,n
                    layer = nn.GRU(features, hidden, batch_first=True)
                    ih, hh = _chunks(kernel, 3, order).T, _chunks(recurrent, 3, order).T
                    bias_ih = _chunks(input_bias, 3, order)
                    bias_hh = _chunks(recurrent_bias, 3, order)
                else:
                    layer = nn.RNN(features, hidden, batch_first=True)
                    ih, hh = kernel.T, recurrent.T
                    bias_ih, bias_hh = bias, np.zeros_like(bias)
                layer.weight_ih_l0 = parameter(ih)
                layer.weight_hh_l0 = parameter(hh)
                layer.bias_ih_l0 = parameter(bias_ih)
                layer.bias_hh_l0 = parameter(bias_hh)
                layer.flatten_parameters()
                self.recurrent.append(layer)
            self.head = None
            if spec.head is not None:
                kernel, bias, self.activation = spec.head
                self.head = nn.Linear(*kernel.shape)
                self.head.weight = parameter(kernel.T)
                self.head.bias = parameter(bias)

        def forward(self, x):
            if self.embedding is not None:
                x = self.embedding(x)
            for layer in self.recurrent:
                x = layer(x)[0]
            if self.head is not None:
                x = self.head(x)
                if self.activation == "softmax":
                    x = torch.softmax(x, dim=-1)
            return x

    return Peer()


# ------------------------------------------------------------------ JAX
class JaxBackend(Backend):
    name = "jax"
    kind = "peer"

    def availability(self):
        return _installed("jax", "jax")

    def prepare(self, case, settings):
        spec = _spec(case, "JAX")
        jax = _import("jax")
        forward = jax.jit(build_jax_function(jax, spec))

        def run(x):
            return np.asarray(forward(x))

        return run


def build_jax_function(jax, spec):
    """A pure function x -> y: the input projection of all steps is one matmul outside
    `lax.scan`; the scan carries the states."""
    jnp, lax = jax.numpy, jax.lax
    layers = []
    for kind, (kernel, recurrent, bias) in spec.recurrent:
        layers.append((kind, jnp.asarray(kernel), jnp.asarray(recurrent), jnp.asarray(bias)))
    embedding = None if spec.embedding is None else jnp.asarray(spec.embedding)
    head = None
    if spec.head is not None:
        head = (jnp.asarray(spec.head[0]), jnp.asarray(spec.head[1]), spec.head[2])

    def recurrent_layer(kind, kernel, recurrent, bias, x):
        hidden = recurrent.shape[0]
        batch = x.shape[0]
        if kind == "gru":
            reset_after = bias.ndim == 2
            input_bias = bias[0] if reset_after else bias
            recurrent_bias = bias[1] if reset_after else jnp.zeros_like(bias)
            projected = x @ kernel + input_bias
        else:
            projected = x @ kernel + bias
        states = [jnp.zeros((batch, hidden), x.dtype)]
        if kind == "lstm":
            states.append(jnp.zeros((batch, hidden), x.dtype))

        def step(carry, x_t):
            h = carry[0]
            if kind == "lstm":
                z = x_t + h @ recurrent
                i, f, g, o = jnp.split(z, 4, axis=-1)
                c = jax.nn.sigmoid(f) * carry[1] + jax.nn.sigmoid(i) * jnp.tanh(g)
                h = jax.nn.sigmoid(o) * jnp.tanh(c)
                return (h, c), h
            if kind == "gru":
                x_z, x_r, x_h = jnp.split(x_t, 3, axis=-1)
                if reset_after:
                    inner = h @ recurrent + recurrent_bias
                    h_z, h_r, h_h = jnp.split(inner, 3, axis=-1)
                    r = jax.nn.sigmoid(x_r + h_r)
                    candidate = jnp.tanh(x_h + r * h_h)
                else:
                    h_z = h @ recurrent[:, :hidden]
                    r = jax.nn.sigmoid(x_r + h @ recurrent[:, hidden:2 * hidden])
                    candidate = jnp.tanh(x_h + (r * h) @ recurrent[:, 2 * hidden:])
                z = jax.nn.sigmoid(x_z + h_z)
                h = z * h + (1 - z) * candidate
                return (h,), h
            h = jnp.tanh(x_t + h @ recurrent)
            return (h,), h

        _, outputs = lax.scan(step, tuple(states), jnp.swapaxes(projected, 0, 1))
        return jnp.swapaxes(outputs, 0, 1)

    def forward(x):
        if embedding is not None:
            x = embedding[x]
        for kind, kernel, recurrent, bias in layers:
            x = recurrent_layer(kind, kernel, recurrent, bias, x)
        if head is not None:
            x = x @ head[0] + head[1]
            if head[2] == "softmax":
                x = jax.nn.softmax(x, axis=-1)
        return x

    return forward


PEERS = [OnnxRuntimeBackend(), TorchBackend(), JaxBackend()]
