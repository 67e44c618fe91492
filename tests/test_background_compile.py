"""kernels/cpu/background_compile.py: the automatic team's kernel, and the launcher of
the weight question beside a one-thread kernel, compile on a thread of their own while
the calls run without them; they run once compiled."""

import os
import threading

import numpy as np
import pytest

import rshop_ir
from rshop_ir import examples
from rshop_ir.bound import BoundProgram
from rshop_ir.interpret import interpret
from rshop_ir.kernels.cpu import background_compile, runtime
from rshop_ir.kernels.cpu.background_compile import BackgroundCompile
from rshop_ir.kernels.cpu.team_choice import TeamChoice
from rshop_ir.kernels.cpu.team_launch import native_launch_usable


@pytest.fixture
def wanting_teams(monkeypatch):
    """Every automatic call wants a team of two (the team choice's probes and timing
    aside); the returned list receives the member count of each team formed."""
    if not native_launch_usable(2):
        pytest.skip("Numba's OpenMP threading layer with 2 threads is not available "
                    "here: Python member threads run teams (tested below)")
    return _want_teams(monkeypatch, "launch_natively")


def _want_teams(monkeypatch, runner: str) -> list:
    """Background compiles on, every automatic call wanting a team of two; the list
    receives the member count of each team the runtime's `runner` (launch_natively,
    or run_team for Python member threads) runs."""
    monkeypatch.setattr(background_compile, "BACKGROUND", True)
    monkeypatch.setattr(runtime, "auto_team_size", lambda kernel, batch, steps: 2)
    monkeypatch.setattr(TeamChoice, "members", lambda self, key, proposed: proposed)
    teams = []
    original = getattr(runtime, runner)
    monkeypatch.setattr(runtime, runner, lambda *args: teams.append(
        args[1].members) or original(*args))
    return teams


def _program():
    program = examples.lstm_program(8, 64, return_sequences=True)
    weights = examples.random_weights(program, scale=0.5)
    x = np.random.default_rng(3).standard_normal((1, 30, 8)).astype(np.float32)
    return program, weights, x


def _gate_compiles(monkeypatch, failures: int = 0, compiler: str = "compile_launcher"):
    """Make the runtime's `compiler` (the team's launcher's by default) wait for the
    returned event `gate` (and raise on its first `failures` runs); the list receives
    the name of each compiling thread, and the event `reached` is set when one is
    waiting at the gate."""
    gate, reached, threads = threading.Event(), threading.Event(), []
    original = getattr(runtime, compiler)

    def gated(*arguments):
        threads.append(threading.current_thread().name)
        reached.set()
        assert gate.wait(120)
        if len(threads) <= failures:
            raise RuntimeError("a compile that failed")
        return original(*arguments)

    monkeypatch.setattr(runtime, compiler, gated)
    return gate, reached, threads


def test_calls_run_on_one_thread_while_the_team_compiles(wanting_teams, monkeypatch):
    program, weights, x = _program()
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    alone = compiled(x, team_size=1)
    for got, want in zip(alone, interpret(program, x, weights=weights)):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    gate, reached, threads = _gate_compiles(monkeypatch)
    for _ in range(3):
        for got, want in zip(compiled(x), alone):
            np.testing.assert_array_equal(got, want)
    assert reached.wait(120)     # the first call started the compile in the background
    for got, want in zip(compiled(x), alone):    # a call while it compiles: one thread
        np.testing.assert_array_equal(got, want)
    assert threads == ["rshop_ir compile"] and wanting_teams == []
    assert not compiled._background.wait(0)
    gate.set()
    assert compiled._background.wait(120)
    for got, want in zip(compiled(x), alone):
        np.testing.assert_array_equal(got, want)
    assert wanting_teams == [2] and len(threads) == 1    # compiled once, in the background


def test_a_failed_background_compile_is_left_to_the_call(wanting_teams, monkeypatch):
    program, weights, x = _program()
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    alone = compiled(x, team_size=1)
    gate, _, threads = _gate_compiles(monkeypatch, failures=1)
    gate.set()
    compiled(x)
    assert compiled._background.wait(120)
    for got, want in zip(compiled(x), alone):       # the call compiles it, and runs it
        np.testing.assert_array_equal(got, want)
    assert threads == ["rshop_ir compile", threading.current_thread().name]
    assert wanting_teams == [2]


def test_background_off_compiles_in_the_call(wanting_teams, monkeypatch):
    monkeypatch.setattr(background_compile, "BACKGROUND", False)
    program, weights, x = _program()
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    alone = compiled(x, team_size=1)
    gate, _, threads = _gate_compiles(monkeypatch)
    gate.set()
    for got, want in zip(compiled(x), alone):
        np.testing.assert_array_equal(got, want)
    assert threads == [threading.current_thread().name] and wanting_teams == [2]


def test_member_threads_wait_for_no_compile_either(monkeypatch):
    """Where Python member threads run teams (no native launcher: another threading
    layer, another system), the automatic team's kernel compiles in the background
    too, and the calls meanwhile run on one thread."""
    monkeypatch.setattr(runtime, "native_launch_usable", lambda members: False)
    teams = _want_teams(monkeypatch, "run_team")
    program, weights, x = _program()
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    alone = compiled(x, team_size=1)
    gate, reached, threads = _gate_compiles(monkeypatch, compiler="compile_for_types")
    for got, want in zip(compiled(x), alone):
        np.testing.assert_array_equal(got, want)
    assert reached.wait(120)
    for got, want in zip(compiled(x), alone):    # a call while it compiles: one thread
        np.testing.assert_array_equal(got, want)
    assert threads == ["rshop_ir compile"] and teams == []
    gate.set()
    assert compiled._background.wait(120)
    for got, want in zip(compiled(x), alone):
        np.testing.assert_array_equal(got, want)
    assert teams == [2] and len(threads) == 1


def test_one_compile_per_argument_types():
    """`ready` starts `build` once per key; later asks answer from that thread."""
    background, release, builds = BackgroundCompile(), threading.Event(), []

    def build(key):
        builds.append(key)
        assert release.wait(60)

    assert not background.ready("f32", lambda: False, lambda: build("f32"))
    assert not background.ready("f32", lambda: False, lambda: build("f32"))
    assert background.ready("f64", lambda: True, lambda: build("f64"))   # compiled already
    release.set()
    assert background.wait(60)
    assert background.ready("f32", lambda: False, lambda: build("f32"))
    assert builds == ["f32"]


def test_no_question_beside_the_kernel_while_the_team_compiles(wanting_teams, monkeypatch):
    """A compiled Keras layer's one-thread calls ask whether the weights changed on the
    idle core beside the kernel (team_poll.py): not while the team's kernel compiles
    (that compile holds the core, and Numba's compiler lock the question's launcher
    would wait for); the calls read the weights themselves and give Keras's numbers."""
    import keras

    inputs = keras.Input((30, 8))
    layer = keras.layers.LSTM(64, return_sequences=True)
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(5).standard_normal((1, 30, 8)).astype(np.float32)
    compiled = rshop_ir.compile(layer, target="cpu")
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    monkeypatch.setattr(runtime, "others_idle", lambda: True)
    monkeypatch.setattr(runtime, "BESIDE_MAX_PAUSE_S", 1e9)
    monkeypatch.setattr(runtime, "BESIDE_MIN_CALLS", 1)
    gate, reached, _ = _gate_compiles(monkeypatch)
    compiled(x)
    assert reached.wait(120)
    for _ in range(3):
        np.testing.assert_allclose(compiled(x), np.asarray(model(x)), atol=1e-4, rtol=0)
    layer.set_weights([0.5 * weight for weight in layer.get_weights()])
    np.testing.assert_allclose(compiled(x), np.asarray(model(x)), atol=1e-4, rtol=0)
    assert "polled" not in compiled._native_launchers and wanting_teams == []
    gate.set()
    assert compiled.finish_compiles(120)
    np.testing.assert_allclose(compiled(x), np.asarray(model(x)), atol=1e-4, rtol=0)
    assert wanting_teams == [2]


def test_the_question_beside_the_kernel_waits_for_its_launcher(monkeypatch):
    """A compiled Keras layer's one-thread calls come to ask whether the weights
    changed beside the kernel (team_poll.py): its launcher compiles in the background,
    and the calls ask themselves meanwhile, seeing a weight change all the same."""
    import keras

    inputs = keras.Input((9, 8))
    layer = keras.layers.LSTM(16, return_sequences=True)
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(6).standard_normal((1, 9, 8)).astype(np.float32)
    compiled = rshop_ir.compile(layer, target="cpu")
    monkeypatch.setattr(background_compile, "BACKGROUND", True)
    monkeypatch.setattr(runtime, "auto_team_size", lambda kernel, batch, steps: 1)
    monkeypatch.setattr(runtime, "native_launch_usable", lambda members: True)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    monkeypatch.setattr(runtime, "others_idle", lambda: True)
    monkeypatch.setattr(runtime, "BESIDE_MAX_PAUSE_S", 1e9)
    monkeypatch.setattr(runtime, "BESIDE_MIN_CALLS", 1)
    gate, reached, threads = _gate_compiles(monkeypatch, compiler="compile_with_member")
    asked_beside = []
    original = compiled._run_polled
    monkeypatch.setattr(compiled, "_run_polled", lambda *args: asked_beside.append(1)
                        or original(*args))

    def check():
        np.testing.assert_allclose(compiled(x), np.asarray(model(x)), atol=1e-4, rtol=0)

    check()
    assert reached.wait(120)
    for _ in range(3):
        check()
    layer.set_weights([0.5 * weight for weight in layer.get_weights()])
    check()
    assert asked_beside == [] and "polled" not in compiled._native_launchers
    gate.set()
    assert compiled.finish_compiles(120)
    for _ in range(3):
        check()
    layer.set_weights([2.0 * weight for weight in layer.get_weights()])
    check()
    assert len(asked_beside) == 4 and threads == ["rshop_ir compile"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this system")
def test_a_fork_waits_for_the_compiles(wanting_teams, monkeypatch):
    """A child forked during a compile would find Numba's compiler lock held by a
    thread it does not have: the fork waits for the compile to end."""
    program, weights, x = _program()
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    gate, reached, _ = _gate_compiles(monkeypatch)
    compiled(x)
    assert reached.wait(120)
    opener = threading.Timer(0.5, gate.set)
    opener.start()
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    assert gate.is_set() and not compiled._background.running()
