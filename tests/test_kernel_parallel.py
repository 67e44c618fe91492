"""The CPU kernels on several threads give the numbers of one thread and of Keras.

Two ways a call uses more cores (kernels/cpu/): row slices (independent batch rows run
at once, outputs joined) and teams (threads splitting each step's matmul columns, a
barrier per step). Both are forced here whatever the machine's load or the size, and
compared with Keras on every zoo model; the row-independence analysis is checked on
hand-built programs; a failing team member must stop the others, not hang them. The
team's parts (split input projection, weight copies kept between calls, the automatic
choice, pinning) are checked against the interpreter.
"""

import os
from types import SimpleNamespace

import re

import numpy as np
import pytest

import rshop_ir
import zoo
from rshop_ir import ProgramBuilder, examples
from rshop_ir.bound import BoundProgram
from rshop_ir.interpret import interpret
from rshop_ir.kernels.batch_rows import rows_independent
from rshop_ir.kernels.cpu import background_compile, codegen, row_split, team
from rshop_ir.kernels.cpu.team_choice import TeamChoice

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
                # a team splits packed weights only
                patch.setattr(codegen, "PACKED_MIN_COLUMNS", 1)
                patch.setattr(codegen, "PACKED_MIN_CONTRACTION", 1)
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
    # the attention decoder's output layer runs after the loop, its rows split too
    attention = _compiled_case(zoo.attention_decoder, split_every_matmul=True)[1]
    assert "publish_output(team_counter" in attention._team_kernel()[0].source
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


@pytest.mark.parametrize("slices", [2, 3])
def test_row_slices_join_their_outputs_and_raise_a_slice_error(slices):
    """Each slice places its rows in the joined outputs itself (row_split._Joined);
    an output without batch rows is taken as one slice returned it; a slice that
    raised makes the call raise, after every slice ended."""
    data = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    ended = []

    def run_slice(start, stop):
        ended.append(start)
        return [data[start:stop] * 2, np.float64(start) * 0 + 5.0, data[start:stop, :1]]
    joined = row_split.run_in_slices(run_slice, 7, slices, [True, False, True])
    np.testing.assert_array_equal(joined[0], data * 2)
    assert joined[1] == 5.0 and joined[0].dtype == np.float32
    np.testing.assert_array_equal(joined[2], data[:, :1])

    def failing(start, stop):
        if start > 0:
            raise ValueError("slice failed")
        return run_slice(start, stop)
    ended.clear()
    with pytest.raises(ValueError, match="slice failed"):
        row_split.run_in_slices(failing, 7, slices, [True, False, True])
    assert ended == [0]


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

    def failing_member(run_member, buffers, batch, chunk, poll_address=0):
        def member(rank, size, counter, pool, shared):
            if rank == 1:
                raise RuntimeError("member 1 failed")
            return run_member(rank, size, counter, pool, shared)
        return original(member, buffers, batch, chunk, poll_address)

    monkeypatch.setattr("rshop_ir.kernels.cpu.runtime.run_team", failing_member)
    # the Python member threads (the native launcher's failures: test_team_launch.py)
    monkeypatch.setattr("rshop_ir.kernels.cpu.runtime.native_launch_usable",
                        lambda members: False)
    with pytest.raises(RuntimeError, match="member 1 failed"):
        compiled(*case.inputs, team_size=2)
    monkeypatch.undo()
    _assert_close(compiled(*case.inputs, team_size=2), case.reference())


def test_team_splits_the_input_projection_of_every_chunk():
    """The members compute the steps of each chunk's input projection between them
    (a barrier before each chunk after the first): several chunk sizes, vs Keras."""
    case, compiled = _compiled_case(zoo.keras_lstm, split_every_matmul=True)
    source = compiled._team_kernel()[0].source
    assert "team_shared[" in source and "row_low" in source
    for chunk in (1, 2, 3):
        _assert_close(compiled(*case.inputs, team_size=2, chunk_steps=chunk, **case.kwargs),
                      case.reference())


def test_layer_norm_of_the_input_projection_runs_in_its_chunks():
    """The layer-normalised LSTM normalises x_t @ W: hoisted out of the loop
    (passes/hoist.py), each chunk's rows are normalised right after their projection,
    by whichever member computed them. One thread and a team of 2, several chunk sizes
    (the last one past the sequence), vs Keras."""
    case, compiled = _compiled_case(zoo.layer_norm_lstm, split_every_matmul=True)
    assert "layer_norm" in [eqn.op for eqn in compiled.program.eqns]
    assert "row_sum(projected_0, r," in compiled.source
    assert "row_sum(projected_0, r," in compiled._team_kernel()[0].source
    for team_size in (1, 2):
        for chunk in (1, 3, None):
            _assert_close(compiled(*case.inputs, team_size=team_size, chunk_steps=chunk,
                                   **case.kwargs), case.reference())


@pytest.mark.parametrize("steps, chunk_steps", [(9, None), (100, None), (130, 45),
                                                (64, 64), (3, 1), (67, None)])
def test_team_gives_the_numbers_of_one_thread_exactly(steps, chunk_steps):
    """Each row of the input projection is summed in the same order on a team as on
    one thread (it falls in a tile of the same shape: members compute blocks of whole
    tiles of the biggest shape, kernels/cpu/codegen.py `_team_projections`; 67 steps
    end in smaller tiles), and so is the split recurrent product: the outputs are equal bit
    for bit. (A row summed in another order differs by a rounding, which an LSTM with
    big weights grows over the steps far beyond the numeric contract.)"""
    program = examples.lstm_program(40, 48, return_sequences=True)
    weights = examples.random_weights(program, scale=2.0)
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    assert "packed_product(staged_0[panel:panel_end]" in compiled._team_kernel()[0].source
    x = np.random.default_rng(steps).standard_normal((1, steps, 40)).astype(np.float32)
    one = compiled(x, team_size=1, chunk_steps=chunk_steps)
    for members in (2, 3):
        team_result = compiled(x, team_size=members, chunk_steps=chunk_steps)
        for got, expected in zip(team_result, one):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("steps, chunk_steps", [(9, None), (67, 5), (150, None)])
def test_team_computes_the_output_layer_after_each_chunk(steps, chunk_steps):
    """An output layer moved after the loop (passes/sink_output_projection.py): a team's
    step multiplies by the recurrent weight only and exchanges h once; after each
    chunk's steps the members take units of the chunk's rows of y (whole biggest
    tiles) from a shared count, the weight question asked there first, and write
    their rows of the output layer (a packed product) into rank 0's output
    (kernels/cpu/team_output.py). The outputs equal one thread's bit for bit (with 3
    members and short chunks some members take no rows), and the interpreter's. The
    automatic team's rule counts the output layer's weight."""
    program = examples.output_layer_program(40, 64, outputs=48)
    weights = examples.random_weights(program, scale=0.1)   # not chaotic: h' = tanh(.. h U)
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    assert compiled.kernel.team_weight_bytes == 4 * (64 * 64 + 64 * 48)
    source = compiled._team_kernel()[0].source
    assert "publish_output(team_counter, 4, y_out)" in source
    assert "team_out = output_at(out_address, y_out)" in source
    steps_start = source.index("for step in range(")
    chunk_end = source.index("out_steps = chunk_stop - chunk_start", steps_start)
    step_loop = source[steps_start:chunk_end]
    assert step_loop.count("packed_product(") == 1 and step_loop.count("team_await(") == 1
    epilogue = source[chunk_end:]
    assert re.search(r"packed_product\(y_all\[b_out\]\[panel_\d+:panel_end_\d+\]",
                     epilogue)
    assert epilogue.index("team_poll(team_counter") < epilogue.index("claim_unit(") \
        < epilogue.index("packed_product(y_all[b_out]")
    assert source.count("team_poll(team_counter") == 1
    x = np.random.default_rng(steps).standard_normal((1, steps, 40)).astype(np.float32)
    one = compiled(x, team_size=1, chunk_steps=chunk_steps)
    _assert_close(one, interpret(program, x, weights=weights))
    for members in (2, 3):
        team_result = compiled(x, team_size=members, chunk_steps=chunk_steps)
        for got, expected in zip(team_result, one):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype, units, blocks", [("float32", 64, True),
                                                  ("float64", 64, True),
                                                  ("float32", 40, False)])
def test_team_members_split_the_attention_scores(dtype, units, blocks):
    """Additive attention on a team (codegen's `_one_column_matmul`, team_columns.py):
    each member adds its own columns of the query to the keys, takes their tanh and the
    partial scores of its blocks of columns (block_dot.py), and the members exchange
    those partials instead of the query. One thread sums the same blocks in the same
    order, so the outputs are equal bit for bit, and the interpreter's. A width off the
    blocks (40 float32 columns; a block has 16 or 32) keeps one dot a row and the query
    gathered whole."""
    program = examples.attention_decoder_program(features=3, units=units,
                                                 memory_length=5, length=40, dtype=dtype)
    weights = examples.random_weights(program, seed=1, scale=0.1)  # not chaotic
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    source = compiled._team_kernel()[0].source
    owned_tanh = re.search(rf"for i_\d+ in range\(5\):\n\s+for jj_\d+ in "
                           rf"range\(own_count_{units}\):", source)
    if blocks:
        assert "block_dot(" in compiled.source and "row_dot(" not in compiled.source
        assert owned_tanh and "first_block" in source
    else:
        assert "block_dot(" not in source and not owned_tanh
    # the views of the step's buffers (the scores' rows, the softmax's) are made once
    # before the loops, and an exchange reads and writes team_pool element by element:
    # a view made at every step costs a reference count taken and dropped (only the
    # product of a member's columns into team_pool, off the blocks, takes a view)
    for kernel_source in (source, compiled.source):
        step_loop = kernel_source[kernel_source.index("for step in range("):]
        assert step_loop.split("\n@njit")[0].count(".reshape(") == (
            0 if blocks or kernel_source is compiled.source else 1)
    assert re.search(r"team_pool\[team_slot, i_\d+ \* " if blocks else
                     r"team_pool\[member_slot, i \* member_count \+ j\]", source)
    memory = np.random.default_rng(units).standard_normal((1, 5, 3)).astype(dtype)
    one = compiled(memory, team_size=1)
    for got, expected in zip(one, interpret(program, memory, weights=weights)):
        np.testing.assert_allclose(got, expected, rtol=0,
                                   atol=1e-4 if dtype == "float32" else 1e-10)
    for members in (2, 3):
        team_result = compiled(memory, team_size=members)
        for got, expected in zip(team_result, one):
            np.testing.assert_array_equal(got, expected)


def test_an_owned_value_scored_and_read_again_stays_owned():
    """z = tanh(x_t W + h U) is owned by columns on a team; s = z @ v sums z's blocks
    (each member its own, then the partials exchanged), and h' = z * s reads z again:
    z must still be owned there (the loop runs over the member's columns), not taken
    for whole. Team == one thread bit for bit == the interpreter."""
    units = 64
    body = ProgramBuilder()
    x_t, h = body.input("float32", ("B", 8)), body.input("float32", ("B", units))
    kernel, recurrent = body.input("float32", (8, units)), body.input("float32", (units, units))
    score = body.input("float32", (units, 1))
    z = body.apply("tanh", body.apply("add", body.apply("matmul", x_t, kernel),
                                      body.apply("matmul", h, recurrent)))
    new_h = body.apply("mul", z, body.apply("tanh", body.apply("matmul", z, score)))
    builder = ProgramBuilder()
    xs = builder.input("float32", ("B", "T", 8), name="x")
    h0 = builder.input("float32", ("B", units), name="h0", default=0.0)
    weights = [builder.param(name, "float32", shape) for name, shape in (
        ("W", (8, units)), ("U", (units, units)), ("v", (units, 1)))]
    y, _ = builder.scan(body.build([new_h, new_h]), sequences=[xs], states=[h0],
                        constants=weights, return_sequences=True)
    program = builder.build([y])
    weights = examples.random_weights(program, seed=2, scale=0.1)
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    source = compiled._team_kernel()[0].source
    assert "first_block" in source and "block_dot(" in compiled.source
    x = np.random.default_rng(2).standard_normal((1, 30, 8)).astype(np.float32)
    one = compiled(x, team_size=1)
    _assert_close(one, interpret(program, x, weights=weights))
    for members in (2, 3):
        np.testing.assert_array_equal(compiled(x, team_size=members), one)


def test_an_owned_attention_read_is_gathered_where_a_product_reads_it():
    """read = einsum(softmax(h @ Q), memory) is 64 wide: on a team each member
    computes its columns of it (`owned_einsum_applies`). h' = tanh(read @ W + read)
    reads it twice, so it is not reassociated, and the product reads it whole: it is
    gathered there. Team == one thread bit for bit == the interpreter."""
    units, rows = 64, 4
    body = ProgramBuilder()
    h = body.input("float32", ("B", units))
    memory = body.input("float32", ("B", rows, units))
    query, kernel = body.input("float32", (units, rows)), body.input("float32", (units, units))
    attention = body.apply("softmax", body.apply("matmul", h, query), axis=-1)
    read = body.apply("einsum", attention, memory, equation="bc,bce->be")
    new_h = body.apply("tanh", body.apply("add", body.apply("matmul", read, kernel), read))
    builder = ProgramBuilder()
    memory0 = builder.input("float32", ("B", rows, units), name="memory")
    h0 = builder.input("float32", ("B", units), name="h0", default=0.0)
    weights = [builder.param(name, "float32", shape)
               for name, shape in (("Q", (units, rows)), ("W", (units, units)))]
    y, _ = builder.scan(body.build([new_h, new_h]), states=[h0],
                        constants=[memory0, *weights], length=30, return_sequences=True)
    program = builder.build([y])
    weights = examples.random_weights(program, seed=3, scale=0.2)
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    assert re.search(r"for jj_\d+ in range\(own_count_64\):\n\s+(j_\d+) = .*\n"
                     r"\s+einsum\[i_b, \1\] \+=", compiled._team_kernel()[0].source)
    memory_value = np.random.default_rng(3).standard_normal((2, rows, units))
    memory_value = memory_value.astype(np.float32)
    one = compiled(memory_value, team_size=1)
    _assert_close(one, interpret(program, memory_value, weights=weights))
    for members in (2, 3):
        np.testing.assert_array_equal(compiled(memory_value, team_size=members), one)


def test_team_attention_scores_of_a_keras_decoder_match_keras():
    """The Keras attention decoder of the benchmark (Dense layers, RepeatVector, Dot)
    at 64 units: its team kernel splits the scores, and gives Keras's numbers; so does
    a batch of 5 whose keys, 80 rows, take np.dot instead of the packed product."""
    from bench import sizes, suites

    case = suites.attention_decoder(sizes.parse_size("2,9,16,64"), np.random.default_rng(5))
    compiled = rshop_ir.compile(case.model, target="cpu")
    assert "first_block" in compiled._team_kernel()[0].source
    # the keys (memory @ K, once a call outside the scan): packed product up to
    # RUN_PACKED_MAX_ROWS rows of memory, np.dot beyond
    assert f"if B * 16 <= {codegen.RUN_PACKED_MAX_ROWS}:\n        packed_product(in_" \
        in compiled.source
    expected = case.model.predict(case.inputs[0], verbose=0)
    one = compiled(*case.inputs, team_size=1)
    _assert_close(one, expected)
    for members in (2, 3):
        np.testing.assert_array_equal(compiled(*case.inputs, team_size=members), one)
    many = np.random.default_rng(6).standard_normal((5, 16, 16)).astype(np.float32)
    _assert_close(compiled(many), case.model.predict(many, verbose=0))   # 80 rows


def test_team_members_share_the_rows_of_a_product_before_the_scan():
    """The decoder's keys (memory @ K, in `run` before the scan): on a team the members
    take its rows in units of the biggest tile into a buffer at the end of
    `team_shared`, then meet (codegen's `_claimed_rows`); one thread computes them
    whole. Batches 1-4 (16-64 rows) claim, 5 (80 rows) takes np.dot on every member. Teams give one thread's
    numbers bit for bit and Keras's, also after the weights changed.
    Both kernels also take tanh(keys + query) factored (factored_activation.py)."""
    from bench import sizes, suites

    case = suites.attention_decoder(sizes.parse_size("1,12,40,64"), np.random.default_rng(8))
    compiled = rshop_ir.compile(case.model, target="cpu")
    team_kernel = compiled._team_kernel()[0]
    run_source = team_kernel.source[team_kernel.source.index("def run("):]
    claimed = run_source.index("claim_unit(team_counter"), run_source.index("scan_0(")
    assert claimed[0] < claimed[1]
    assert "team_shared[team_run_at:" in run_source
    # the keys, 16 rows of 64 units a batch row
    assert (team_kernel.team_run_row_bytes, team_kernel.team_run_buffers) == (16 * 64 * 4, 1)
    assert "claim_unit(" not in compiled.source    # one thread: the plain kernel
    assert "exp_twice" in compiled.source and "exp_twice" in team_kernel.source
    rng = np.random.default_rng(9)
    for batch in (1, 3, 4, 5):
        memory = rng.standard_normal((batch, 16, 40)).astype(np.float32)
        one = compiled(memory, team_size=1)
        _assert_close(one, case.model.predict(memory, verbose=0))
        for members in (2, 3):
            np.testing.assert_array_equal(compiled(memory, team_size=members), one)
    keys = next(layer for layer in case.model.layers[-1].model.layers    # memory -> keys
                if getattr(layer, "kernel", None) is not None
                and tuple(layer.kernel.shape) == (40, 64))
    keys.kernel.assign(keys.kernel.numpy() * 0.5)
    memory = rng.standard_normal((2, 16, 40)).astype(np.float32)
    _assert_close(compiled(memory, team_size=2), case.model.predict(memory, verbose=0))


def test_products_after_the_scan_are_not_shared_by_a_team():
    """Dense layers after the recurrent layer run in `run` after the scan, where a
    member's copy of the scan's output may be partial (codegen's `_run_claims`): every
    member computes them whole, none claims rows there; the numbers are Keras's."""
    import keras
    from recurrentshop import LSTMCell, RecurrentSequential

    stack = RecurrentSequential(backend="keras", return_sequences=False)
    stack.add(LSTMCell(64))
    x = keras.Input((9, 48))
    hidden = keras.layers.Dense(64)(stack(x))
    model = keras.Model(x, keras.layers.Dense(64, activation="tanh")(hidden))
    compiled = rshop_ir.compile(model, target="cpu")
    team_source = compiled._team_kernel()[0].source
    run_source = team_source[team_source.index("def run("):]
    after_scan = run_source[run_source.index("scan_0("):]
    assert "packed_product(" in after_scan and "claim_unit(" not in after_scan
    memory = np.random.default_rng(10).standard_normal((3, 9, 48)).astype(np.float32)
    one = compiled(memory, team_size=1)
    _assert_close(one, model.predict(memory, verbose=0))
    for members in (2, 3):
        np.testing.assert_array_equal(compiled(memory, team_size=members), one)


def test_a_keras_decoders_context_by_its_weight_is_one_owned_contraction():
    """The benchmark's decoder at 64 units over 40 steps: reassociate_products.py turns
    `Dot(attention, memory)` then the Dense reading it into one contraction of the
    attention with memory @ W, (B, 16, 64), computed once a call; a team member
    computes only its columns of it (`owned_einsum_applies`), and its columns of h @ U
    while it waits at the scores' exchange. One thread and teams of 2 and 3 give
    Keras's numbers, the teams bit for bit one thread's."""
    from bench import sizes, suites

    case = suites.attention_decoder(sizes.parse_size("1,40,64,64"), np.random.default_rng(7))
    compiled = rshop_ir.compile(case.model, target="cpu")
    scan = next(eqn for eqn in compiled.program.eqns if eqn.op == "scan")
    contractions = [eqn for eqn in scan.params["body"].eqns if eqn.op == "einsum"]
    assert [(eqn.inputs[1].shape, eqn.outputs[0].shape) for eqn in contractions] \
        == [(("B", 16, 64), ("B", 64))]
    assert not any(eqn.op == "matmul" and eqn.inputs[1].shape == (64, 64)
                   and eqn.inputs[0] is contractions[0].outputs[0]
                   for eqn in scan.params["body"].eqns)
    team_source = compiled._team_kernel()[0].source
    assert re.search(r"einsum\[i_b, (j_\d+)\] \+= v_\d+\[i_b, i_c\] \* "
                     r"constant_\d+\[i_b, i_c, \1\]", team_source)
    # h @ U, read only by the last loop of the step, is computed while the member
    # waits for the partners' partial scores (ColumnOwnership.defer)
    step_loop = team_source[team_source.index("for step in range("):]
    arrive, wait = step_loop.index("team_arrive("), step_loop.index("team_await(")
    assert step_loop[:arrive].count("packed_product(state_0") == 1
    assert step_loop[arrive:wait].count("packed_product(state_0") == 1
    expected = case.model.predict(case.inputs[0], verbose=0)
    one = compiled(*case.inputs, team_size=1)
    _assert_close(one, expected)
    for members in (2, 3):
        np.testing.assert_array_equal(compiled(*case.inputs, team_size=members), one)


def test_members_view_the_output_rank_0_published():
    """team_output.py: a member waits for rank 0's address, views the same memory (its
    writes land in rank 0's array), and gets 0 instead when the run was aborted."""
    from rshop_ir.kernels.cpu.team_output import output_at, publish_output, published_output
    from rshop_ir.kernels.cpu.team_sync import ABORT, COUNTER_SIZE

    counter = np.zeros(COUNTER_SIZE, np.int64)
    output = np.zeros((2, 3, 4), np.float32)
    publish_output(counter, 5, output)
    view = output_at(published_output(counter, 5), np.empty_like(output))
    view[1, 2, 3] = 7.0
    assert output[1, 2, 3] == 7.0 and view.shape == output.shape
    counter[ABORT] = 1
    assert published_output(counter, 6) == 0


@pytest.mark.parametrize("steps, chunk_steps", [(9, None), (67, 5)])
def test_team_members_own_columns_of_every_gate(steps, chunk_steps):
    """Gates starting on whole blocks of the packed weight (64 units): each member
    computes its columns of every gate (one packed product a gate), runs the gate loop
    over those columns only, and the team exchanges ONE value a step, h, which the next
    product reads whole; the cell state c, read only by the gate loop, stays split
    until one exchange after the last step (kernels/cpu/team_columns.py). Outputs and
    final states equal one thread's bit for bit (members 2 and 3: the third owns no
    column of a 64-wide value), and the interpreter's."""
    program = examples.lstm_program(40, 64, return_sequences=True)
    weights = examples.random_weights(program, scale=0.5)
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    source = compiled._team_kernel()[0].source
    steps_start = source.index("for step in range(")
    after_steps = source.index("\n    if team_size > 1:", steps_start)
    step_loop, after = source[steps_start:after_steps], source[after_steps:]
    assert step_loop.count("packed_product(state_0, packed, packed_start + (") == 4
    assert "e = (projected_0[row + i_4, j_4] + product[i_4, j_4])" in step_loop
    assert "j_4 = (own_low_64 + jj_4) & 0x7FFFFFFF" in step_loop      # the owned gate loop
    assert step_loop.count("team_arrive(") == step_loop.count("team_await(") == 1 \
        and "next_state_0[i_5, (member_low + j_5) & 0x7FFFFFFF]" in step_loop
    assert after.count("team_await(") == 1 \
        and "state_1[i_6, (member_low_1 + j_6) & 0x7FFFFFFF]" in after
    x = np.random.default_rng(steps).standard_normal((1, steps, 40)).astype(np.float32)
    one = compiled(x, team_size=1, chunk_steps=chunk_steps)
    _assert_close(one, interpret(program, x, weights=weights))
    for members in (2, 3):
        team_result = compiled(x, team_size=members, chunk_steps=chunk_steps)
        assert len(team_result) == 3
        for got, expected in zip(team_result, one):
            np.testing.assert_array_equal(got, expected)


def test_a_product_off_the_blocks_is_gathered_whole_and_its_gates_still_split():
    """Gates of 40 units do not start on blocks (of 16 or 32 columns): the team splits
    the product's columns and gathers them whole right after it. The gate loop still
    runs over each member's columns, since it reads the cell state, which stays split
    between steps. Same numbers as one thread."""
    program = examples.lstm_program(40, 40, return_sequences=True)
    weights = examples.random_weights(program, scale=0.5)
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    source = compiled._team_kernel()[0].source
    assert "packed_start + team_low * 40, team_part)" in source
    assert "& 0x7FFFFFFF" in source[source.index("= (projected_0[row + ") - 400:]
    x = np.random.default_rng(5).standard_normal((1, 11, 40)).astype(np.float32)
    one = compiled(x, team_size=1)
    _assert_close(one, interpret(program, x, weights=weights))
    for got, expected in zip(compiled(x, team_size=2), one):
        np.testing.assert_array_equal(got, expected)


def _lstm(input_size=8, units=16):
    """A small LSTM program whose recurrent matmul a team splits by default."""
    program = examples.lstm_program(input_size, units, return_sequences=True)
    weights = examples.random_weights(program, scale=0.3)
    rng = np.random.default_rng(11)
    inputs = [rng.standard_normal(shape).astype(np.float32)
              for shape in ((1, 9, input_size), (1, units), (1, units))]
    return program, weights, inputs


def test_packed_weights_follow_weight_changes():
    """The runtime packs the recurrent weight once per weight version and every
    member reads its blocks of that copy: every change must reach the next call, on a
    team and on one thread, and arrays changed in place behind the compiled object's
    back must not."""
    # 20 units: gates off the blocks (16 or 32 columns), so the members split the
    # product's columns (`team_low`) rather than each gate's
    program, weights, inputs = _lstm(units=20)
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    assert compiled.kernel.team_weight_bytes == 20 * 80 * 4   # the plain kernel knows
    packed_slots = [slot for slot in compiled.kernel.weight_slots if slot[0] == "packed"]
    assert len(packed_slots) == 1
    team_kernel = compiled._team_kernel()[0]
    assert team_kernel.weight_slots == compiled.kernel.weight_slots
    # a member's blocks: `team_low` columns x 20 contraction rows into the packed copy
    assert "packed_start + team_low * 20, team_part)" in team_kernel.source
    assert "row_weight" not in team_kernel.source + compiled.source   # no per-call copy
    for scale in (1.0, 0.5, -1.5):
        changed = {name: scale * value for name, value in weights.items()}
        compiled.set_weights(changed)
        expected = interpret(program, *inputs, weights=changed)
        _assert_close(compiled(*inputs, team_size=2), expected)
        _assert_close(compiled(*inputs, team_size=2), expected)   # the kept copies
        for value in changed.values():
            value *= 3.0                          # the caller's arrays, in place
        compiled.weights["lstm/Uf"][...] = 0.0    # a copy: changes nothing
        _assert_close(compiled(*inputs, team_size=2), expected)
        _assert_close(compiled(*inputs, team_size=1), expected)


def test_a_constant_that_is_not_a_weight_is_packed_at_every_call():
    """A recurrent matmul by a scan constant computed from an input (not a weight)
    has no copy packed once per weight version: the kernel packs it at every call
    (enough rows x steps) and no team splits it."""
    body = ProgramBuilder()
    x_t = body.input("float32", ("B", 4))
    h = body.input("float32", ("B", 32))
    matrix = body.input("float32", (32, 32))
    kernel = body.input("float32", (4, 32))
    new_h = body.apply("tanh", body.apply("add", body.apply("matmul", x_t, kernel),
                                          body.apply("matmul", h, matrix)))
    builder = ProgramBuilder()
    xs = builder.input("float32", ("B", "T", 4), name="x")
    h0 = builder.input("float32", ("B", 32), name="h0")
    recurrent = builder.input("float32", (32, 32), name="recurrent")
    w = builder.param("w", "float32", (4, 32))
    y, _ = builder.scan(body.build([new_h, new_h]), sequences=[xs], states=[h0],
                        constants=[recurrent, w], return_sequences=True)
    program = builder.build([y])
    weights = {"w": np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)}
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    assert "packed_product(state_0, row_weight, row_weight_start" in compiled.source
    assert not any(kind == "packed" for kind, _ in compiled.kernel.weight_slots)
    assert compiled.kernel.team_columns == 0
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 12, 4)).astype(np.float32)
    h_start = np.zeros((1, 32), np.float32)
    for _ in range(3):
        matrix_value = (0.3 * rng.standard_normal((32, 32))).astype(np.float32)
        expected = interpret(program, x, h_start, matrix_value, weights=weights)
        _assert_close(compiled(x, h_start, matrix_value, team_size=2), expected)
        _assert_close(compiled(x, h_start, matrix_value), expected)


def test_automatic_team_rule(monkeypatch):
    """A call that does not ask forms a team of 2 only for one row, enough steps, a
    weight too big for one core's cache, 2+ usable cores and no other busy process."""
    monkeypatch.setattr(team, "usable_cores", lambda: 2)
    monkeypatch.setattr(team, "others_idle", lambda: True)
    big = SimpleNamespace(team_weight_bytes=team.AUTO_MIN_WEIGHT_BYTES)
    small = SimpleNamespace(team_weight_bytes=team.AUTO_MIN_WEIGHT_BYTES - 1)
    steps = team.AUTO_MIN_STEPS
    assert team.auto_team_size(big, 1, steps) == 2
    assert team.auto_team_size(big, 2, steps) == 1          # tiles serve 2+ rows
    assert team.auto_team_size(big, 0, steps) == 1
    assert team.auto_team_size(big, 1, steps - 1) == 1      # too few steps
    assert team.auto_team_size(small, 1, steps) == 1        # fits one core's cache
    monkeypatch.setattr(team, "others_idle", lambda: False)
    assert team.auto_team_size(big, 1, steps) == 1          # another process is busy
    monkeypatch.setattr(team, "others_idle", lambda: True)
    monkeypatch.setattr(team, "usable_cores", lambda: 1)
    assert team.auto_team_size(big, 1, steps) == 1


def _spy_on_automatic_teams(monkeypatch) -> list:
    """Let every call qualify for the automatic team (2 idle cores, no size or length
    threshold) and keep it (team_choice.py would run the first calls on one thread;
    tests/test_team_choice.py tests that); the returned list receives the member count
    of each team formed. The team's kernel compiles in the call that first wants it
    (background_compile.py would run such calls on one thread while it compiles;
    tests/test_background_compile.py tests that)."""
    monkeypatch.setattr(TeamChoice, "members", lambda self, key, proposed: proposed)
    monkeypatch.setattr(background_compile, "BACKGROUND", False)
    monkeypatch.setattr(team, "usable_cores", lambda: 2)
    monkeypatch.setattr(team, "others_idle", lambda: True)
    monkeypatch.setattr(team, "AUTO_MIN_WEIGHT_BYTES", 1)
    monkeypatch.setattr(team, "AUTO_MIN_STEPS", 1)
    teams = []
    for launcher in ("run_team", "launch_natively"):    # Python or native members
        original = getattr(team, launcher)
        monkeypatch.setattr(f"rshop_ir.kernels.cpu.runtime.{launcher}",
                            lambda *args, original=original:
                            teams.append(args[1].members) or original(*args))
    return teams


def test_automatic_team_runs_and_matches(monkeypatch):
    program, weights, inputs = _lstm()
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    teams = _spy_on_automatic_teams(monkeypatch)
    expected = interpret(program, *inputs, weights=weights)
    _assert_close(compiled(*inputs), expected)
    assert teams == [2], "the call formed a team of two by itself"
    _assert_close(compiled(inputs[0]), interpret(program, inputs[0], weights=weights))
    assert teams == [2, 2]                      # the fast call path decides alike
    _assert_close(compiled(*inputs, team_size=1), expected)
    assert teams == [2, 2], "team_size=1 never forms a team"


def test_automatic_team_of_a_keras_lstm_matches_keras(monkeypatch):
    """A compiled Keras LSTM layer (its weights re-read from the variables) forms the
    automatic team for a one-row call and gives Keras's numbers, also after a
    `set_weights` on the layer (the team's weight copies follow)."""
    import keras

    inputs = keras.Input((9, 8))
    layer = keras.layers.LSTM(16, return_sequences=True)
    model = keras.Model(inputs, layer(inputs))
    compiled = rshop_ir.compile(layer, target="cpu")
    teams = _spy_on_automatic_teams(monkeypatch)
    x = np.random.default_rng(4).standard_normal((1, 9, 8)).astype(np.float32)
    _assert_close(compiled(x), np.asarray(model(x)))
    layer.set_weights([0.5 * weight for weight in layer.get_weights()])
    _assert_close(compiled(x), np.asarray(model(x)))
    assert teams == [2, 2], "both calls formed a team of two by themselves"


def test_team_members_run_on_cores_of_their_own():
    """For the call, each member is pinned to its own core (the caller to the one it
    is on); the caller's affinity is restored afterwards."""
    import os

    from rshop_ir.kernels.cpu import pinning

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no os.sched_setaffinity on this system: members are not pinned")
    before = os.sched_getaffinity(0)
    cores = pinning.member_cores(2)
    if len(before) < 2:
        assert cores is None
        return
    assert len(set(cores)) == 2 and set(cores) <= before
    program, weights, _ = _lstm()
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    buffers = team.TeamBuffers(compiled._team_kernel()[0], 2)
    seen = {}

    def member(rank, *rest):
        seen[rank] = os.sched_getaffinity(0)
        return [rank]

    assert team.run_team(member, buffers, 1, 1) == [0]
    assert len(seen[0]) == len(seen[1]) == 1 and seen[0] != seen[1]
    assert os.sched_getaffinity(0) == before


def test_team_runs_unpinned_where_the_system_refuses_pinning(monkeypatch):
    import os

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no os.sched_setaffinity on this system: members are not pinned")

    def refuse(pid, cores):
        raise OSError(22, "Invalid argument")

    program, weights, inputs = _lstm()
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    expected = interpret(program, *inputs, weights=weights)
    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    _assert_close(compiled(*inputs, team_size=2), expected)


def test_threads_calling_one_compiled_object_with_teams_at_once():
    """Each calling thread has its own team buffers; results stay exact."""
    import threading

    program, weights, inputs = _lstm()
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    rng = np.random.default_rng(21)
    sequences = [rng.standard_normal(inputs[0].shape).astype(np.float32)
                 for _ in range(4)]
    expected = [interpret(program, x, *inputs[1:], weights=weights) for x in sequences]
    got, failures = [None] * 4, []

    def call(index):
        try:
            for _ in range(5):
                got[index] = compiled(sequences[index], *inputs[1:], team_size=2)
        except BaseException as failure:    # reported below, in the test's thread
            failures.append(failure)

    threads = [threading.Thread(target=call, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and not any(thread.is_alive() for thread in threads)
    for result, reference in zip(got, expected):
        _assert_close(result, reference)


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

    def weight_on_the_left(builder, x):
        rows = builder.apply("reshape", x, shape=("B", 2, 2))
        w = builder.param("w", "float32", (3, 2))
        return builder.apply("matmul", w, rows)

    def shifted_features(builder, x):
        return builder.apply("shift", x, axis=1, offset=1)

    for build in (dense_softmax, per_row_sum, einsum_rows, weight_on_the_left,
                  shifted_features):
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

    def shifted_batch(builder, x):
        return builder.apply("shift", x, axis=0, offset=1)

    def weight_over_the_batch(builder, x):
        w = builder.param("w", "float32", (3, "B"))
        return builder.apply("matmul", w, x)

    for build in (batch_sum, batch_softmax, batch_gram, reversed_batch, contracted_batch,
                  shifted_batch, weight_over_the_batch):
        assert not rows_independent(_program(build)), build.__name__


@pytest.mark.serial        # reads the machine's load: no other test process beside it
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

    def spinner_seconds():     # its user + system CPU time (/proc/PID/stat)
        with open(f"/proc/{spinner.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    try:
        # on a loaded VM the interpreter may take a while to start spinning
        waited_until = time.monotonic() + 20
        while spinner_seconds() < 0.2 and time.monotonic() < waited_until:
            time.sleep(0.05)
        core_load._STATE["time"] = None
        core_load.others_load()
        time.sleep(0.5)
        assert core_load.others_load() > 0.7
        assert not core_load.others_idle()
    finally:
        spinner.kill()
        spinner.wait()


def _spy_on_blas_scopes(monkeypatch) -> list:
    """The step FLOPs of each BLAS thread-count scope the runtime enters."""
    from rshop_ir.kernels.cpu import runtime

    scopes = []
    original = runtime.blas_threads_for
    monkeypatch.setattr(runtime, "blas_threads_for",
                        lambda flops: scopes.append(flops) or original(flops))
    return scopes


@pytest.mark.parametrize("sizes, guard", [((3, 4), "True"), ((32, 64), "")])
def test_blas_threads_are_set_only_around_kernels_that_call_blas(sizes, guard, monkeypatch):
    """A kernel with no `np.dot` line never calls BLAS, so its calls skip the BLAS
    thread-count scope (library calls costing microseconds a call); one whose
    `np.dot` may always run (the 3-feature projection by BLAS) runs inside it, on one
    thread and on a team."""
    program = examples.lstm_program(*sizes, return_sequences=True)
    weights = examples.random_weights(program)
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    assert compiled.kernel.blas_guard == guard
    assert ("np.dot(" in compiled.source) is bool(guard)
    scopes = _spy_on_blas_scopes(monkeypatch)
    x = np.random.default_rng(3).standard_normal((2, 6, sizes[0])).astype(np.float32)
    expected = interpret(program, x, weights=weights)
    _assert_close(compiled(x, team_size=1), expected)
    _assert_close(compiled(x, team_size=2), expected)
    assert compiled._team_kernel()[0].blas_guard == guard
    assert len(scopes) == (2 if guard else 0)


def test_the_blas_scope_follows_the_batch_its_guard_names(monkeypatch):
    """The benchmark's decoder projects its 16 memory rows a batch row by the packed
    product up to 64 rows, by BLAS beyond: calls of 1-4 rows skip the BLAS scope,
    calls of 5 or more enter it; the numbers are Keras's either way."""
    from bench import sizes, suites

    case = suites.attention_decoder(sizes.parse_size("1,6,64,64"), np.random.default_rng(2))
    compiled = rshop_ir.compile(case.model, target="cpu")
    assert compiled.kernel.blas_guard == "(B * 16 > 64)"
    assert compiled.source.count("np.dot(") == 1
    scopes = _spy_on_blas_scopes(monkeypatch)
    memory = np.random.default_rng(4).standard_normal((6, 16, 64)).astype(np.float32)
    for batch, entered in ((1, 0), (4, 0), (5, 1), (6, 1)):
        scopes.clear()
        got = compiled(memory[:batch], team_size=1)
        assert len(scopes) == entered, batch
        _assert_close(got, case.model.predict(memory[:batch], verbose=0))


def test_a_blas_guard_is_a_predicate_of_the_call():
    from rshop_ir.kernels.cpu.blas_threads import blas_predicate

    assert not blas_predicate("")(64, 10)
    assert blas_predicate("True")(1, 1)
    calls = blas_predicate("(B >= 8) or (B * T > 64)")
    assert [calls(1, 10), calls(8, 1), calls(2, 40)] == [False, True, True]
    assert blas_predicate("(v.shape[0] > 64)")(1, 1), "a guard it cannot read is true"
