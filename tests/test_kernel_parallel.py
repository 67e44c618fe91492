"""The CPU kernels on several threads give the numbers of one thread and of Keras.

Two ways a call uses more cores (kernels/cpu/): row slices (independent batch rows run
at once, outputs joined) and teams (threads splitting each step's matmul columns, a
barrier per step). Both are forced here whatever the machine's load or the size, and
compared with Keras on every zoo model; the row-independence analysis is checked on
hand-built programs; a failing team member must stop the others, not hang them.
"""

import numpy as np
import pytest

import rshop_ir
import zoo
from rshop_ir import ProgramBuilder
from rshop_ir.kernels.batch_rows import rows_independent
from rshop_ir.kernels.cpu import codegen, row_split, team

ATOL_FLOAT32 = 1e-4


pytestmark = pytest.mark.usefixtures("kernel_cache")  # a fresh kernel disk cache


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _assert_close(got, expected):
    got, expected = _as_list(got), _as_list(expected)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=ATOL_FLOAT32, rtol=0)


_COMPILED = {}


def _compiled_case(entry, split_every_matmul=False):
    """(zoo case, compiled). With `split_every_matmul` the generator lets a team split
    every recurrent matmul, however small (the zoo's sizes are below the thresholds)."""
    key = (entry.__name__, split_every_matmul)
    if key not in _COMPILED:
        case = entry(np.random.default_rng(3))
        with pytest.MonkeyPatch.context() as patch:
            if split_every_matmul:
                patch.setattr(codegen, "TEAM_MIN_COLUMNS", 1)
                patch.setattr(codegen, "TEAM_MIN_CONTRACTION", 1)
            compiled = rshop_ir.compile(case.target, target="cpu")
            if split_every_matmul:
                compiled._team_kernel()  # the team variant, generated under the patch
            _COMPILED[key] = (case, compiled)
    return _COMPILED[key]


@pytest.mark.parametrize("members", [2, 3])
@pytest.mark.parametrize("entry", zoo.ZOO, ids=[entry.__name__ for entry in zoo.ZOO])
def test_team_of_threads_matches_keras(entry, members):
    case, compiled = _compiled_case(entry, split_every_matmul=True)
    expected = case.reference()
    _assert_close(compiled(*case.inputs, team_size=members, **case.kwargs), expected)
    _assert_close(compiled(*case.inputs, team_size=1, **case.kwargs), expected)


def test_most_zoo_kernels_can_split_their_matmuls():
    """The team test above is not vacuous: these kernels take the team path."""
    splitting = [entry.__name__ for entry in zoo.ZOO
                 if _compiled_case(entry, split_every_matmul=True)[1]._team_kernel()[0]
                 .team_columns > 0]
    assert len(splitting) >= len(zoo.ZOO) - 3, splitting
    assert "keras_lstm" in splitting and "mgu" in splitting


@pytest.mark.parametrize("entry", zoo.ZOO, ids=[entry.__name__ for entry in zoo.ZOO])
def test_row_slices_match_keras(entry, monkeypatch):
    case, compiled = _compiled_case(entry)
    assert compiled._rows_independent, "every zoo model keeps its batch rows apart"
    monkeypatch.setattr(row_split, "MIN_SPLIT_FLOPS", 0.0)
    monkeypatch.setattr(row_split, "MIN_ROWS_PER_SLICE", 1)
    monkeypatch.setattr(row_split, "usable_cores", lambda: 2)
    calls = []
    original = row_split.run_in_slices
    monkeypatch.setattr("rshop_ir.kernels.cpu.runtime.run_in_slices",
                        lambda *args: calls.append(args[2]) or original(*args))
    got = compiled(*case.inputs, team_size=1, **case.kwargs)
    assert calls == [2], "the call ran as two row slices"
    _assert_close(got, case.reference())


def test_row_slices_see_the_work_of_a_static_time_axis(monkeypatch):
    """A model whose inputs fix the time length binds no T; the slicing decision must
    still count its steps (KernelSource.fixed_steps), or it sees no work at all."""
    import keras

    x = np.random.default_rng(5).standard_normal((8, 7, 5)).astype(np.float32)
    inputs = keras.Input((7, 5))
    model = keras.Model(inputs, keras.layers.LSTM(6, return_sequences=True)(inputs))
    compiled = rshop_ir.compile(model, target="cpu")
    assert compiled.kernel.fixed_steps == 7
    work = 8 * 7 * compiled.kernel.step_flops_per_row
    monkeypatch.setattr(row_split, "MIN_SPLIT_FLOPS", work)      # just enough
    monkeypatch.setattr(row_split, "usable_cores", lambda: 2)
    calls = []
    original = row_split.run_in_slices
    monkeypatch.setattr("rshop_ir.kernels.cpu.runtime.run_in_slices",
                        lambda *args: calls.append(args[2]) or original(*args))
    _assert_close(compiled(x), np.asarray(model(x)))
    assert calls == [2], "the call ran as two row slices"


def test_row_bounds_cover_the_batch_evenly():
    assert row_split.row_bounds(5, 2) == [(0, 2), (2, 5)] or \
        row_split.row_bounds(5, 2) == [(0, 3), (3, 5)]
    for batch in (2, 3, 7, 64):
        for slices in (2, 3):
            bounds = row_split.row_bounds(batch, slices)
            assert bounds[0][0] == 0 and bounds[-1][1] == batch
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_failing_team_member_stops_the_team(monkeypatch):
    case, compiled = _compiled_case(zoo.keras_lstm, split_every_matmul=True)
    original = team.run_team

    def failing_member(run_member, kernel, batch, members):
        def member(rank, size, counter, pool):
            if rank == 1:
                raise RuntimeError("member 1 failed")
            return run_member(rank, size, counter, pool)
        return original(member, kernel, batch, members)

    monkeypatch.setattr("rshop_ir.kernels.cpu.runtime.run_team", failing_member)
    with pytest.raises(RuntimeError, match="member 1 failed"):
        compiled(*case.inputs, team_size=2)
    monkeypatch.undo()
    _assert_close(compiled(*case.inputs, team_size=2), case.reference())


def test_team_size_is_asked_for_and_bounded(monkeypatch):
    case, compiled = _compiled_case(zoo.keras_lstm, split_every_matmul=True)
    assert compiled.kernel.team_columns == 0                # the default kernel: no team
    kernel = compiled._team_kernel()[0]
    assert team.team_size_for(kernel) == 1                  # never formed unasked
    assert team.team_size_for(kernel, 2) == 2
    assert team.team_size_for(kernel, 10 ** 6) == min(team.MAX_TEAM, kernel.team_columns)
    with pytest.raises(ValueError, match="team_size must be >= 1"):
        compiled(*case.inputs, team_size=0)
    monkeypatch.setattr(row_split, "usable_cores", lambda: 2)
    assert row_split.slice_count(256, 1e9) == 2
    assert row_split.slice_count(32, 1e9) == 2                      # a tile per slice
    assert row_split.slice_count(7, 1e9) == 1                       # too few rows
    assert row_split.slice_count(256, 1e3) == 1                     # too little work


# ---- the row-independence analysis ----------------------------------------------------

def _program(build):
    builder = ProgramBuilder()
    x = builder.input("float32", ("B", 4))
    return builder.build([build(builder, x)])


def test_row_wise_programs_are_independent():
    def dense_softmax(builder, x):
        w = builder.param("w", "float32", (4, 3))
        return builder.apply("softmax", builder.apply("matmul", x, w), axis=-1)

    def per_row_sum(builder, x):
        return builder.apply("reduce_sum", x, axes=1, keepdims=True)

    def einsum_rows(builder, x):
        w = builder.param("w", "float32", (4, 3))
        return builder.apply("einsum", x, w, equation="bi,ij->bj")

    for build in (dense_softmax, per_row_sum, einsum_rows):
        assert rows_independent(_program(build)), build.__name__


def test_programs_mixing_rows_are_not_independent():
    def batch_sum(builder, x):
        return builder.apply("reduce_sum", x, axes=0, keepdims=True)

    def batch_softmax(builder, x):
        return builder.apply("softmax", x, axis=0)

    def batch_gram(builder, x):
        return builder.apply("einsum", x, x, equation="bi,ci->bc")

    def reversed_batch(builder, x):
        return builder.apply("reverse", x, axis=0)

    def contracted_batch(builder, x):
        return builder.apply("matmul", builder.apply("transpose", x, perm=(1, 0)), x)

    for build in (batch_sum, batch_softmax, batch_gram, reversed_batch, contracted_batch):
        assert not rows_independent(_program(build)), build.__name__


def test_core_load_ignores_this_process_and_sees_others(monkeypatch):
    """Busy time of this process never counts as load; another process's busy core
    does (one spinning process is about one core of load)."""
    import subprocess
    import sys
    import time

    from rshop_ir.kernels.cpu import core_load

    if core_load._busy_seconds() is None:
        pytest.skip("no /proc/stat on this system: the load average decides instead")
    monkeypatch.setattr(core_load, "_STATE", {"time": None, "busy": 0.0, "own": 0.0,
                                              "load": None})
    monkeypatch.setattr(core_load, "WINDOW_S", 0.3)
    assert core_load.others_load() is None          # the first sample
    busy_until = time.monotonic() + 0.5
    spins = 0
    while time.monotonic() < busy_until:            # this process: one busy core
        spins += 1
    assert spins > 0 and core_load.others_load() < 0.7
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        core_load._STATE["time"] = None
        core_load.others_load()
        time.sleep(0.5)
        assert core_load.others_load() > 0.7
        assert not core_load.others_idle()
    finally:
        spinner.kill()
        spinner.wait()
