"""`make demo`: build two recurrent layers with the reference backend, run them, time them.

    python -m bench.demo

Builds the seed README's simple RNN (a hand-written step model in `RecurrentModel`) and
an LSTM stack (`RecurrentSequential` of two `LSTMCell`s), runs both on random data and
prints a small table. The compiled backends are not built yet, so only the Keras
reference backend is timed.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from recurrentshop import LSTMCell, RecurrentModel, RecurrentSequential  # noqa: E402

BATCH, TIME, FEATURES = 32, 50, 5


def seed_rnn():
    """The seed README's RNN: h_t = tanh(x_t W + b + h_{t-1} U)."""
    x_t = keras.Input((FEATURES,))
    h_tm1 = keras.Input((10,))
    h_t = layers.add([layers.Dense(10)(x_t), layers.Dense(10, use_bias=False)(h_tm1)])
    h_t = layers.Activation("tanh")(h_t)
    rnn = RecurrentModel(input=x_t, initial_states=[h_tm1], output=h_t, output_states=[h_t])
    x = keras.Input((TIME, FEATURES))
    return keras.Model(x, rnn(x), name="seed_rnn")


def lstm_stack():
    """Two stacked LSTM cells in one step, all outputs returned."""
    stack = RecurrentSequential(return_sequences=True)
    stack.add(LSTMCell(32))
    stack.add(LSTMCell(16))
    x = keras.Input((TIME, FEATURES))
    return keras.Model(x, stack(x), name="lstm_stack")


def ms_per_call(model, data, repeats=10):
    model.predict_on_batch(data)  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(data)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def main():
    keras.utils.set_random_seed(0)
    data = np.random.default_rng(0).random((BATCH, TIME, FEATURES)).astype("float32")
    rows = []
    for model in (seed_rnn(), lstm_stack()):
        output = model.predict_on_batch(data)
        print(f"{model.name}: input {data.shape} -> output {output.shape}")
        rows.append((model.name, data.shape, output.shape, ms_per_call(model, data)))

    print()
    print("backend: keras (reference). The compiled backends (numba-cpu, numba-cuda) "
          "are in progress.")
    header = ("model", "input shape", "output shape", "ms/call (keras)")
    table = [header] + [(name, str(tuple(i)), str(tuple(o)), f"{ms:.2f}")
                        for name, i, o, ms in rows]
    widths = [max(len(row[k]) for row in table) for k in range(len(header))]
    for index, row in enumerate(table):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


if __name__ == "__main__":
    main()
