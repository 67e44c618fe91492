"""The measuring method: check every backend against the reference, then time them
interleaved.

For every (model, size):

1. build the case and compute the reference output, `model(x, training=False)`;
2. for every backend: `prepare` (compile) and make the first call, timed together as
   `first_call_s`; compare with the reference (max-abs difference). A backend that
   disagrees by more than `settings.tolerance` is WRONG and is never timed; one that has
   no version of the case is n/a; one that raises is an error (unsupported for the
   compiler's `UnsupportedError`);
3. warm-up calls (untimed), then, for a backend that compiles in the background
   (numba-cpu: the automatic team's kernel), calls until that compile is done; the
   number of calls per sample is chosen so that a sample
   lasts at least `min_sample_s` (short calls are timed in loops, long ones once),
   from the fastest of a few calls;
4. `repeat` rounds; in each round every passing backend takes one sample, in an order
   rotated by one each round, so that machine drift hits every backend alike; each
   sample starts after `settings.quiet_s` idle and `settings.warm_s` of untimed
   calls, so that no other backend's thread pool still spins on a core and the
   sampled one's threads are awake (see RunSettings);
5. medians, and the ratios between backends of the same case within this run.

Each result is a plain dict (one row of the JSON, see report.py for the schema).
"""

import gc
import math
import time

import numpy as np

from .backend_base import NotApplicable, RunSettings
from .backends import BACKENDS, REFERENCE
from .suites import as_numpy_list

MAX_NOTE = 300


def _note(error):
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    text = text[0] if text else type(error).__name__
    return text if len(text) <= MAX_NOTE else text[:MAX_NOTE - 3] + "..."


def max_abs_difference(expected, outputs):
    """Largest |expected - output| over all outputs; inf when the structure, the shapes
    differ or the output is not finite."""
    outputs = as_numpy_list(outputs)
    if len(outputs) != len(expected):
        return math.inf
    worst = 0.0
    for want, got in zip(expected, outputs):
        if want.shape != got.shape:
            return math.inf
        if want.size == 0:
            continue
        difference = np.abs(want.astype("float64") - got.astype("float64"))
        if not np.all(np.isfinite(difference)):
            return math.inf
        worst = max(worst, float(difference.max()))
    return worst


def _new_row(case, backend):
    return {
        "suite": case.suite, "model": case.name, "size": case.size.as_dict(),
        "backend": backend.name, "kind": backend.kind, "status": "pending", "note": "",
        "max_abs_error": None, "first_call_s": None, "calls_per_sample": None,
        "samples_s": [], "median_s": None, "ms_per_call": None, "ms_per_step": None,
        "flops": case.flops, "gflops": None, "speedup_vs_reference": None,
        "speedup_vs_best_peer": None, "best_peer": None,
    }


class _NoProgress:
    def update(self, count=1):
        pass

    def set_description(self, text):
        pass

    def set_postfix_str(self, text):
        pass

    def close(self):
        pass


def _progress(total, enabled):
    if not enabled:
        return _NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoProgress()
    return tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)


def _prepare_and_check(backend, case, expected, settings, row):
    """Compiles and checks one backend; returns its callable when it may be timed."""
    try:
        start = time.perf_counter()
        function = backend.prepare(case, settings)
        outputs = function(*case.inputs)
        row["first_call_s"] = time.perf_counter() - start
    except NotApplicable as error:
        row["status"], row["note"] = "n/a", str(error)
        return None
    except Exception as error:  # recorded, never fatal: the run goes on
        unsupported = type(error).__name__ in ("UnsupportedError", "NotImplementedError")
        row["status"] = "unsupported" if unsupported else "error"
        row["note"] = _note(error)
        return None
    error = max_abs_difference(expected, outputs)
    row["max_abs_error"] = error if math.isfinite(error) else None
    if not error <= settings.tolerance:
        row["status"] = "wrong"
        shown = f"{error:.3g}" if math.isfinite(error) else "shape mismatch or non-finite"
        row["note"] = (f"output differs from {REFERENCE}: max-abs {shown} > "
                       f"{settings.tolerance:g}; not timed")
        return None
    row["status"] = "ok"
    return function


CALIBRATION_CALLS = 3
COMPILE_CALLS = 40        # calls within which the CPU runtime wants its team's kernel
COMPILE_CALLS_S = 2.0     # ... or seconds of them


def finish_compiles(function, inputs) -> None:
    """Call `function` until the kernels it compiles in the background are there, when
    it has a `finish_compiles()` that waits for them (numba-cpu: the automatic team's
    kernel compiles once the first calls ran on one thread, kernels/cpu/team_choice.py
    and background_compile.py; a call timed beside that compile would wait for the GIL):
    COMPILE_CALLS calls or COMPILE_CALLS_S seconds of them, each followed by the wait."""
    finish = getattr(function, "finish_compiles", None)
    if finish is None:
        return
    start = time.perf_counter()
    for _ in range(COMPILE_CALLS):
        function(*inputs)
        finish()
        if time.perf_counter() - start >= COMPILE_CALLS_S:
            break


def calibrate(function, inputs, settings):
    """Calls per sample, from the fastest of CALIBRATION_CALLS calls after the warm-up
    and the background compiles (`finish_compiles`): a sample of one call timed from a
    call that still compiled would be all noise."""
    for _ in range(settings.warmup):
        function(*inputs)
    finish_compiles(function, inputs)
    single = math.inf
    for _ in range(CALIBRATION_CALLS):
        start = time.perf_counter()
        function(*inputs)
        single = min(single, time.perf_counter() - start)
    single = max(single, 1e-9)
    return int(min(settings.max_calls_per_sample,
                   max(1, math.ceil(settings.min_sample_s / single))))


def settle(call, quiet_s: float, warm_s: float) -> None:
    """Idle `quiet_s` (other libraries' thread pools stop spinning), then `call()`
    untimed for `warm_s`, at least once (its own threads wake); see RunSettings."""
    time.sleep(quiet_s)
    start = time.perf_counter()
    call()
    while time.perf_counter() - start < warm_s:
        call()


def _sample(function, inputs, calls, settings=None):
    gc.collect()
    if settings is not None:
        settle(lambda: function(*inputs), settings.quiet_s, settings.warm_s)
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            function(*inputs)
        return (time.perf_counter() - start) / calls
    finally:
        gc.enable()


def _time_interleaved(timed, inputs, settings, bar):
    """`timed`: [(row, function)]. Fills each row's samples, rotating the order."""
    for row, function in timed:
        row["calls_per_sample"] = calibrate(function, inputs, settings)
    for round_index in range(settings.repeat):
        shift = round_index % max(len(timed), 1)
        for row, function in timed[shift:] + timed[:shift]:
            row["samples_s"].append(_sample(function, inputs, row["calls_per_sample"],
                                            settings))
        bar.update(1)


def _summarise(rows, case):
    """Medians, GFLOP/s and the ratios within one case."""
    for row in rows:
        if row["status"] != "ok" or not row["samples_s"]:
            continue
        median = float(np.median(row["samples_s"]))
        row["median_s"] = median
        row["ms_per_call"] = 1000 * median
        row["ms_per_step"] = 1000 * median / case.size.time
        if case.flops:
            row["gflops"] = case.flops / median / 1e9
    timed = [row for row in rows if row["median_s"] is not None]
    reference = next((row for row in timed if row["backend"] == REFERENCE), None)
    peers = [row for row in timed if row["kind"] == "peer"]
    best_peer = min(peers, key=lambda row: row["median_s"]) if peers else None
    for row in timed:
        if reference is not None:
            row["speedup_vs_reference"] = reference["median_s"] / row["median_s"]
        if best_peer is not None:
            row["speedup_vs_best_peer"] = best_peer["median_s"] / row["median_s"]
            row["best_peer"] = best_peer["backend"]


def run_benchmark(cases, sizes, backend_names, settings=None, registry=None,
                  show_progress=True):
    """Runs every case at every size on every backend; returns the result rows.

    Args:
        cases: `(suite, builder)` pairs (suites.select_cases).
        sizes: `Size`s.
        backend_names: names in `registry`; the reference should come first.
        settings: `RunSettings`.
        registry: name -> `Backend` (default `backends.BACKENDS`; tests inject fakes).
        show_progress: draw a progress bar on stderr.
    """
    import keras

    settings = settings or RunSettings()
    registry = registry or BACKENDS
    backends = [registry[name] for name in backend_names]
    unavailable = {backend.name: backend.availability() for backend in backends}
    bar = _progress(len(cases) * len(sizes) * (len(backends) + settings.repeat),
                    show_progress)
    rows = []
    try:
        for _, build in cases:
            for size in sizes:
                bar.set_description(f"{build.__name__} {size.name}")
                keras.utils.set_random_seed(settings.seed)
                case = build(size, np.random.default_rng(settings.seed))
                expected = case.reference_outputs()
                case_rows, timed = [], []
                for backend in backends:
                    row = _new_row(case, backend)
                    case_rows.append(row)
                    if unavailable[backend.name]:
                        row["status"], row["note"] = "skipped", unavailable[backend.name]
                    else:
                        bar.set_postfix_str(f"{backend.name}: compile + check")
                        function = _prepare_and_check(backend, case, expected, settings,
                                                      row)
                        if function is not None:
                            timed.append((row, function))
                    bar.update(1)
                bar.set_postfix_str("timing")
                _time_interleaved(timed, case.inputs, settings, bar)
                _summarise(case_rows, case)
                rows.extend(case_rows)
                del case, timed
                gc.collect()
    finally:
        bar.close()
    return rows
