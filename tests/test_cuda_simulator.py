"""The Numba CUDA target (rshop_ir.compile(..., target="cuda")) in Numba's CUDA simulator.

Every zoo model (tests/zoo.py) and an option matrix (readout modes, decode, state_sync,
go_backwards, initial states, return_states/return_sequences, batch 1, several blocks,
workspace in global memory, masking, a convolution before the RNN, causal attention,
a bool constant in a step, running sums, strided slices, a
number of steps unknown at trace time) is built and run in Keras here, traced, saved with
its inputs, the Keras outputs and the CPU kernel's outputs; ONE subprocess with
NUMBA_ENABLE_CUDASIM=1 (tests/cuda_sim_checks.py, Keras blocked) compiles each for CUDA
and compares (max abs error 1e-4) in both layouts of the scan kernels (blocks owning
rows; a group of blocks splitting them, here with one block per group), and once more
with the threads run one at a time between barriers in both orders, also in groups of
2 and 3 blocks (tests/ordered_threads.py: what the simulator cannot run), plus device-array in/out, new weights, unsupported
ops and both GEMM kernels. In this process: no GPU -> a clear ValueError, and every
generated kernel compiles to PTX for a real GPU when NVVM is installed (the simulator
does not type-check kernels).
"""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import layers, ops

import rshop_ir
import zoo
from recurrentshop import GRUCell, LSTMCell, RecurrentModel, RecurrentSequential
from rshop_ir.kernels.cuda.device import cuda
from rshop_ir.kernels.cuda.group_sync import group_barrier

ATOL = 1e-4
HERE = os.path.dirname(os.path.abspath(__file__))
BATCH, TIME, FEATURES, UNITS = 2, 4, 3, 4
EXTRA_CHECKS = ["device_arrays", "new_weights", "unsupported", "gemm", "edges",
                "group_requests", "ordered_races", "weight_slices", "left_staging"]


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _randomized(rng, layer, x, **kwargs):
    layer(x, **kwargs)
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                       for w in layer.get_weights()])
    return layer


def _sequence(rng, batch=BATCH, time=TIME, features=FEATURES):
    return rng.standard_normal((batch, time, features)).astype("float32")


def _readout_case(mode):
    def make(rng):
        rnn = RecurrentSequential(backend="keras", readout=mode, return_sequences=True)
        rnn.add(LSTMCell(UNITS))
        rnn.add(layers.Dense(FEATURES))
        x = _sequence(rng)
        return zoo.ZooCase(f"readout_{mode}", _randomized(rng, rnn, x), [x])
    return make


def _decode(rng):
    rnn = RecurrentSequential(backend="keras", decode=True, output_length=3,
                              return_sequences=True)
    rnn.add(GRUCell(UNITS))
    vector = rng.standard_normal((BATCH, FEATURES)).astype("float32")
    return zoo.ZooCase("decode", _randomized(rng, rnn, vector), [vector])


def _state_sync(rng):
    rnn = RecurrentSequential(backend="keras", state_sync=True, return_sequences=True,
                              return_states=True)
    rnn.add(LSTMCell(UNITS))
    rnn.add(LSTMCell(UNITS))
    x = _sequence(rng, features=UNITS)
    return zoo.ZooCase("state_sync", _randomized(rng, rnn, x), [x])


def _backwards_sequences(rng):
    x = _sequence(rng)
    layer = layers.LSTM(UNITS, go_backwards=True, return_sequences=True)
    return zoo.ZooCase("go_backwards_sequences", _randomized(rng, layer, x), [x])


def _initial_states_return_states(rng):
    x = _sequence(rng)
    h0, c0 = (rng.standard_normal((BATCH, UNITS)).astype("float32") for _ in range(2))
    layer = layers.LSTM(UNITS, return_state=True)
    layer = _randomized(rng, layer, x, initial_state=[h0, c0])
    return zoo.ZooCase("initial_states_return_states", layer, [x],
                       {"initial_state": [h0, c0]})


def _return_states_gru(rng):
    rnn = RecurrentSequential(backend="keras", return_states=True, go_backwards=True)
    rnn.add(GRUCell(UNITS))
    x = _sequence(rng)
    return zoo.ZooCase("return_states_last_output", _randomized(rng, rnn, x), [x])


def _batch_one(rng):
    x = _sequence(rng, batch=1)
    return zoo.ZooCase("batch_one", _randomized(rng, layers.GRU(UNITS), x), [x])


def _masked(rng):
    inputs = keras.Input((TIME, FEATURES))
    masked = layers.Masking()(inputs)
    rnn = LSTMCell(UNITS, input_dim=FEATURES).get_layer(backend="keras",
                                                        return_sequences=True)
    model = keras.Model(inputs, rnn(masked))
    x = _sequence(rng, batch=3)
    x[0, -2:] = 0.0
    x[2, 1] = 0.0
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                       for w in model.get_weights()])
    return zoo.ZooCase("masked_sequences", model, [x])


def _convolution(rng):
    """Conv1D before a GRU: "causal" padding concatenates zeros before the steps, and
    the stride reshapes and slices them (frontends/keras_trace/window_rules.py)."""
    inputs = keras.Input((TIME, FEATURES))
    hidden = layers.Conv1D(UNITS, 2, strides=2, padding="causal")(inputs)
    model = keras.Model(inputs, layers.GRU(UNITS, return_sequences=True)(hidden))
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                       for w in model.get_weights()])
    return zoo.ZooCase("conv1d_causal_strided", model, [_sequence(rng, batch=3)])


def _causal_attention(rng):
    """Masked steps, a GRU and causal self-attention: the causal mask is a bool
    constant, packed as 0 and 1 among the float weights (kernels/cuda/weights.py)."""
    inputs = keras.Input((TIME, FEATURES))
    hidden = layers.GRU(UNITS, return_sequences=True)(layers.Masking()(inputs))
    attended = layers.MultiHeadAttention(2, 2)(hidden, hidden, use_causal_mask=True)
    model = keras.Model(inputs, attended)
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                       for w in model.get_weights()])
    x = _sequence(rng, batch=3)
    x[1, -1:] = 0.0
    return zoo.ZooCase("causal_attention", model, [x])


def _bool_constant_in_step(rng):
    """A step negating some units, chosen by a bool constant inside the scan."""
    x_t, h = keras.Input((FEATURES,)), keras.Input((UNITS,))
    chosen = layers.Lambda(lambda v: ops.where(ops.arange(UNITS) < 2, v, -v))
    h_new = layers.Activation("tanh")(layers.add(
        [layers.Dense(UNITS)(x_t), chosen(layers.Dense(UNITS, use_bias=False)(h))]))
    rnn = RecurrentModel(input=x_t, initial_states=[h], output=h_new, final_states=[h_new],
                         return_sequences=True)
    x = _sequence(rng)
    return zoo.ZooCase("bool_constant_in_step", _randomized(rng, rnn, x), [x])


def _running_sums(rng):
    """Running sums over the steps before a GRU, running products over its units."""
    inputs = keras.Input((TIME, FEATURES))
    summed = layers.Lambda(lambda v: ops.cumsum(v, axis=1))(inputs)
    hidden = layers.GRU(UNITS, return_sequences=True)(summed)
    model = keras.Model(inputs, layers.Lambda(lambda v: ops.cumprod(v, axis=-1))(hidden))
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                       for w in model.get_weights()])
    return zoo.ZooCase("running_sums", model, [_sequence(rng, batch=3)])


def _strided_slices(rng):
    """Every second step, the features reversed (a reshape into groups, a reverse)."""
    inputs = keras.Input((TIME, FEATURES))
    cut = layers.Lambda(lambda v: v[:, 1::2, ::-1])(inputs)
    model = keras.Model(inputs, layers.GRU(UNITS, return_sequences=True)(cut))
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                       for w in model.get_weights()])
    return zoo.ZooCase("strided_slices", model, [_sequence(rng, batch=3)])


def _centred_over_unknown_steps(rng):
    """Steps not known when traced (the kernels index by `3 * T`): each sequence less
    its mean over steps and features, before a GRU."""
    inputs = keras.Input((None, FEATURES))
    centred = layers.Lambda(lambda v: v - ops.mean(v, axis=(1, 2), keepdims=True))(inputs)
    model = keras.Model(inputs, layers.GRU(UNITS, return_sequences=True)(centred))
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                       for w in model.get_weights()])
    return zoo.ZooCase("centred_over_unknown_steps", model, [_sequence(rng, batch=3) + 2])


def _multi_block(rows_per_block, shared_memory_bytes=None, name="multi_block"):
    def make(rng):
        x = _sequence(rng, batch=5)
        layer = layers.LSTM(UNITS, return_sequences=True)
        return zoo.ZooCase(name, _randomized(rng, layer, x), [x])
    make.options = {"rows_per_block": rows_per_block,
                    "shared_memory_bytes": shared_memory_bytes}
    return make


MATRIX = {
    **{f"readout_{mode}": _readout_case(mode)
       for mode in (True, "add", "mul", "avg", "max", "readout_only")},
    "decode": _decode,
    "state_sync": _state_sync,
    "go_backwards_sequences": _backwards_sequences,
    "initial_states_return_states": _initial_states_return_states,
    "return_states_last_output": _return_states_gru,
    "batch_one": _batch_one,
    "masked_sequences": _masked,
    "conv1d_causal_strided": _convolution,
    "causal_attention": _causal_attention,
    "bool_constant_in_step": _bool_constant_in_step,
    "running_sums": _running_sums,
    "strided_slices": _strided_slices,
    "centred_over_unknown_steps": _centred_over_unknown_steps,
    "one_row_per_block": _multi_block(1, name="one_row_per_block"),
    "partial_last_block": _multi_block(2, name="partial_last_block"),
    "global_workspace": _multi_block(3, shared_memory_bytes=0, name="global_workspace"),
}
ZOO_CASES = {f"zoo_{entry.__name__}": entry for entry in zoo.ZOO}
ALL_CASES = {**ZOO_CASES, **MATRIX}


def _save_case(folder, make):
    case = make(np.random.default_rng(3))
    expected = _as_list(case.reference())
    cpu = _as_list(rshop_ir.compile(case.target, target="cpu")(*case.inputs, **case.kwargs))
    arrays = {f"arg{i}": np.asarray(value) for i, value in enumerate(case.inputs)}
    for name, value in case.kwargs.items():
        for index, item in enumerate(_as_list(value)):
            arrays[f"kw_{name}_{index}"] = np.asarray(item)
    arrays.update({f"keras{i}": value for i, value in enumerate(expected)})
    arrays.update({f"cpu{i}": value for i, value in enumerate(cpu)})
    os.makedirs(folder)
    rshop_ir.save(rshop_ir.trace(case.target), os.path.join(folder, "program"))
    np.savez(os.path.join(folder, "arrays.npz"), **arrays)
    options = {"rows_per_block": 2, "threads_per_block": 16, **getattr(make, "options", {}),
               "num_args": len(case.inputs), "num_outputs": len(expected)}
    with open(os.path.join(folder, "options.json"), "w") as handle:
        json.dump(options, handle)


def _read_back(handle) -> str:
    """The text written to the open file `handle`, which is closed."""
    with handle:
        handle.seek(0)
        return handle.read()


def _simulator_env(tmp_path):
    return {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
            "RSHOP_CACHE_DIR": str(tmp_path / "cache"),
            "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE),
                                           os.environ.get("PYTHONPATH", "")])}


# The simulator runs kernels as Python on one core: its checks are dealt to this many
# subprocesses, run at once (the CI machine has two cores).
SIMULATOR_PROCESSES = max(1, min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def simulator_results(tmp_path_factory):
    """Build and save every case here; run them in simulator subprocesses, each taking
    every SIMULATOR_PROCESSES-th case and extra check."""
    root = tmp_path_factory.mktemp("cuda_cases")
    processes = []
    for share in range(SIMULATOR_PROCESSES):
        cases_dir = root / f"cases_{share}"
        cases_dir.mkdir()
        for name in sorted(ALL_CASES)[share::SIMULATOR_PROCESSES]:
            _save_case(str(cases_dir / name), ALL_CASES[name])
        # output to files: a pipe read only after the other process ended could fill
        # and stall this one
        outputs = [open(root / f"process_{share}.{kind}", "w+") for kind in ("out", "err")]
        processes.append((subprocess.Popen(
            [sys.executable, os.path.join(HERE, "cuda_sim_checks.py"), str(cases_dir),
             *EXTRA_CHECKS[share::SIMULATOR_PROCESSES]],
            env=_simulator_env(root / f"process_{share}"), stdout=outputs[0],
            stderr=outputs[1], text=True), outputs))
    results, failures = {}, []
    for process, outputs in processes:
        process.wait(timeout=900)
        stdout, stderr = (_read_back(handle) for handle in outputs)
        for line in stdout.splitlines():
            if line.startswith("RESULT "):
                fields = json.loads(line[len("RESULT "):])
                if fields["case"] == "modules":   # one report a process: keep them all
                    results.setdefault("modules", {"keras": []})["keras"] += fields["keras"]
                else:
                    results[fields["case"]] = fields
        if process.returncode != 0:
            failures.append(stdout[-3000:] + stderr[-3000:])
    assert not failures and results, "\n".join(failures)
    return results


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_cuda_kernel_matches_keras_and_cpu(simulator_results, case):
    fields = simulator_results.get(case)
    assert fields is not None, f"no result for {case}"
    assert "error" not in fields, fields["error"]
    # blocks owning rows (0 blocks per group), then a group of blocks splitting them
    assert (fields["used"], fields["group_used"]) == (0, 1), fields
    for layout in ("", "group_"):
        assert fields[layout + "shapes"], fields
        assert fields[layout + "keras_error"] < ATOL, fields
        assert fields[layout + "cpu_error"] < ATOL, fields
    # threads one at a time between barriers, in both orders, also in groups of several
    # blocks (tests/ordered_threads.py): a missing barrier would give other numbers
    assert len(fields["ordered_errors"]) == 3, fields
    assert max(fields["ordered_errors"].values()) < ATOL, fields


def test_saved_programs_compile_without_keras(simulator_results):
    assert simulator_results["modules"]["keras"] == []


def test_device_arrays_in_and_out(simulator_results):
    fields = simulator_results["device_arrays"]
    assert "error" not in fields, fields.get("error")
    assert fields["all_device"] and fields["host_numpy"] and fields["shapes"]
    assert max(fields["errors"]) < ATOL, fields
    assert "dtype float32" in fields["wrong_dtype"]


def test_weights_changed_after_compile_give_new_numbers(simulator_results):
    fields = simulator_results["new_weights"]
    assert "error" not in fields, fields.get("error")
    assert fields["changed"]
    assert fields["weights_error"] < ATOL
    assert fields["uploads"] == 1          # set_weights uploads once; calls do not
    assert fields["reader_first_error"] < ATOL
    assert fields["reader_second_error"] < ATOL


def test_unsupported_ops_name_the_op(simulator_results):
    fields = simulator_results["unsupported"]
    assert "error" not in fields, fields.get("error")
    nested, matmul = fields["messages"]
    assert "scan" in nested and "cuda" in nested
    assert "matmul" in matmul


def test_both_gemm_kernels(simulator_results):
    fields = simulator_results["gemm"]
    assert "error" not in fields, fields.get("error")
    assert max(fields["errors"].values()) < 1e-5


def test_zero_batch_zero_length_and_nan_like_the_interpreter(simulator_results):
    fields = simulator_results["edges"]
    assert "error" not in fields, fields.get("error")
    assert fields["shapes"] and fields["nan_agree"]
    assert max(fields["errors"]) < ATOL


def test_group_layout_requests_are_checked(simulator_results):
    fields = simulator_results["group_requests"]
    assert "error" not in fields, fields.get("error")
    messages = fields["messages"]
    assert "simulator runs blocks one" in messages["2"] and "blocks_per_group=1" in messages["2"]
    for value in ("-1", "True", "1.5"):
        assert "blocks_per_group must be None (automatic), 0 (the block layout) or an int" \
            in messages[value]
    # a barrier whose partner block never came: both barriers counted, flag set, refused
    assert fields["counters"] == [2, 1], fields
    assert "waited too long" in fields["timeout_message"]
    assert "blocks_per_group=0" in fields["timeout_message"]


def test_ordered_threads_catch_a_missing_barrier(simulator_results):
    fields = simulator_results["ordered_races"]
    assert "error" not in fields, fields.get("error")
    errors = fields["errors"]
    assert len(errors) == 8 and fields["removed_syncs"] >= 2, fields
    for label, error in errors.items():
        if label.startswith("as generated"):
            assert error < ATOL, errors
        else:
            assert error > 1e-3, errors


def test_blocks_keep_their_weight_tiles_in_shared_memory_when_they_fit(simulator_results):
    fields = simulator_results["weight_slices"]
    assert "error" not in fields, fields.get("error")
    errors = fields["errors"]
    assert fields["corrupted"] and len(errors) == 6, fields
    for label, error in errors.items():
        # one block per rows reads the weight from global memory: untouched by the
        # corrupted copy; groups of 2 and 3 blocks hold few enough tiles to read them
        uses_tiles = label.startswith("corrupted") and "G=0" not in label
        assert (error > 1e-2) if uses_tiles else (error < ATOL), errors


def test_split_matmuls_stage_their_left_rows_in_shared_memory(simulator_results):
    fields = simulator_results["left_staging"]
    assert "error" not in fields, fields.get("error")
    assert fields["staged"] == {"lsh": True, "local acc": False}, fields
    assert fields["in_place"] == {"lsh": False, "local acc": True}, fields
    assert fields["barrier_removed"], fields
    errors = fields["errors"]
    assert len(errors) == 10, errors
    for label, error in errors.items():
        if label.startswith("no staging barrier"):
            assert error > 1e-2, errors          # the ordered runs catch the missing sync
        else:
            assert error < ATOL, errors


def test_group_layout_is_chosen_for_few_rows_on_a_big_gpu(monkeypatch):
    """The automatic layout (kernels/cuda/runtime.py) with a stand-in GPU of 132
    multiprocessors: a group of blocks for rows that would leave most of them idle,
    a block per 32-column tile of the step's widest value; the block layout when rows
    fill the GPU."""
    from rshop_ir.kernels.cuda import device, runtime

    monkeypatch.setattr(device, "in_simulator", lambda: False)
    monkeypatch.setattr(device, "device_count_of_sms", lambda: 132)
    rt = runtime._Runtime(threads=256)
    assert rt.blocks_per_group(1, 256) == 8             # LSTM H=64: 4H columns, 32 a tile
    assert rt.blocks_per_group(1, 1024) == 32           # H=256: 32 tiles
    assert rt.blocks_per_group(1, 8192) == runtime.MAX_GROUP_BLOCKS == 128   # capped
    assert rt.blocks_per_group(2, 4096) == 66           # two groups of rows share 132
    assert rt.blocks_per_group(40, 1024) == 3          # 132 // 40 blocks per group fit
    assert rt.blocks_per_group(1, 32) == 0             # one tile: one block does it all
    assert rt.blocks_per_group(100, 4096) == 0         # rows already fill the GPU
    assert rt.used_group_blocks == 0
    rt.requested_group_blocks = 0                      # the block layout, asked for
    assert rt.blocks_per_group(1, 1024) == 0
    rt.requested_group_blocks = 8
    assert rt.blocks_per_group(16, 10) == 8 and rt.used_group_blocks == 8
    with pytest.raises(ValueError, match="needs 160 blocks resident at once.*132"):
        rt.blocks_per_group(20, 10)


def test_no_gpu_gives_a_clear_error(monkeypatch):
    import rshop_ir.kernels.cuda as cuda_package

    available, reason = cuda_package.cuda_available()
    if available:  # a GPU (or the simulator) here: stand in for a machine without one
        reason = "no CUDA GPU was found: numba.cuda.is_available() is False (simulated)"
        monkeypatch.setattr(cuda_package, "cuda_available", lambda: (False, reason))
    case = zoo.keras_lstm(np.random.default_rng(0))
    with pytest.raises(ValueError, match="no CUDA GPU was found.*target='cpu'"):
        rshop_ir.compile(case.target, target="cuda")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        rshop_ir.compile(rshop_ir.trace(case.target), target="cuda")
    assert "no CUDA GPU" in reason


def test_generated_kernels_compile_to_ptx():
    """The simulator runs kernels as Python; NVVM type-checks them for a real GPU."""
    from rshop_ir.kernels.cuda import device, ptx_check

    available, reason = device.nvvm_available()
    if not available:
        pytest.skip(reason)
    for name in ("zoo_keras_lstm", "zoo_mgu", "zoo_layer_norm_lstm", "zoo_attention_decoder",
                 "zoo_embedding_lstm_softmax", "zoo_masked_bidirectional", "readout_add",
                 "zoo_readout_decoder", "zoo_rwa"):
        case = ALL_CASES[name](np.random.default_rng(3))
        optimized = rshop_ir.optimize(rshop_ir.trace(case.target))
        sizes = ptx_check.compile_all(optimized, rows_per_block=4)
        assert sizes and all(size > 1000 for size in sizes.values()), (name, sizes)
        assert any(kernel.endswith("_groups") for kernel in sizes), sizes   # group layout


def test_group_kernel_keeping_weight_tiles_on_chip_compiles_to_ptx():
    """An LSTM of 256 units: the group layout keeps each block's tiles of the 1 MB
    recurrent weight in shared memory, within numba-cuda's 48 KiB per block."""
    from rshop_ir import examples
    from rshop_ir.bound import BoundProgram
    from rshop_ir.kernels.cuda import device, ptx_check
    from rshop_ir.kernels.cuda.codegen import generate

    available, reason = device.nvvm_available()
    if not available:
        pytest.skip(reason)
    program = examples.lstm_program(128, 256, return_sequences=True)
    optimized = rshop_ir.optimize(BoundProgram(program, examples.random_weights(program)))
    source = generate(optimized.program, rows_per_block=4).source
    groups_kernel = source[source.index("def scan_0_groups"):source.index("def run(")]
    # one tile: 256 rows x 32 columns of float32, 32 KiB
    assert "wslice = cuda.shared.array(8192, np.float32)" in groups_kernel
    assert "wslice" not in source[:source.index("def scan_0_groups")]   # block layout
    sizes = ptx_check.compile_all(optimized, rows_per_block=4)
    assert sizes["scan_0_groups"] > 1000 and sizes["scan_0"] > 1000


BLOCK_KERAS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("keras", "tensorflow"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from bench.cuda_check import main
main(sys.argv[1:])
"""


def test_gpu_check_script_prepare_and_run_in_the_simulator(tmp_path):
    """bench/cuda_check.py: --prepare here (Keras), --run in the simulator without Keras."""
    from bench import cuda_check

    prepared = str(tmp_path / "prepared")
    manifest = cuda_check.prepare(prepared, "tiny")
    assert len(manifest["checks"]) == 4 and manifest["timings"]
    out = str(tmp_path / "report" / "cuda_check.md")
    result = subprocess.run([sys.executable, "-c", BLOCK_KERAS, "--run", prepared,
                             "--out", out, "--repeats", "1", "--sweep-length", "3"],
                            env=_simulator_env(tmp_path), cwd=os.path.dirname(HERE),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    with open(out.replace(".md", ".json")) as handle:
        report = json.load(handle)
    assert len(report["checks"]) == 8              # 4 cases x 2 layouts of the scans
    assert {check["layout"] for check in report["checks"]} == {"block per rows",
                                                               "groups of 1 blocks"}
    assert max(check["blocks"] for check in report["checks"]) > 1
    for check in report["checks"]:
        assert check["error_vs_cpu"] < ATOL and check["error_vs_keras"] < ATOL, check
        assert check["device_input_error"] < ATOL, check
    assert {row["model"] for row in report["timings"]} == {"lstm", "mgu"}
    assert all(row["ours_us_per_step"] > 0 for row in report["timings"])
    text = open(out).read()
    assert "| lstm | 2 | 4 | 3 |" in text and "Correctness" in text
    sweep = report["layout_sweep"]          # the simulator holds groups of 1 block only
    assert [set(row["us_per_step"]) for row in sweep] == [{"0", "1"}], sweep
    assert max(max(row["max_abs_diff"].values()) for row in sweep) < ATOL
    assert "Layout sweep: LSTM, batch 1, length 3," in text
    if not any(row.get("torch_us_per_step") for row in report["timings"]):
        assert any("torch" in note for note in report["notes"])


def test_gpu_check_sizes_are_validated():
    from bench import cuda_check

    assert cuda_check.parse_sizes("1:256:100,8:512:10")["timings"] == [(1, 256, 100),
                                                                       (8, 512, 10)]
    with pytest.raises(ValueError, match="B:H:T"):
        cuda_check.parse_sizes("1:256")


def test_gpu_check_records_a_failing_case_and_keeps_the_block_layout_after_a_timeout(
        tmp_path):
    """bench/cuda_check.py on a GPU: a case that fails is a row of the report with its
    error, the run goes on, and after a group barrier's timeout it runs the block layout
    only (each further group launch would wait out its own timeout)."""
    from bench import cuda_check
    from rshop_ir.kernels.cuda.group_sync import GroupBarrierTimeout, check_barriers

    with pytest.raises(GroupBarrierTimeout, match="blocks_per_group=0") as caught:
        check_barriers(np.array([3, 1]))
    report = {"device": "test", "gemm": "test", "checks": [], "timings": [], "notes": []}
    health = {"groups_work": True, "report": report}

    class Failing:
        blocks_per_group = None

        def __call__(self, x):
            raise caught.value

    cuda_check._note_barrier_timeout(ValueError("not a barrier"), health)
    assert health["groups_work"] and not report["notes"]
    row = cuda_check._check_one(Failing(), {"name": "case", "batch": 3}, {"x": np.zeros(2)},
                                1, 2, None, health)
    assert row["error"].startswith("GroupBarrierTimeout: A group of CUDA blocks"), row
    assert "group_sync.py" in row["error"]                  # where it rose
    assert not health["groups_work"] and len(report["notes"]) == 1
    report["checks"].append(row)
    report["timings"].append({"model": "lstm", "batch": 1, "hidden": 8, "length": 3,
                              "error": "RuntimeError: boom"})
    out = tmp_path / "report.md"
    cuda_check._write(report, str(out), started=0.0, quiet=True)
    text = out.read_text()
    assert "| case | 3 | blocks_per_group=2 | 1 | FAILED: GroupBarrierTimeout" in text
    assert "| lstm | 1 | 8 | 3 | | FAILED: RuntimeError: boom |" in text
    assert "block layout only" in text


PTXAS_SAMPLE = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'scan_0_groups' for 'sm_90'
ptxas info    : Function properties for scan_0_groups
    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 140 registers, used 1 barriers, 40960 bytes smem
"""


def test_cuda_resources_reads_what_ptxas_reports():
    """bench/cuda_resources.py: the resource lines of `ptxas -v`, with and without
    shared memory; an error naming what ptxas printed when they are missing."""
    from bench import cuda_resources

    assert cuda_resources.parse_ptxas(PTXAS_SAMPLE) == {
        "registers": 140, "shared_bytes": 40960, "stack_bytes": 16,
        "spill_store_bytes": 8, "spill_load_bytes": 12}
    without_shared = PTXAS_SAMPLE.replace(", 40960 bytes smem", "")
    assert cuda_resources.parse_ptxas(without_shared)["shared_bytes"] == 0
    with pytest.raises(ValueError, match="no resource lines.*Compile time"):
        cuda_resources.parse_ptxas("ptxas info    : Compile time = 5 ms")


def test_scan_kernels_keep_their_sums_out_of_local_memory(tmp_path):
    """Compiled with NVVM and ptxas (where installed; CUDA run 1 in BENCHMARKS.md): the
    scan kernels of an LSTM of 256 units have no stack frame and no spills, so the
    recurrent matmul's sums stay in registers in both layouts."""
    from rshop_ir import examples
    from rshop_ir.bound import BoundProgram
    from rshop_ir.kernels.cuda import device
    from bench import cuda_resources

    available, reason = device.nvvm_available()
    if not available:
        pytest.skip(reason)
    try:
        ptxas = cuda_resources.find_ptxas()
    except ValueError as error:
        pytest.skip(str(error))
    program = examples.lstm_program(128, 256, return_sequences=True)
    path = str(tmp_path / "lstm")
    rshop_ir.save(BoundProgram(program, examples.random_weights(program)), path)
    found = dict(cuda_resources.kernel_resources(path, 4, "sm_90", ptxas))
    for name in ("scan_0", "scan_0_groups"):
        assert found[name]["stack_bytes"] == 0, (name, found[name])
        assert found[name]["spill_store_bytes"] == 0, (name, found[name])


def _barrier_kernel(arrivals, target):
    group_barrier(arrivals, 0, target)


def _plain_load_poll_kernel(arrivals, target):
    """A poll whose counter read is an ordinary load, which the compiler may hoist."""
    if cuda.threadIdx.x == 0:
        polls = 0
        while arrivals[0] < target:
            polls += 1
            if polls > 1000000:
                break
    cuda.syncthreads()


FRESH_READ = re.compile(r"atom\.global\.add|ld\.volatile|ld\.acquire|ld\.relaxed")


def _ptx_loops(ptx: str) -> list:
    """The text of each loop of a PTX kernel: from a label to a branch back to it."""
    lines = ptx[ptx.index(".entry"):].splitlines()
    labels, loops = {}, []
    for index, line in enumerate(lines):
        label = re.match(r"\s*(\$L\w+):", line)
        if label:
            labels[label.group(1)] = index
        branch = re.search(r"\bbra(?:\.uni)?\s+(\$L\w+);", line)
        if branch and branch.group(1) in labels:
            loops.append("\n".join(lines[labels[branch.group(1)]:index + 1]))
    return loops


def test_group_barrier_reads_the_counter_again_on_every_poll():
    """The group barrier's poll must read the arrivals counter anew on each pass: a
    read the compiler may hoist out of the loop waits forever on a real GPU (it did on
    an H200 with numba-cuda's `cuda.ldcv`, BENCHMARKS.md CUDA run 1), and the simulator
    cannot tell. Checked in the PTX (where NVVM is installed): a loop of the barrier
    holds an atomic add (of 0: the read), volatile or acquire read; a poll by a plain
    load has none, nor had the ldcv one (checked by hand with numba-cuda 0.30.4)."""
    from rshop_ir.kernels.cuda import device

    available, reason = device.nvvm_available()
    if not available:
        pytest.skip(reason)
    types = ["int64[::1]", "int64"]
    barrier_loops = _ptx_loops(device.compile_ptx(_barrier_kernel, types))
    assert any(FRESH_READ.search(loop) for loop in barrier_loops), barrier_loops
    plain_loops = _ptx_loops(device.compile_ptx(_plain_load_poll_kernel, types))
    assert not any(FRESH_READ.search(loop) for loop in plain_loops), plain_loops
