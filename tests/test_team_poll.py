"""Whether the weights changed is asked on another thread than the kernel's.

On a team call the last member asks the compiled layer's weight reader, through a C
function pointer to Python (kernels/cpu/team_poll.py), while the others start; the
members take the input projection's rows from a shared count (team_sync.claim_unit).
A one-thread call asks on the idle core, beside its kernel (`launch_polled`).
Checked here against Keras: a change made between calls (`set_weights`, an
`assign`) is in the next call's numbers; a failing read raises in the caller; the
question is asked beside and not again by the caller; a kernel failing beside it runs
again as usual; the callback works from Numba's own threads, call after call; every
unit of rows is handed out once.
"""

import numpy as np
import pytest
from numba import njit, prange

import rshop_ir
from rshop_ir.kernels.cpu import background_compile, runtime
from rshop_ir.kernels.cpu.team_poll import (CHANGED, FAILED, UNCHANGED, PollCallback,
                                            team_poll)
from rshop_ir.kernels.cpu.team_sync import (ABORT, CLAIMS, COUNTER_SIZE, POLL_ADDRESS,
                                            claim_unit, end_claims)

ATOL_FLOAT32 = 1e-4

pytestmark = pytest.mark.usefixtures("kernel_cache")  # a fresh kernel disk cache


def _keras_lstm():
    import keras

    inputs = keras.Input((9, 8))
    layer = keras.layers.LSTM(16, return_sequences=True)
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(4).standard_normal((1, 9, 8)).astype(np.float32)
    return layer, model, x


def _keras_decoder():
    """A step model whose output layer (y = h' @ W) the passes move after the loop: on a
    team, the member asks in the first chunk's output layer (codegen's
    `_claimed_epilogue`), not at the kernel's start."""
    import keras
    from recurrentshop import RecurrentModel

    x_t, h = keras.Input((8,)), keras.Input((64,))
    h_new = keras.layers.Dense(64, activation="tanh")(keras.layers.concatenate([x_t, h]))
    y = keras.layers.Dense(5)(h_new)
    layer = RecurrentModel(input=x_t, initial_states=[h], output=y, final_states=[h_new],
                           return_sequences=True, backend="keras")   # Keras's numbers
    inputs = keras.Input((9, 8))
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(4).standard_normal((1, 9, 8)).astype(np.float32)
    return layer, model, x


def _assert_matches(got, expected):
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=ATOL_FLOAT32, rtol=0)


def _spy(monkeypatch) -> dict:
    """Counts of the caller's own weight reads (`refresh_weights`) and of the questions
    a member asked, with their outcomes."""
    seen = {"caller": 0, "member": []}
    refresh, call = runtime.CompiledProgram.refresh_weights, PollCallback._call

    def counted_refresh(self):
        seen["caller"] += 1
        return refresh(self)

    def counted_call(self):
        answer = call(self)
        seen["member"].append(answer)
        return answer

    monkeypatch.setattr(runtime.CompiledProgram, "refresh_weights", counted_refresh)
    monkeypatch.setattr(PollCallback, "_call", counted_call)
    return seen


@pytest.mark.parametrize("native", [True, False], ids=["native-members", "python-members"])
@pytest.mark.parametrize("asked_late", [False, True], ids=["lstm", "output-layer-after-loop"])
def test_a_team_sees_weight_changes_its_member_found(monkeypatch, native, asked_late):
    layer, model, x = _keras_decoder() if asked_late else _keras_lstm()
    compiled = rshop_ir.compile(layer, target="cpu")
    source = compiled._team_kernel()[0].source
    assert source.count("team_poll(team_counter") == 1
    run_start = source.index("def run(")
    assert (source.index("team_poll(team_counter") < run_start) == asked_late
    if not native:
        monkeypatch.setattr(runtime, "native_launch_usable", lambda members: False)
    seen = _spy(monkeypatch)

    got = compiled(x, team_size=2)
    _assert_matches(got, np.asarray(model(x)))
    # the member asked; the caller did not read the weights itself
    assert seen == {"caller": 0, "member": [UNCHANGED]}
    np.testing.assert_array_equal(got, compiled(x, team_size=1))   # same bits as one thread

    layer.set_weights([0.5 * weight for weight in layer.get_weights()])
    seen.update(caller=0, member=[])
    got = compiled(x, team_size=2)
    _assert_matches(got, np.asarray(model(x)))
    # the member found the change: the team stopped, the call ran again on one thread
    # (whose own read finds the new weights already bound)
    assert seen == {"caller": 1, "member": [CHANGED]}

    seen.update(caller=0, member=[])
    np.testing.assert_array_equal(compiled(x, team_size=2), got)
    assert seen == {"caller": 0, "member": [UNCHANGED]}, "the next call is a team's again"

    kernel = layer.weights[0]
    kernel.assign(kernel.numpy()[:, ::-1].copy())
    _assert_matches(compiled(x, team_size=2), np.asarray(model(x)))
    assert seen["member"][-1] == CHANGED


def _assert_a_failing_read_raises(compiled, call):
    """`call()` raises the error of the compiled layer's weight reader, replaced by a
    broken one for the call."""
    reader = compiled._weight_reader

    class BrokenReader:
        def poll(self):
            raise OSError("the variables are gone")

    compiled._weight_reader = BrokenReader()
    try:
        with pytest.raises(OSError, match="the variables are gone"):
            call()
    finally:
        compiled._weight_reader = reader


def test_a_failing_weight_read_on_a_member_raises_in_the_caller():
    layer, model, x = _keras_lstm()
    compiled = rshop_ir.compile(layer, target="cpu")
    _assert_a_failing_read_raises(compiled, lambda: compiled(x, team_size=2))
    _assert_matches(compiled(x, team_size=2), np.asarray(model(x)))


@njit(nogil=True, parallel=True)
def _ask_on_every_rank(counter, flags, size):
    """team_poll on each of `size` ranks, as a team's members call it (Numba's threads:
    threads Python has not seen, which the callback must enter)."""
    for rank in prange(size):
        team_poll(counter, rank, size)
        flags[rank] = 1
    return 0


def test_the_callback_answers_from_numbas_threads_call_after_call():
    answers = [None] * 30 + [{"w": np.ones(2)}] + [None] * 30

    def changed_weights():
        answer = answers.pop(0)
        if answer is None and len(answers) == 5:
            raise OSError("failed read")
        return answer

    callback = PollCallback(changed_weights)
    outcomes = []
    while answers:
        counter = np.zeros(COUNTER_SIZE, np.int64)
        counter[POLL_ADDRESS] = callback.address
        flags = np.zeros(4, np.int64)
        callback.clear()
        _ask_on_every_rank(counter, flags, 4)
        assert flags.tolist() == [1, 1, 1, 1]
        outcome = callback.outcome
        outcomes.append(outcome if not isinstance(outcome, (dict, BaseException))
                        else type(outcome).__name__)
        assert counter[ABORT] == (0 if outcome == UNCHANGED else 1)
    assert outcomes == [UNCHANGED] * 30 + ["dict"] + [UNCHANGED] * 24 + ["OSError"] \
        + [UNCHANGED] * 5

    counter = np.zeros(COUNTER_SIZE, np.int64)     # no callback: nobody is asked
    callback.clear()
    _ask_on_every_rank(counter, np.zeros(4, np.int64), 4)
    assert callback.outcome is None and counter[ABORT] == 0


def test_the_callback_reports_what_it_was_told():
    for answer, code in ((None, UNCHANGED), ({"w": np.zeros(1)}, CHANGED)):
        callback = PollCallback(lambda answer=answer: answer)
        assert callback._call() == code
    callback = PollCallback(lambda: 1 / 0)
    assert callback._call() == FAILED and isinstance(callback.outcome, ZeroDivisionError)


def test_claims_hand_out_each_unit_once_in_every_phase():
    """Two members claiming in turns, over phases of different sizes (the chunks of one
    call, or of two scans): each unit once, -1 once per member, bases kept alike."""
    counter = np.zeros(COUNTER_SIZE, np.int64)
    order = [0, 0, 1, 0, 1, 1, 1, 0, 0]
    for units in (5, 1, 3, 0, 8):
        taken, done = [], set()
        turns = iter(order * 4)
        while len(done) < 2:
            rank = next(turns)
            if rank in done:
                continue
            unit = claim_unit(counter, rank, units)
            if unit < 0:
                end_claims(counter, rank, 2, units)
                done.add(rank)
            else:
                taken.append(unit)
        assert sorted(taken) == list(range(units))
    assert counter[CLAIMS] == (5 + 1 + 3 + 0 + 8) + 5 * 2


def _beside_allowed(monkeypatch):
    """Let every one-thread call qualify for the question beside its kernel, whatever
    the machine's cores, load and threading layer, and the pause since the last call;
    its launcher compiles in the call that first asks (background_compile.py would
    compile it beside the calls: tests/test_background_compile.py)."""
    monkeypatch.setattr(background_compile, "BACKGROUND", False)
    monkeypatch.setattr(runtime, "native_launch_usable", lambda members: True)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    monkeypatch.setattr(runtime, "others_idle", lambda: True)
    monkeypatch.setattr(runtime, "BESIDE_MAX_PAUSE_S", 1e9)


def test_a_one_thread_call_asks_beside_its_kernel(monkeypatch):
    layer, model, x = _keras_lstm()
    compiled = rshop_ir.compile(layer, target="cpu")
    _beside_allowed(monkeypatch)
    seen = _spy(monkeypatch)
    expected = np.asarray(model(x))
    for call in range(runtime.BESIDE_MIN_CALLS + 2):
        got = compiled(x)
        _assert_matches(got, expected)
    # the first calls read the weights themselves, then the question runs beside
    assert seen["caller"] == runtime.BESIDE_MIN_CALLS - 1
    assert seen["member"] == [UNCHANGED] * 3
    assert set(compiled._native_launchers) == {"polled"}
    seen.update(caller=0, member=[])
    np.testing.assert_array_equal(compiled(x, team_size=1), got)    # the caller's own threads
    assert seen == {"caller": 1, "member": []}

    layer.set_weights([0.5 * weight for weight in layer.get_weights()])
    seen.update(caller=0, member=[])
    _assert_matches(compiled(x), np.asarray(model(x)))
    assert seen == {"caller": 1, "member": [CHANGED]}    # found beside, then run as usual
    _assert_matches(compiled(x), np.asarray(model(x)))
    assert seen["member"] == [CHANGED, UNCHANGED]
    _assert_a_failing_read_raises(compiled, lambda: compiled(x))


def test_a_kernel_failing_beside_the_question_runs_again_as_usual(monkeypatch):
    """A kernel that raised returns empty arrays through its function pointer: the
    runtime runs the call again the usual way (here a stand-in launcher returns them)."""
    layer, model, x = _keras_lstm()
    compiled = rshop_ir.compile(layer, target="cpu")
    _beside_allowed(monkeypatch)
    monkeypatch.setattr(runtime, "BESIDE_MIN_CALLS", 1)
    launches = []

    def failed_launcher(launcher, member, member_arguments, launcher_arguments):
        def launch(*arguments):
            team_poll(arguments[-1], 1, 2)       # the question, as rank 1 asks it
            launches.append(len(arguments))
            return [(np.empty((0, 9, 16), np.float32),)]
        return launch

    monkeypatch.setattr(runtime, "compile_with_member", failed_launcher)
    seen = _spy(monkeypatch)
    _assert_matches(compiled(x), np.asarray(model(x)))
    assert len(launches) == 1 and seen == {"caller": 1, "member": [UNCHANGED]}


def test_one_call_at_a_time_asks_beside_its_kernel(monkeypatch):
    """While a call asks beside its kernel, a call from another thread asks itself."""
    layer, model, x = _keras_lstm()
    compiled = rshop_ir.compile(layer, target="cpu")
    _beside_allowed(monkeypatch)
    monkeypatch.setattr(runtime, "BESIDE_MIN_CALLS", 1)
    seen = _spy(monkeypatch)
    assert runtime._BESIDE.acquire(blocking=False)      # another thread's call
    try:
        _assert_matches(compiled(x), np.asarray(model(x)))
    finally:
        runtime._BESIDE.release()
    assert seen == {"caller": 1, "member": []}
    _assert_matches(compiled(x), np.asarray(model(x)))
    assert seen == {"caller": 1, "member": [UNCHANGED]}
