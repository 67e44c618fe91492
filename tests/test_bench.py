"""The benchmark harness's own logic (bench/): sizes, the correctness gate, ratios, peers
that are absent or not applicable, the peers' weight maps, JSON + PNG from the CLI.

Tiny sizes only (S0 = B2 T8 I4 H8): these tests check the method, not the speed.
"""

import json

import numpy as np
import pytest

from rshop_ir.bench import peers, report
from rshop_ir.bench.backend_base import Backend, NotApplicable, RunSettings
from rshop_ir.bench.backends import BACKENDS, REFERENCE, parse_backends
from rshop_ir.bench.cli import main
from rshop_ir.bench.runner import (CALIBRATION_CALLS, _summarise, calibrate,
                                   max_abs_difference, run_benchmark)
from rshop_ir.bench.sizes import PRESETS, Size, parse_size, parse_sizes
from rshop_ir.bench.suites import ALL_CASES, select_cases

TINY = PRESETS["S0"]
FAST = RunSettings(repeat=2, warmup=0, min_sample_s=0.0, max_calls_per_sample=1,
                   quiet_s=0.0, warm_s=0.0)


def _rows_by_backend(rows):
    return {row["backend"]: row for row in rows}


# ------------------------------------------------------------------ sizes
def test_parse_size_presets_and_lists():
    assert parse_size("S1") == Size("S1", 1, 100, 32, 64)
    assert parse_size("s4") == Size("S4", 256, 50, 256, 512)
    assert parse_size(" 8,50,64,128 ") == Size("8,50,64,128", 8, 50, 64, 128)
    assert parse_sizes(["S1;S2", "1,2,3,4", "S1"]) == [
        PRESETS["S1"], PRESETS["S2"], Size("1,2,3,4", 1, 2, 3, 4)]


@pytest.mark.parametrize("text", ["S9", "1,2,3", "1,2,3,4,5", "1,0,3,4", "a,b,c,d",
                                  "-1,2,3,4", "", "1.5,2,3,4"])
def test_parse_size_rejects_bad_strings(text):
    with pytest.raises(ValueError, match="B,T,I,H"):
        parse_size(text)


def test_cli_bad_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--sizes", "1,2,x,4", "--models", "lstm"])
    assert exit_info.value.code == 2
    assert "Bad size '1,2,x,4'" in capsys.readouterr().err


def test_parse_backends_puts_the_reference_first_and_rejects_unknown_names():
    assert parse_backends(["torch,numba-cpu", "torch"]) == [REFERENCE, "torch", "numba-cpu"]
    with pytest.raises(ValueError, match="Unknown backend 'tensorrt'"):
        parse_backends(["tensorrt"])
    with pytest.raises(ValueError, match="Unknown suite"):
        select_cases(["nonsense"])


# ------------------------------------------------------------------ correctness gate
class _Fake(Backend):
    """Returns the reference output plus `offset` (or a wrong shape); counts its calls."""

    kind = "ours"

    def __init__(self, name, offset=0.0, shape_bug=False):
        self.name, self.offset, self.shape_bug, self.calls = name, offset, shape_bug, 0

    def prepare(self, case, settings):
        expected = case.reference_outputs()[0]

        def run(*inputs):
            self.calls += 1
            if self.shape_bug:
                return expected[:, :-1]
            return expected + self.offset

        return run


def test_gate_reports_a_wrong_backend_and_never_times_it():
    wrong, off_by_shape = _Fake("fake-wrong", 1e-3), _Fake("fake-shape", shape_bug=True)
    right = _Fake("fake-right", 1e-6)
    registry = {**BACKENDS, "fake-wrong": wrong, "fake-shape": off_by_shape,
                "fake-right": right}
    rows = run_benchmark([ALL_CASES["simple_rnn"]], [TINY],
                         [REFERENCE, "fake-wrong", "fake-shape", "fake-right"], FAST,
                         registry=registry, show_progress=False)
    by_backend = _rows_by_backend(rows)
    assert by_backend["fake-wrong"]["status"] == "wrong"
    assert by_backend["fake-wrong"]["max_abs_error"] == pytest.approx(1e-3, rel=1e-3)
    assert "not timed" in by_backend["fake-wrong"]["note"]
    assert by_backend["fake-shape"]["status"] == "wrong"
    assert by_backend["fake-shape"]["max_abs_error"] is None
    for name, fake in (("fake-wrong", wrong), ("fake-shape", off_by_shape)):
        assert fake.calls == 1  # the checking call only
        assert by_backend[name]["samples_s"] == [] and by_backend[name]["median_s"] is None
        assert by_backend[name]["speedup_vs_reference"] is None
    # A backend within the tolerance is timed: 1 check + CALIBRATION_CALLS + 2
    # samples, each after one untimed settling call.
    assert by_backend["fake-right"]["status"] == "ok"
    assert right.calls == 1 + CALIBRATION_CALLS + 2 * 2
    assert len(by_backend["fake-right"]["samples_s"]) == 2
    assert by_backend[REFERENCE]["speedup_vs_reference"] == 1.0
    shown = "\n".join(" ".join(row) for row in report.table_rows(rows))
    assert "fake-wrong" in shown and "WRONG" in shown


def test_max_abs_difference_structure_shapes_and_nan():
    expected = [np.zeros((2, 3), "float32")]
    assert max_abs_difference(expected, np.full((2, 3), 0.5, "float32")) == 0.5
    assert max_abs_difference(expected, np.zeros((3, 2), "float32")) == np.inf
    assert max_abs_difference(expected, [expected[0], expected[0]]) == np.inf
    assert max_abs_difference(expected, np.full((2, 3), np.nan, "float32")) == np.inf


def test_calls_per_sample_come_from_the_fastest_calibration_call(monkeypatch):
    """A calibration call that compiles (a team's kernel, built after its first calls)
    does not make every sample a single call."""
    from rshop_ir.bench import runner

    clock = {"now": 0.0}
    costs = [0.001, 0.001, 7.0] + [0.001] * 10     # warm-up, warm-up, then a compile
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock["now"])

    def call():
        clock["now"] += costs.pop(0)

    settings = RunSettings(warmup=2, min_sample_s=0.02, max_calls_per_sample=200)
    assert CALIBRATION_CALLS >= 2
    assert calibrate(call, (), settings) == 20       # 0.02 s of 1 ms calls
    assert len(costs) == 10 - (CALIBRATION_CALLS - 1)


def test_calibration_waits_for_background_compiles(monkeypatch):
    """A function with `finish_compiles` (numba-cpu: the team's kernel compiles beside
    its calls) is called and waited for until its compiles are done, before any call
    is timed for calibration; COMPILE_CALLS_S bounds those calls."""
    from rshop_ir.bench import runner

    clock = {"now": 0.0}
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock["now"])
    events = []

    def call():
        events.append("call")
        clock["now"] += 0.001

    def finish():
        events.append("wait")
        if events.count("call") == 5:      # the 5th call in all started a 7 s compile
            clock["now"] += 7.0

    call.finish_compiles = finish
    settings = RunSettings(warmup=1, min_sample_s=0.02, max_calls_per_sample=200)
    assert runner.COMPILE_CALLS_S < 7.0
    assert calibrate(call, (), settings) == 20
    # warm-up, then call + wait until the compile's wait passed COMPILE_CALLS_S, then
    # the timed calibration calls
    assert events == ["call"] + ["call", "wait"] * 4 + ["call"] * CALIBRATION_CALLS
    events.clear()
    assert calibrate(lambda: events.append("plain"), (), settings) >= 1
    assert events == ["plain"] * (1 + CALIBRATION_CALLS)    # nothing to wait for


def test_ratios_are_computed_within_the_case():
    case = ALL_CASES["lstm"][1](TINY, np.random.default_rng(0))

    def row(backend, kind, samples, status="ok"):
        return {"backend": backend, "kind": kind, "status": status, "samples_s": samples,
                "median_s": None, "ms_per_call": None, "ms_per_step": None, "gflops": None,
                "speedup_vs_reference": None, "speedup_vs_best_peer": None,
                "best_peer": None}

    rows = [row(REFERENCE, "reference", [4.0, 4.0, 9.0]),
            row("numba-cpu", "ours", [1.0, 2.0, 1.0]),
            row("torch", "peer", [2.0, 2.0, 2.0]),
            row("onnxruntime", "peer", [3.0, 3.0, 3.0]),
            row("jax", "peer", [], status="wrong")]
    _summarise(rows, case)
    by_backend = _rows_by_backend(rows)
    assert by_backend["numba-cpu"]["median_s"] == 1.0
    assert by_backend["numba-cpu"]["speedup_vs_reference"] == 4.0
    assert by_backend["numba-cpu"]["speedup_vs_best_peer"] == 2.0
    assert by_backend["numba-cpu"]["best_peer"] == "torch"
    assert by_backend["onnxruntime"]["speedup_vs_best_peer"] == pytest.approx(2 / 3)
    assert by_backend["numba-cpu"]["ms_per_step"] == pytest.approx(1000 / TINY.time)
    assert by_backend["numba-cpu"]["gflops"] == pytest.approx(case.flops / 1e9)
    assert by_backend["jax"]["speedup_vs_reference"] is None


# ------------------------------------------------------------------ peers
def test_absent_peers_are_skipped_with_a_note(monkeypatch):
    real_import = peers._import

    def failing_import(name):
        if name.split(".")[0] in ("torch", "onnx", "onnxruntime", "jax"):
            raise ImportError(f"No module named {name!r} (simulated)")
        return real_import(name)

    monkeypatch.setattr(peers, "_import", failing_import)
    rows = run_benchmark([ALL_CASES["lstm"]], [TINY],
                         [REFERENCE, "torch", "onnxruntime", "jax"], FAST,
                         show_progress=False)
    by_backend = _rows_by_backend(rows)
    for name in ("torch", "onnxruntime", "jax"):
        assert by_backend[name]["status"] == "skipped"
        assert "not installed" in by_backend[name]["note"]
        assert "simulated" in by_backend[name]["note"]
    assert by_backend[REFERENCE]["status"] == "ok"
    assert any(line.startswith("torch skipped (lstm)") for line in report.notes(rows))


def test_conv_lstm_case_runs_compiled_whole_with_the_reference_numbers():
    """The convolutional front end compiles with the RNN (no part left to Keras) and
    its rows pass the harness's check against the reference."""
    import rshop_ir

    case = ALL_CASES["conv_lstm"][1](TINY, np.random.default_rng(2))
    assert rshop_ir.accelerate(case.model).fallbacks == []
    rows = run_benchmark([ALL_CASES["conv_lstm"]], [TINY], [REFERENCE, "numba-cpu"], FAST,
                         show_progress=False)
    compiled = _rows_by_backend(rows)["numba-cpu"]
    assert compiled["status"] == "ok" and compiled["max_abs_error"] <= 1e-4


def test_peers_and_builtins_are_not_applicable_to_custom_step_models():
    case = ALL_CASES["mgu"][1](TINY, np.random.default_rng(0))
    for backend in (*peers.PEERS, BACKENDS["keras-builtin"]):
        with pytest.raises(NotApplicable):
            backend.prepare(case, FAST)


@pytest.mark.parametrize("peer_name", ["onnxruntime", "torch", "jax"])
@pytest.mark.parametrize("model", ["simple_rnn", "gru", "lstm", "embedding_lstm_softmax",
                                   "stacked_lstm_dense"])
def test_peer_weight_maps_match_the_reference(peer_name, model):
    backend = BACKENDS[peer_name]
    if backend.availability() is not None:
        pytest.skip(backend.availability())
    case = ALL_CASES[model][1](Size("t", 3, 5, 4, 6), np.random.default_rng(1))
    outputs = backend.prepare(case, FAST)(*case.inputs)
    assert max_abs_difference(case.reference_outputs(), outputs) < 1e-5


# ------------------------------------------------------------------ end to end
def test_cli_quick_writes_json_and_png(tmp_path, capsys):
    json_path, plot_path = tmp_path / "out" / "run.json", tmp_path / "run.png"
    assert main(["--quick", "--models", "simple_rnn", "--sizes", "S0", "--no-progress",
                 "--backends", "keras-reference", "keras-builtin", "--repeat", "2",
                 "--json", str(json_path), "--plot", str(plot_path)]) == 0
    printed = capsys.readouterr().out
    assert "keras-builtin" in printed and str(json_path) in printed
    document = json.loads(json_path.read_text())
    assert document["schema"] == "rshop-bench" and document["version"] == report.VERSION
    assert {"created", "duration_s", "command", "machine", "settings",
            "results"} <= set(document)
    assert {"cpu", "cores", "blas", "versions"} <= set(document["machine"])
    assert document["settings"]["repeat"] == 2
    rows = document["results"]
    assert [row["backend"] for row in rows] == [REFERENCE, "keras-builtin"]
    expected_keys = {"suite", "model", "size", "backend", "kind", "status", "note",
                     "max_abs_error", "first_call_s", "calls_per_sample", "samples_s",
                     "median_s", "ms_per_call", "ms_per_step", "flops", "gflops",
                     "speedup_vs_reference", "speedup_vs_best_peer", "best_peer"}
    for row in rows:
        assert set(row) == expected_keys
        assert row["status"] == "ok" and row["size"]["hidden"] == TINY.hidden
        assert len(row["samples_s"]) == 2 and all(s > 0 for s in row["samples_s"])
        assert row["median_s"] == pytest.approx(float(np.median(row["samples_s"])))
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tiles_bench_checks_and_prints_every_shape(monkeypatch, capsys):
    """`python -m bench.tiles` compares the packed product with np.dot (it asserts
    they agree) and prints one line per dtype and shape with both rates, their ratio
    and the rate the packed product reads its weight at."""
    from rshop_ir.bench import tiles

    monkeypatch.setattr(tiles, "SHAPES", [(3, 17, 20), (4, 16, 16)])
    tiles.main(["--repeats", "1"])
    lines = [line.split() for line in capsys.readouterr().out.splitlines()
             if line.startswith("float")]
    assert [(line[0], line[1:6]) for line in lines] == [
        (dtype, shape) for dtype in ("float32", "float64")
        for shape in (["3", "x", "17", "x", "20"], ["4", "x", "16", "x", "16"])]
    for line in lines:
        blas_rate, tile_rate, ratio = float(line[6]), float(line[7]), float(line[8][:-1])
        assert blas_rate > 0 and tile_rate > 0
        assert ratio == pytest.approx(tile_rate / blas_rate, rel=0.1, abs=0.05)
        rows, contraction, columns = int(line[1]), int(line[3]), int(line[5])
        itemsize = 4 if line[0] == "float32" else 8
        # GFLOP/s x bytes per flop = GB/s: 2 flops per weight element per row
        assert float(line[9]) == pytest.approx(
            tile_rate * itemsize / (2 * rows), rel=0.1, abs=0.05)


def test_merged_projection_bench_runs_both_kernels_and_prints_a_row(capsys):
    """`python -m bench.merged_projection` runs one program on the plain kernel and on
    the wide-batch variant (it checks that the variant ran) and prints their times,
    ratio and largest difference per size."""
    from rshop_ir.bench import merged_projection

    merged_projection.main(["--repeats", "1", "--sizes", "9,3,20,24"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith("(9,")]
    assert len(rows) == 1 and "no wide variant" not in " ".join(rows[0])
    plain, wide, ratio, difference = (float(value) for value in rows[0][4:8])
    assert plain > 0 and wide > 0 and ratio == pytest.approx(wide / plain, rel=0.1)   # printed rounded
    assert difference <= 1e-5


def test_output_layer_bench_compares_the_layer_in_and_after_the_loop(capsys):
    """`python -m bench.output_layer` times one program compiled twice: the usual way
    (the output layer after the loop) and without passes/sink_output_projection.py (the
    output layer in the step); it asserts they agree, and prints one row per size."""
    from rshop_ir.bench import output_layer
    from rshop_ir import examples

    program = examples.output_layer_program(5, 7, outputs=9)
    after, inside = output_layer._compiled_pair(program, examples.random_weights(program))
    def body_products(compiled):
        scan = next(eqn for eqn in compiled.program.eqns if eqn.op == "scan")
        return [eqn.op for eqn in scan.params["body"].eqns].count("matmul")

    assert body_products(after) == 1 and body_products(inside) == 2     # h U, h' V
    assert [eqn.op for eqn in after.program.eqns][-2:] == ["matmul", "fused"]
    assert [eqn.op for eqn in inside.program.eqns][-1] == "scan"
    output_layer.main(["--outputs", "9", "16", "--batches", "1", "2", "--steps", "6",
                       "--input", "5", "--hidden", "7", "--rounds", "1"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(row[0], row[4]) for row in rows] == [("1", "9"), ("2", "9"), ("1", "16"),
                                                  ("2", "16")]
    for row in rows:
        inside_ms, after_ms, ratio = float(row[5]), float(row[6]), float(row[7][:-1])
        assert inside_ms > 0 and after_ms > 0
        # the times are printed to 0.001 ms, the ratio of the unrounded ones to 0.01
        assert abs(ratio * after_ms - inside_ms) <= 0.0005 * (1 + ratio) + 0.005 * after_ms


def _run_json(path, rows):
    """A minimal `python -m bench --json` file: (model, backend, samples, status) rows."""
    results = [{"suite": "custom", "model": model, "size": {"name": "S1"}, "backend": backend,
                "status": status, "samples_s": samples}
               for model, backend, samples, status in rows]
    path.write_text(json.dumps({"results": results}))
    return str(path)


def test_pool_compares_the_medians_of_pooled_samples(tmp_path, capsys):
    """Samples of both runs of a set are pooled before the median: before, ours
    [1, 2] + [3] ms -> 2 ms against [4, 6] + [8] -> 6 ms (3.00x); after, ours [1] + [1, 3]
    -> 1 ms against [5] + [3, 4] -> 4 ms (4.00x). A failed row and a case only one set
    timed are left out."""
    from rshop_ir.bench import pool

    ms = 1e-3
    before = [_run_json(tmp_path / "b1.json", [
                  ("mgu", "numba-cpu", [1 * ms, 2 * ms], "ok"),
                  ("mgu", "keras-xla", [4 * ms, 6 * ms], "ok"),
                  ("rwa", "numba-cpu", [9 * ms], "error")]),
              _run_json(tmp_path / "b2.json", [
                  ("mgu", "numba-cpu", [3 * ms], "ok"),
                  ("mgu", "keras-xla", [8 * ms], "ok")])]
    after = [_run_json(tmp_path / "a1.json", [
                 ("mgu", "numba-cpu", [1 * ms], "ok"), ("mgu", "keras-xla", [5 * ms], "ok"),
                 ("rwa", "numba-cpu", [1 * ms], "ok"), ("rwa", "keras-xla", [2 * ms], "ok")]),
             _run_json(tmp_path / "a2.json", [
                 ("mgu", "numba-cpu", [1 * ms, 3 * ms], "ok"),
                 ("mgu", "keras-xla", [3 * ms, 4 * ms], "ok")])]
    assert pool.main(["--before", *before, "--after", *after]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[2:] == ["| custom | mgu | S1 | 2.000 / 6.000 / 3.00x | 1.000 / 4.000 / 4.00x |"]
    with pytest.raises(SystemExit):
        pool.main(["--before", *before, "--after", *after, "--against", "torch"])
    assert "no case was timed" in capsys.readouterr().err
