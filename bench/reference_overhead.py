"""How much slower is our reference backend than `keras.layers.RNN` with the same cell?

    python -m bench.reference_overhead [--repeats N] [--quick]

Both sides run the same time loop (Keras's backend `rnn`), so the ratio ours/keras
measures what RecurrentModel adds around it: wrapping the step in a functional
`keras.Model`, state bookkeeping, the readout and teacher-forcing plumbing. Two pairs:

(a) `LSTMCell(H).get_layer(backend="keras", return_sequences=True)` vs
    `keras.layers.RNN(keras.layers.LSTMCell(H), return_sequences=True)`;
(b) the seed README's hand-written step (Dense + Dense + tanh) in `RecurrentModel` vs
    `keras.layers.RNN` of an equivalent custom Keras cell.

Weights are copied and outputs checked (allclose) before timing. Each measurement is
`model.predict_on_batch(x)` (the compiled predict function), the two models
interleaved, median over the repeats. Target: ratio <= 1.3.
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers, ops  # noqa: E402

from recurrentshop import LSTMCell, RecurrentModel  # noqa: E402

SIZES = [  # (batch, time, input features, hidden units)
    (32, 50, 32, 64),
    (8, 100, 64, 128),
]
TARGET_RATIO = 1.3


class TanhRNNCell(layers.Layer):
    """The seed step as a plain Keras cell: h_t = tanh(x_t W + b + h_{t-1} U)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = units
        self.output_size = units

    def build(self, input_shape):
        # Created in the order of the RecurrentModel's weights: Dense(x) kernel, its
        # bias, then the bias-free Dense(h) kernel.
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")
        self.recurrent_kernel = self.add_weight(shape=(self.units, self.units),
                                                name="recurrent_kernel")

    def call(self, inputs, states):
        h = ops.tanh(ops.matmul(inputs, self.kernel) + self.bias
                     + ops.matmul(states[0], self.recurrent_kernel))
        return h, [h]


def seed_step_rnn(features, units):
    x_t = keras.Input((features,))
    h_tm1 = keras.Input((units,))
    h_t = layers.Activation("tanh")(layers.add(
        [layers.Dense(units)(x_t), layers.Dense(units, use_bias=False)(h_tm1)]))
    return RecurrentModel(backend="keras", input=x_t, initial_states=[h_tm1], output=h_t,
                          final_states=[h_t], return_sequences=True)


PAIRS = {
    "lstm": (
        lambda i, h: LSTMCell(h, input_dim=i).get_layer(backend="keras", return_sequences=True),
        lambda i, h: layers.RNN(layers.LSTMCell(h), return_sequences=True),
    ),
    "seed_step": (
        seed_step_rnn,
        lambda i, h: layers.RNN(TanhRNNCell(h), return_sequences=True),
    ),
}


def build_pair(kind, batch, steps, features, units, rng):
    make_ours, make_theirs = PAIRS[kind]
    models = []
    for make in (make_ours, make_theirs):
        x = keras.Input((steps, features))
        models.append(keras.Model(x, make(features, units)(x)))
    ours, theirs = models
    weights = [rng.standard_normal(w.shape).astype("float32") * 0.3
               for w in ours.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return ours, theirs


def timed(model, data):
    start = time.perf_counter()
    model.predict_on_batch(data)
    return time.perf_counter() - start


def measure(ours, theirs, data, repeats):
    for model in (ours, theirs):  # trace and warm up
        for _ in range(3):
            model.predict_on_batch(data)
    ours_times, theirs_times = [], []
    for index in range(repeats):  # interleaved, alternating which goes first
        pair = [(ours, ours_times), (theirs, theirs_times)]
        for model, times in (pair if index % 2 == 0 else pair[::-1]):
            times.append(timed(model, data))
    return 1000 * float(np.median(ours_times)), 1000 * float(np.median(theirs_times))


def machine_info():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import tensorflow as tf

    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores; "
            f"python {platform.python_version()}, keras {keras.__version__}, "
            f"tensorflow {tf.__version__}, backend {keras.backend.backend()}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--quick", action="store_true",
                        help="first size only, 10 repeats (a smoke run)")
    args = parser.parse_args(argv)
    sizes = SIZES[:1] if args.quick else SIZES
    repeats = 10 if args.quick else args.repeats

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    print(machine_info())
    print(f"predict_on_batch, median of {repeats} interleaved calls\n")
    rows = []
    for kind in PAIRS:
        for batch, steps, features, units in sizes:
            ours, theirs = build_pair(kind, batch, steps, features, units, rng)
            data = rng.standard_normal((batch, steps, features)).astype("float32")
            np.testing.assert_allclose(ours.predict_on_batch(data),
                                       theirs.predict_on_batch(data), atol=1e-5)
            ours_ms, theirs_ms = measure(ours, theirs, data, repeats)
            rows.append((kind, f"B={batch} T={steps} I={features} H={units}",
                         f"{ours_ms:.2f}", f"{theirs_ms:.2f}", f"{ours_ms / theirs_ms:.2f}"))

    header = ("model", "size", "ours ms", "keras.layers.RNN ms", "ratio ours/keras")
    table = [header] + rows
    widths = [max(len(row[k]) for row in table) for k in range(len(header))]
    for index, row in enumerate(table):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
    worst = max(float(row[-1]) for row in rows)
    verdict = "meets" if worst <= TARGET_RATIO else "misses"
    print(f"\nworst ratio {worst:.2f}: {verdict} the target <= {TARGET_RATIO}")
    return rows


if __name__ == "__main__":
    main()
