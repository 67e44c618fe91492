"""Numba CPU kernel vs the Keras reference and keras.layers.LSTM (LSTM, float32).

    python -m bench.cpu_kernels [--repeats N] [--sizes S1,S2] [--skip-memory]

For each size (batch, time, input, hidden) the same weights go into
`LSTMCell(H, input_dim=I).get_layer(backend="keras", return_sequences=True)` (the reference, under
`model.predict_on_batch`), `keras.layers.LSTM(H, return_sequences=True)` (also
`predict_on_batch`) and `rshop_ir.compile(reference_layer)`. Outputs are checked
(max-abs <= 1e-4) before timing; times are medians over interleaved rounds, each
sample an untimed call then timed calls of the same candidate (see `_median_times`). Also
reported: numpy sgemm GFLOP/s at S4's GEMM shapes vs the kernel's achieved GFLOP/s, and
the machine's float32 FMA peak (bench/fma_peak.py) with the share of it the kernel and
the S4 target need,
the first compile time and the fresh-process disk-cache load time (subprocesses with
an empty / warm RSHOP_CACHE_DIR and NUMBA_CACHE_DIR), and peak RSS growth of a call at T=100 vs T=100,000
(return_sequences; the output's own size subtracted).
ONNX Runtime's LSTM op is timed too when `onnxruntime` and `onnx` are importable.
For batch-1 sizes the compiled IR program is also timed alone in a fresh process
(no Keras variables to re-read, no other library's spinning thread pool), by default
and on one thread (`team_size=1`: no team of threads, which a one-row call with a big
recurrent weight forms by itself, kernels/cpu/team.py).
"""

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench.backend_base import RunSettings  # noqa: E402
from bench.runner import calibrate, settle  # noqa: E402

SIZES = {  # (batch, time, input features, hidden units)
    "S1": (1, 100, 32, 64),
    "S2": (1, 100, 128, 256),
    "S3": (32, 100, 128, 256),
    "S4": (256, 50, 256, 512),
}
TARGET_SPEEDUP = {"S1": 15.0, "S2": 5.0, "S3": 1.5, "S4": 1.5}


def _median_times(functions, repeats, min_sample_s=0.02, settings=RunSettings()):
    """Median seconds per call of each function over `repeats` interleaved rounds.

    In each round every function takes one sample: `settings.quiet_s` idle (the
    previous function's thread pools stop spinning: ONNX Runtime's spins ~40 ms after
    its last run), `settings.warm_s` of untimed calls (the caches refill and this
    function's own threads wake, as in steady use; see bench.backend_base.RunSettings),
    then enough timed calls to last `min_sample_s`.
    """
    calibration = dataclasses.replace(settings, warmup=1, min_sample_s=min_sample_s,
                                      max_calls_per_sample=50)
    calls = {name: calibrate(function, (), calibration)
             for name, function in functions.items()}
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            settle(function, settings.quiet_s, settings.warm_s)
            start = time.perf_counter()
            for _ in range(calls[name]):
                function()
            times[name].append((time.perf_counter() - start) / calls[name])
    return {name: float(np.median(values)) for name, values in times.items()}


def _onnx_lstm(weights, input_size, units):
    """An ONNX LSTM session with Keras weights (gate order i,f,c,o -> ONNX i,o,f,c)."""
    try:
        import onnx
        import onnxruntime
        from onnx import TensorProto, helper
    except ImportError:
        return None
    kernel, recurrent_kernel, bias = weights

    def reorder(matrix):  # columns i,f,c,o -> rows i,o,f,c (ONNX: [4H, in])
        i, f, c, o = np.split(matrix, 4, axis=-1)
        return np.concatenate([i, o, f, c], axis=-1).T

    w = reorder(kernel)[None].astype(np.float32)
    r = reorder(recurrent_kernel)[None].astype(np.float32)
    b = np.concatenate([reorder(bias[None])[:, 0], np.zeros(4 * units)])[None].astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["X", "W", "R", "Bias"], ["Y"], hidden_size=units)],
        "lstm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, None, input_size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.ravel()),
         helper.make_tensor("R", TensorProto.FLOAT, r.shape, r.ravel()),
         helper.make_tensor("Bias", TensorProto.FLOAT, b.shape, b.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])

    def run(x):  # ONNX is time-major: (T, B, I) -> Y (T, 1, B, H)
        y = session.run(None, {"X": np.ascontiguousarray(x.transpose(1, 0, 2))})[0]
        return y[:, 0].transpose(1, 0, 2)
    return run


def bench_size(label, size, repeats):
    import keras

    import rshop_ir
    from recurrentshop import LSTMCell

    batch, steps, input_size, units = size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, steps, input_size)).astype(np.float32)
    inputs = keras.Input((steps, input_size))
    reference_layer = LSTMCell(units, input_dim=input_size).get_layer(backend="keras",
                                                                      return_sequences=True)
    reference = keras.Model(inputs, reference_layer(inputs))
    scale = 1.0 / np.sqrt(input_size + units)   # unit-scale pre-activations
    weights = [scale * rng.standard_normal(w.shape).astype(np.float32)
               for w in reference_layer.get_weights()]
    reference_layer.set_weights(weights)
    keras_lstm = keras.layers.LSTM(units, return_sequences=True)
    keras_model = keras.Model(inputs, keras_lstm(inputs))
    keras_lstm.set_weights(weights)
    compiled = rshop_ir.compile(reference_layer)

    expected = np.asarray(reference.predict_on_batch(x))
    def run_compiled():
        return compiled(x)

    run_compiled.finish_compiles = compiled.finish_compiles   # see runner.finish_compiles
    candidates = {"compiled": run_compiled,
                  "keras.layers.LSTM": lambda: np.asarray(keras_model.predict_on_batch(x))}
    onnx_run = _onnx_lstm(weights, input_size, units)
    if onnx_run is not None:
        candidates["onnxruntime"] = lambda: onnx_run(x)
    for name, function in candidates.items():
        error = float(np.max(np.abs(function() - expected)))
        if error > 1e-4:
            raise AssertionError(f"{label}: {name} differs from the reference by {error}")
    functions = {"reference": lambda: reference.predict_on_batch(x), **candidates}
    times = _median_times(functions, repeats)
    flops = 2.0 * batch * steps * (input_size + units) * 4 * units
    return times, flops / times["compiled"] / 1e9, onnx_run is not None


def sgemm_rate(repeats=5):
    batch, steps, input_size, units = SIZES["S4"]
    rng = np.random.default_rng(0)
    rates = {}
    for name, (m, k, n) in {"input GEMM (B*T x I x 4H)": (batch * steps, input_size, 4 * units),
                            "recurrent GEMM (B x H x 4H)": (batch, units, 4 * units)}.items():
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        out = np.empty((m, n), np.float32)
        np.dot(a, b, out=out)
        seconds = _median_times({"gemm": lambda: np.dot(a, b, out=out)}, repeats * 4)["gemm"]
        rates[name] = 2.0 * m * k * n / seconds / 1e9
    return rates


COMPILE_SCRIPT = textwrap.dedent("""
    import time, numpy as np
    import rshop_ir
    from rshop_ir import examples
    from rshop_ir.bound import BoundProgram
    program = examples.lstm_program(32, 64, return_sequences=True)
    bound = BoundProgram(program, examples.random_weights(program))
    x = np.ones((1, 100, 32), np.float32)
    start = time.perf_counter()
    compiled = rshop_ir.compile(bound)
    compiled(x)
    first = time.perf_counter() - start
    start = time.perf_counter()
    compiled(x)
    print("SECONDS", first - (time.perf_counter() - start))
""")

PEAK_SCRIPT = textwrap.dedent("""
    import sys
    from bench.fma_peak import fma_peak_rate
    print("GFLOPS", fma_peak_rate(int(sys.argv[1])))
""")

MEMORY_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    import rshop_ir
    from rshop_ir import examples
    from rshop_ir.bound import BoundProgram

    def status_kb(field):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1])

    steps = int(sys.argv[1])
    program = examples.lstm_program(32, 64, return_sequences=True)
    compiled = rshop_ir.compile(BoundProgram(program, examples.random_weights(program)))
    compiled(np.ones((1, 10, 32), np.float32))        # compile / load first
    x = np.ones((1, steps, 32), np.float32)
    baseline = status_kb("VmRSS:")
    with open("/proc/self/clear_refs", "w") as clear:   # peak RSS := current RSS
        clear.write("5")
    outputs = compiled(x)                               # [y (1, T, 64), h_T, c_T]
    peak = status_kb("VmHWM:")
    print("GROWTH_MB", (peak - baseline) / 1024.0
          - sum(output.nbytes for output in outputs) / 2 ** 20)
""")


ALONE_SCRIPT = textwrap.dedent("""
    import sys, time, numpy as np
    import rshop_ir
    from rshop_ir import examples
    from rshop_ir.bound import BoundProgram

    batch, steps, features, units = (int(value) for value in sys.argv[1:5])
    program = examples.lstm_program(features, units, return_sequences=True)
    compiled = rshop_ir.compile(BoundProgram(program, examples.random_weights(program)))
    x = np.random.default_rng(0).standard_normal((batch, steps, features)).astype(np.float32)
    one = compiled(x)
    for got, expected in zip(compiled(x, team_size=1), one):   # [y, h_T, c_T]
        np.testing.assert_allclose(got, expected, atol=1e-5)
    from bench.runner import finish_compiles

    def call():
        return compiled(x)

    call.finish_compiles = compiled.finish_compiles   # the team's kernel's compile
    finish_compiles(call, ())
    times = {"default": [], "one": []}
    for _ in range(8):                 # rounds; in each, 2 untimed + 5 timed calls a mode
        for mode, kwargs in (("default", {}), ("one", {"team_size": 1})):
            for call in range(7):
                start = time.perf_counter()
                compiled(x, **kwargs)
                if call >= 2:
                    times[mode].append(time.perf_counter() - start)
    print("SECONDS", np.median(times["default"]))
    print("ONE_THREAD_SECONDS", np.median(times["one"]))
""")


def alone(size):
    """(default, one thread) seconds per call of the compiled LSTM program of
    `size` (an IR program: no Keras variables to re-read) in a fresh process that runs
    nothing else: no Keras model or ONNX Runtime session whose thread pools spin next
    to the kernel. By default a one-row call with a big recurrent weight runs on a team
    of threads (kernels/cpu/team.py); `team_size=1` shows what the team gives."""
    output = subprocess.run([sys.executable, "-c", ALONE_SCRIPT, *map(str, size)],
                            capture_output=True, text=True, timeout=600)
    values = dict(line.split()[:2] for line in output.stdout.splitlines()
                  if line.endswith(tuple("0123456789")) and "SECONDS" in line)
    if len(values) != 2:
        raise RuntimeError(output.stderr[-2000:])
    return float(values["SECONDS"]), float(values["ONE_THREAD_SECONDS"])


def _subprocess_value(script, env, *arguments):
    output = subprocess.run([sys.executable, "-c", script, *arguments], env=env,
                            capture_output=True, text=True, timeout=600)
    for line in output.stdout.splitlines():
        if line.split()[:1] and line.split()[0] in ("SECONDS", "GROWTH_MB", "GFLOPS"):
            return float(line.split()[1])
    raise RuntimeError(output.stderr[-2000:])


def compile_times():
    with tempfile.TemporaryDirectory() as directory:
        # Numba's own cache (the support modules' functions) starts empty too: the
        # first compile after an install.
        env = {**os.environ, "RSHOP_CACHE_DIR": directory, "NUMBA_CACHE_DIR": directory}
        # Python keeps the modules' bytecode as an installed package has it (an
        # environment setting PYTHONDONTWRITEBYTECODE would have every process compile
        # the project's sources again: 0.13 s of a warm start, BENCHMARKS run 33).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([sys.executable, "-c", "import rshop_ir.kernels.cpu, rshop_ir.compile"],
                       env=env, check=True, timeout=600)           # the bytecode written
        first = _subprocess_value(COMPILE_SCRIPT, env)
        cached = _subprocess_value(COMPILE_SCRIPT, env)
    return first, cached


def memory_growth():
    with tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "RSHOP_CACHE_DIR": directory}
        return {steps: _subprocess_value(MEMORY_SCRIPT, env, str(steps))
                for steps in (100, 100_000)}


def _print_peak_share(row):
    """How close the kernel at S4 comes to this machine's float32 FMA peak (fma_peak.py,
    all of Numba's threads), and what the S4 target would need of it."""
    import numba

    label, _, times, gflops = row
    threads = min(numba.config.NUMBA_NUM_THREADS, os.cpu_count() or 1)
    # in a fresh process: this one's thread pools (OpenBLAS's, ONNX Runtime's) may
    # still spin on the cores after the timed calls
    peak = _subprocess_value(PEAK_SCRIPT, dict(os.environ), str(threads))
    needed = gflops * times["compiled"] * TARGET_SPEEDUP[label] / times["reference"]
    print(f"float32 FMA peak, {threads} threads (bench.fma_peak): {peak:.1f} GFLOP/s; the "
          f"kernel at {label} reaches {100 * gflops / peak:.0f}% of it; "
          f"{TARGET_SPEEDUP[label]}x the reference would need {needed:.1f} GFLOP/s = "
          f"{100 * needed / peak:.0f}% of it")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
          f"python {platform.python_version()}")
    print(f"command: python -m bench.cpu_kernels {' '.join(argv or sys.argv[1:])}")
    rows = []
    has_onnx = False
    for label in args.sizes.split(","):
        times, gflops, has_onnx = bench_size(label, SIZES[label], args.repeats)
        rows.append((label, SIZES[label], times, gflops))
    header = (f"{'size':4} {'(B,T,I,H)':20} {'reference ms':>13} {'keras.LSTM ms':>14} "
              f"{'compiled ms':>12} {'vs ref':>8} {'vs LSTM':>8} {'target':>7} {'GFLOP/s':>8}")
    if has_onnx:
        header += f" {'onnx ms':>8} {'c/onnx':>7}"
    print(header)
    for label, size, times, gflops in rows:
        speedup = times["reference"] / times["compiled"]
        line = (f"{label:4} {str(size):20} {times['reference'] * 1e3:13.2f} "
                f"{times['keras.layers.LSTM'] * 1e3:14.2f} {times['compiled'] * 1e3:12.3f} "
                f"{speedup:7.1f}x {times['keras.layers.LSTM'] / times['compiled']:7.1f}x "
                f"{'ok' if speedup >= TARGET_SPEEDUP[label] else 'MISS':>7} {gflops:8.1f}")
        if "onnxruntime" in times:
            line += (f" {times['onnxruntime'] * 1e3:8.2f} "
                     f"{times['compiled'] / times['onnxruntime']:7.2f}")
        print(line)
    if not has_onnx:
        print("onnxruntime: not installed (optional peer, `pip install onnx onnxruntime`)")
    for label, size, times, _ in rows:
        if size[0] == 1:
            default, one_thread = alone(size)
            print(f"{label} compiled IR program alone in a fresh process: "
                  f"{default * 1e3:.3f} ms = {times['reference'] / default:.1f}x the "
                  f"reference time above ({one_thread * 1e3:.3f} ms with team_size=1)")
    if "S4" in args.sizes:
        rates = sgemm_rate()
        s4 = [row for row in rows if row[0] == "S4"][0]
        for name, rate in rates.items():
            print(f"numpy sgemm at S4 {name}: {rate:.1f} GFLOP/s")
        best = max(rates.values())
        print(f"kernel at S4: {s4[3]:.1f} GFLOP/s = {100 * s4[3] / best:.0f}% of the best "
              f"sgemm rate (target >= 70%)")
        _print_peak_share(s4)
    first, cached = compile_times()
    print(f"first compile of an LSTM (1,100,32,64), fresh process, empty cache: {first:.2f} s "
          f"(target <= 3 s)")
    print(f"fresh process, warm disk cache (compile() + first call minus a call): "
          f"{cached:.2f} s (target <= 0.5 s)")
    if not args.skip_memory:
        growth = memory_growth()
        for steps, megabytes in growth.items():
            print(f"peak RSS growth of one call beyond its output, T={steps}: "
                  f"{megabytes:.1f} MB (target <= ~32 MB; Linux VmHWM reset before "
                  f"the call, input allocated before)")


if __name__ == "__main__":
    main()
