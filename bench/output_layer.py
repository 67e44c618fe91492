"""An output layer inside the loop vs after it: `python -m bench.output_layer`.

The model is `rshop_ir.examples.output_layer_program`: h' = tanh(x_t W + h U),
y = tanh(h' V + c), V of (hidden, outputs). Compiled as usual, the output layer runs after
the loop, one GEMM per chunk of steps (passes/sink_output_projection.py); compiled with
the pass left out of the pipeline, each step multiplies h' by V. Both objects live in
one process and are timed in alternated rounds (median of the rounds' medians); their
outputs must agree to 1e-5.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np


def _compiled_pair(program, weights):
    """(output layer after the loop, output layer in the loop) for `program`."""
    import rshop_ir
    from rshop_ir.bound import BoundProgram
    from rshop_ir.passes import PIPELINE, optimize

    compile_module = sys.modules["rshop_ir.compile"]
    bound = BoundProgram(program, weights)
    after = rshop_ir.compile(bound)
    without = tuple(item for item in PIPELINE if item[0] != "sink_output_projection")
    original = compile_module.optimize
    compile_module.optimize = lambda target: optimize(target, passes=without)
    try:
        inside = rshop_ir.compile(bound)
    finally:
        compile_module.optimize = original
    return after, inside


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=int, nargs="+", default=[128, 512, 2048, 8192])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--input", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    from rshop_ir import examples

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; command: python -m "
          f"bench.output_layer --outputs {' '.join(map(str, args.outputs))} --batches "
          f"{' '.join(map(str, args.batches))} --steps {args.steps} --input {args.input} "
          f"--hidden {args.hidden} --rounds {args.rounds}")
    print(f"{'B':>3} {'T':>5} {'I':>5} {'H':>5} {'outputs':>8} {'in the loop ms':>15} "
          f"{'after the loop ms':>18} {'speed-up':>9}")
    rng = np.random.default_rng(0)
    for outputs in args.outputs:
        program = examples.output_layer_program(args.input, args.hidden, outputs=outputs)
        weights = examples.random_weights(program, scale=0.05)
        after, inside = _compiled_pair(program, weights)
        for batch in args.batches:
            x = rng.standard_normal((batch, args.steps, args.input)).astype(np.float32)
            for got, expected in zip(after(x), inside(x)):
                np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
            medians = {"after": [], "inside": []}
            calls = max(3, int(0.2 / _seconds(inside, x)))
            for _ in range(args.rounds):
                for name, compiled in (("inside", inside), ("after", after)):
                    medians[name].append(np.median(
                        [_seconds(compiled, x) for _ in range(calls)]))
            inside_ms = 1e3 * np.median(medians["inside"])
            after_ms = 1e3 * np.median(medians["after"])
            print(f"{batch:3d} {args.steps:5d} {args.input:5d} {args.hidden:5d} "
                  f"{outputs:8d} {inside_ms:15.3f} {after_ms:18.3f} "
                  f"{inside_ms / after_ms:8.2f}x")


def _seconds(compiled, x) -> float:
    start = time.perf_counter()
    compiled(x)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
