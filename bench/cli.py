"""`python -m bench` / `rshop-bench`: benchmark recurrent models across backends.

    python -m bench --quick
    python -m bench --suite standard custom --sizes S1 S3 8,50,64,128 \
        --backends keras-reference numba-cpu torch onnxruntime --repeat 15 --threads 2

Every backend's output is checked against the Keras reference before it is timed; the
table gives ms per call, speedups within the run and GFLOP/s; --json keeps every raw
timing (schema in bench/report.py) and --plot draws time per step against size.
"""

import argparse
import os
import shlex
import sys
from datetime import datetime, timezone

from .sizes import DEFAULT_SIZES, PRESETS, QUICK_SIZES, parse_sizes

RESULTS_FOLDER = "bench_results"
QUICK_REPEAT = 3


def build_parser():
    parser = argparse.ArgumentParser(
        prog="rshop-bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="size presets (B,T,I,H): " + ", ".join(
            f"{name}=({s.batch},{s.time},{s.input},{s.hidden})"
            for name, s in PRESETS.items()))
    parser.add_argument("--suite", nargs="+", default=["all"], metavar="SUITE",
                        help="standard, custom, models or all (default: all)")
    parser.add_argument("--models", nargs="+", metavar="MODEL",
                        help="only these models (e.g. lstm mgu); overrides --suite")
    parser.add_argument("--sizes", nargs="+", metavar="SIZE",
                        help="presets (S0..S4) or B,T,I,H lists; default "
                             f"{' '.join(DEFAULT_SIZES)} ({' '.join(QUICK_SIZES)} with --quick)")
    parser.add_argument("--backends", nargs="+", default=["all"], metavar="BACKEND",
                        help="keras-reference keras-builtin keras-xla numba-cpu numba-cuda "
                             "onnxruntime torch jax, or all (default); the reference always "
                             "runs")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: sizes {' '.join(QUICK_SIZES)}, "
                             f"{QUICK_REPEAT} repeats, 1 warm-up call")
    parser.add_argument("--repeat", type=int, help="timed samples per backend (default 10)")
    parser.add_argument("--warmup", type=int, help="untimed calls before timing (default 2)")
    parser.add_argument("--threads", type=int,
                        help="threads for numba, BLAS, TensorFlow, torch and ONNX Runtime "
                             "(default: each library's own)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="max-abs difference from the reference (default 1e-4)")
    parser.add_argument("--json", default=os.path.join(RESULTS_FOLDER, "rshop-bench.json"),
                        metavar="PATH", help="where to write the JSON (default %(default)s)")
    parser.add_argument("--plot", default=os.path.join(RESULTS_FOLDER, "rshop-bench.png"),
                        metavar="PATH", help="where to write the PNG (default %(default)s)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the table as markdown (for BENCHMARKS.md)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def settings_from(args):
    from .backend_base import RunSettings

    settings = RunSettings(tolerance=args.tolerance, threads=args.threads)
    if args.quick:
        settings.repeat, settings.warmup, settings.min_sample_s = QUICK_REPEAT, 1, 0.01
    if args.repeat is not None:
        settings.repeat = args.repeat
    if args.warmup is not None:
        settings.warmup = args.warmup
    for name, value in (("repeat", settings.repeat), ("warmup", settings.warmup),
                        ("threads", settings.threads or 1)):
        if value < (1 if name != "warmup" else 0):
            raise ValueError(f"--{name} must be positive. Received: {value}")
    return settings


def resolve(args):
    """The validated plan: sizes, settings, cases and backend names (ValueError if bad).

    Sets the thread limits before the model libraries start (suites imports Keras)."""
    from .machine import configure_threads

    sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    settings = settings_from(args)
    thread_notes = configure_threads(settings.threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from .backends import parse_backends
    from .suites import select_cases

    return sizes, settings, thread_notes, select_cases(args.suite, args.models), \
        parse_backends(args.backends)


def run(args, command, registry=None, plan=None):
    """Runs `plan` (default: `resolve(args)`) and reports; returns the JSON document."""
    from . import report
    from .machine import describe, machine_info
    from .runner import run_benchmark

    started = datetime.now(timezone.utc)
    sizes, settings, thread_notes, cases, backend_names = plan or resolve(args)
    machine = machine_info()
    print(f"rshop-bench: {len(cases)} models x {len(sizes)} sizes x "
          f"{len(backend_names)} backends; {settings.repeat} repeats, median")
    print(f"machine: {describe(machine)}")
    rows = run_benchmark(cases, sizes, backend_names, settings, registry=registry,
                         show_progress=not args.no_progress)
    report.render_table(rows, title="ms per call (median); x = speedup, >1 is faster")
    if args.markdown:
        print()
        print(report.markdown_table(rows))
    recorded = {**vars(settings), "suites": args.suite, "models": args.models,
                "sizes": [size.as_dict() for size in sizes], "backends": backend_names,
                "thread_notes": thread_notes}
    document = report.build_document(rows, machine, recorded, command, started)
    if args.json:
        print(f"JSON (all raw timings): {report.write_json(document, args.json)}")
    if args.plot:
        try:
            print(f"plot (time per step vs size): {report.write_plot(rows, args.plot)}")
        except ImportError as error:
            print(f"plot skipped: {error} (pip install matplotlib, or the '.[bench]' extra)")
    return document


def main(argv=None, registry=None):
    """Entry point; returns the process exit status. `registry` is for tests."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plan = resolve(args)  # usage errors (bad size, backend, suite) before any work
    except ValueError as error:
        parser.error(str(error))
    run(args, "rshop-bench " + shlex.join(argv), registry=registry, plan=plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
