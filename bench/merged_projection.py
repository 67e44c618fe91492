"""The wide-batch kernel against the plain one, side by side, per LSTM size.

    python -m bench.merged_projection [--repeats N] [--sizes B,T,I,H ...]

For each size one float32 LSTM IR program (rshop_ir.examples.lstm_program, weights
within 1/sqrt(I + H)) is compiled twice: one compiled object runs its calls with the
wide-batch variant (recurrent products taking the step's input projection in:
kernels/cpu/merged_projection.py), the other with the plain kernel (the hoisted
projection computed a chunk of steps at a time), by patching the runtime's
MERGED_MIN_ROWS and MERGED_MIN_FLOPS around each call (the sizes below the default
thresholds included). Both run as the runtime runs them (row slices on
all cores from 8 rows). Outputs are compared, then medians of interleaved rounds of
3 calls each (one untimed call first) are printed with their ratio.
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

SIZES = ["8,100,32,64", "16,100,128,256", "32,100,128,256", "128,100,128,256",
         "8,100,128,256", "256,50,256,512"]


def _timed(calls: dict, repeats: int) -> dict:
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            call()
            start = time.perf_counter()
            for _ in range(3):
                call()
            times[name].append((time.perf_counter() - start) / 3)
    return {name: float(np.median(values)) for name, values in times.items()}


def compare(size: tuple, repeats: int) -> tuple:
    """(plain ms, wide ms, max |difference|, whether the wide variant ran)."""
    import rshop_ir
    from rshop_ir import examples
    from rshop_ir.bound import BoundProgram
    from rshop_ir.kernels.cpu import runtime

    batch, steps, input_size, units = size
    program = examples.lstm_program(input_size, units, return_sequences=True)
    weights = examples.random_weights(program, scale=1.0 / np.sqrt(input_size + units))
    x = np.random.default_rng(0).standard_normal((batch, steps, input_size)).astype(
        np.float32)
    wide, plain = (rshop_ir.compile(BoundProgram(program, weights)) for _ in range(2))
    defaults = runtime.MERGED_MIN_ROWS, runtime.MERGED_MIN_FLOPS

    def call(compiled, min_rows):
        runtime.MERGED_MIN_ROWS, runtime.MERGED_MIN_FLOPS = min_rows, 0
        try:
            return compiled(x)[0]
        finally:
            runtime.MERGED_MIN_ROWS, runtime.MERGED_MIN_FLOPS = defaults

    calls = {"plain": lambda: call(plain, 1 << 62), "wide": lambda: call(wide, 1)}
    calls["wide"]()
    wide.finish_compiles()          # the variant compiles beside the first call
    difference = float(np.max(np.abs(calls["wide"]() - calls["plain"]())))
    ran = wide._variants.get("wide") is not None
    times = _timed(calls, repeats)
    return times["plain"] * 1e3, times["wide"] * 1e3, difference, ran


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--sizes", nargs="*", default=SIZES)
    args = parser.parse_args(argv)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print("size (B,T,I,H)          plain ms    wide ms   wide/plain   max |diff|")
    for text in args.sizes:
        size = tuple(int(part) for part in text.split(","))
        plain, wide, difference, ran = compare(size, args.repeats)
        note = "" if ran else "   (no wide variant: the plain kernel both times)"
        print(f"{str(size):22s} {plain:10.3f} {wide:10.3f} {wide / plain:12.3f} "
              f"{difference:12.2e}{note}")


if __name__ == "__main__":
    main()
