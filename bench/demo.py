"""`make demo`: the main job, a quick benchmark of the compiler against the Keras reference.

    python -m bench.demo            (what `make demo` runs)

An LSTM (standard cell) and an MGU (a custom step model no library ships) at two sizes,
S1 = (1, 100, 32, 64) and S3 = (32, 100, 128, 256) as (batch, time, input, hidden), on
the Keras reference (recurrentshop on Keras's time loop), the compiled Numba CPU kernels
(`rshop_ir.compile`), and every installed peer (keras.layers.LSTM, ONNX Runtime,
PyTorch, JAX) where it has an equivalent. Every output is checked against the reference
before it is timed. Prints the table, a summary, and where the JSON and the plot went
(bench_results/). Runs in about a minute on 2 cores. For more, see `python -m bench -h`.
"""

import os
import sys
import time

from .cli import RESULTS_FOLDER, build_parser, run

DEMO_ARGUMENTS = [
    "--models", "lstm", "mgu",
    "--sizes", "S1", "S3",
    "--backends", "keras-reference", "numba-cpu", "keras-builtin", "onnxruntime", "torch",
    "jax",
    "--repeat", "5",
    "--warmup", "1",
    "--json", os.path.join(RESULTS_FOLDER, "demo.json"),
    "--plot", os.path.join(RESULTS_FOLDER, "demo.png"),
]


def summary(rows):
    """Lines: the compiled backend's speedups, or why it did not run."""
    lines = []
    for row in rows:
        if row["backend"] != "numba-cpu":
            continue
        where = f"{row['model']:<5} {row['size']['name']}"
        if row["status"] != "ok":
            lines.append(f"{where}: numba-cpu {row['status']}: {row['note']}")
            continue
        peer = ""
        if row["speedup_vs_best_peer"] is not None and row["best_peer"] != "numba-cpu":
            peer = (f", {row['speedup_vs_best_peer']:.2f}x vs the fastest peer "
                    f"({row['best_peer']})")
        lines.append(f"{where}: numba-cpu {row['ms_per_call']:.3f} ms/call = "
                     f"{row['speedup_vs_reference']:.1f}x the Keras reference{peer}; "
                     f"compile + first call {row['first_call_s']:.1f} s")
    return lines


def main(argv=None):
    start = time.perf_counter()
    extra = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(DEMO_ARGUMENTS + extra)
    document = run(args, "python -m bench.demo " + " ".join(extra))
    print()
    lines = summary(document["results"])
    if not any(row["backend"] == "numba-cpu" and row["status"] == "ok"
               for row in document["results"]):
        lines.append("The compiled backend did not run here (see above); the table "
                     "shows the reference and the peers only.")
    for line in lines:
        print(line)
    print(f"demo finished in {time.perf_counter() - start:.0f} s. More: python -m bench -h")
    return document


if __name__ == "__main__":
    main()
