"""CUDA-simulator checks, run in a subprocess by tests/test_cuda_simulator.py.

    NUMBA_ENABLE_CUDASIM=1 python tests/cuda_sim_checks.py CASES_DIR

The simulator must be switched on before numba.cuda is first imported, and the pytest
process has imported numba already, hence the subprocess. Keras and TensorFlow are
blocked here: loading and compiling a saved program must not need them.

CASES_DIR holds one folder per case, written by the test: `program/` (rshop_ir.save),
`arrays.npz` (arg0.., kw_<name>_<i>.., keras0.., cpu0..) and `options.json`
({"rows_per_block", "threads_per_block", "shared_memory_bytes"}). For each case this
prints one JSON line {"case", "keras_error", "cpu_error", "shapes"} for the block layout
of the scan kernels and the same with a "group_" prefix for the group layout; then the
named extra
checks (device arrays, new weights, unsupported ops, the tiled GEMM) print theirs.
"""

import itertools
import json
import os
import sys


class _BlockKeras:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("keras", "tensorflow"):
            raise ImportError("blocked in the CUDA simulator checks: " + name)


sys.meta_path.insert(0, _BlockKeras())

import numpy as np  # noqa: E402

import rshop_ir  # noqa: E402
from rshop_ir import examples  # noqa: E402
from rshop_ir.bound import BoundProgram  # noqa: E402


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _report(**fields):
    print("RESULT " + json.dumps(fields), flush=True)


def _compile(bound, options):
    from rshop_ir.kernels.cuda import build

    optimized = rshop_ir.optimize(bound)
    return build(optimized, bound, rows_per_block=options.get("rows_per_block", 4),
                 threads_per_block=options.get("threads_per_block", 16),
                 shared_memory_bytes=options.get("shared_memory_bytes"))


def run_case(folder: str) -> None:
    name = os.path.basename(folder)
    try:
        with open(os.path.join(folder, "options.json")) as handle:
            options = json.load(handle)
        bound = rshop_ir.load(os.path.join(folder, "program"))
        with np.load(os.path.join(folder, "arrays.npz")) as archive:
            arrays = dict(archive)
        positional = [arrays[f"arg{i}"] for i in range(options["num_args"])]
        named = {}
        for key in sorted(k for k in arrays if k.startswith("kw_")):
            input_name, index = key[3:].rsplit("_", 1)
            named.setdefault(input_name, []).append(arrays[key])
        named = {key: value if len(value) > 1 or key == "initial_state" else value[0]
                 for key, value in named.items()}
        compiled = _compile(bound, options)
        keras = [arrays[f"keras{i}"] for i in range(options["num_outputs"])]
        cpu = [arrays[f"cpu{i}"] for i in range(options["num_outputs"])]
        fields = {}
        # the block layout, then the group layout (one block per group here: the
        # simulator runs blocks one at a time)
        for prefix, blocks_per_group in (("", 0), ("group_", 1)):
            compiled.blocks_per_group = blocks_per_group
            got = _as_list(compiled(*positional, **named))
            shapes = len(got) == len(keras) and \
                [list(a.shape) for a in got] == [list(b.shape) for b in keras]
            fields[prefix + "shapes"] = shapes
            fields[prefix + "used"] = compiled.group_blocks_used
            fields[prefix + "keras_error"] = _max_error(got, keras)
            fields[prefix + "cpu_error"] = _max_error(got, cpu)
        fields["ordered_errors"] = _ordered_errors(compiled, positional, named, cpu)
        _report(case=name, outputs=len(got), **fields)
    except Exception as error:     # reported, so the parent test shows what failed
        _report(case=name, error=f"{type(error).__name__}: {error}")


ORDERED_RUNS = (("reverse", 0), ("reverse", 2), ("forward", 3))


def _ordered_errors(compiled, positional, named, cpu) -> dict:
    """Max abs error vs the CPU kernel with the threads run one at a time between
    barriers (tests/ordered_threads.py: a missing barrier gives wrong numbers), in the
    block layout (G=0) and in groups of 2 and 3 blocks that wait for each other, which
    Numba's simulator cannot run. 4 threads per block keep it quick."""
    errors = {}
    module, threads = compiled.module, compiled._runtime.threads
    compiled._runtime.threads = 4
    try:
        for order, group_blocks in ORDERED_RUNS:
            errors[f"{order} G={group_blocks}"] = _ordered_error(
                compiled, compiled.source, order, group_blocks, cpu, *positional, **named)
    finally:
        compiled.module, compiled._runtime.threads = module, threads
        del compiled._runtime._choose_group_blocks
    return errors


def _max_error(got, expected) -> float:
    return max(float(np.max(np.abs(a - b), initial=0)) for a, b in zip(got, expected))


def _ordered_error(compiled, source, order, group_blocks, expected, *inputs, **named):
    """Max abs error of `compiled` running the kernels of `source` on the ordered
    executor (tests/ordered_threads.py) in `order`, with `group_blocks` blocks per group
    (0: the block layout), whatever the simulator would allow."""
    import ordered_threads

    compiled.module = ordered_threads.load(source, order)
    compiled._runtime._choose_group_blocks = lambda groups, widest: group_blocks
    return _max_error(_as_list(compiled(*inputs, **named)), expected)


def _lstm(**kwargs):
    program = examples.lstm_program(3, 5, **kwargs)
    return BoundProgram(program, examples.random_weights(program, seed=4))


def check_device_arrays() -> None:
    from rshop_ir.kernels.cuda.device import cuda, is_device_array

    bound = _lstm(return_sequences=True)
    compiled = _compile(bound, {"rows_per_block": 2})
    x, h0, c0 = examples.random_inputs(bound.program, batch=3, steps=4, seed=6)
    expected = _as_list(rshop_ir.interpret(bound, x, h0, c0))
    host = _as_list(compiled(x, initial_state=[h0, c0]))
    on_device = _as_list(compiled(cuda.to_device(x), initial_state=[cuda.to_device(h0),
                                                                    cuda.to_device(c0)]))
    mixed = _as_list(compiled(cuda.to_device(x), initial_state=[h0, c0]))
    all_device = all(is_device_array(a) and not isinstance(a, np.ndarray) for a in on_device)
    host_numpy = all(isinstance(a, np.ndarray) for a in host)
    errors = []
    for results in (host, on_device, mixed):
        arrays = [a if isinstance(a, np.ndarray) else a.copy_to_host() for a in results]
        errors.append(max(float(np.abs(a - b).max()) for a, b in zip(arrays, expected)))
    shapes = [list(a.shape) for a in on_device] == [list(b.shape) for b in expected]
    wrong_dtype = ""
    try:
        compiled(cuda.to_device(x.astype(np.float64)))
    except TypeError as error:
        wrong_dtype = str(error)
    _report(case="device_arrays", errors=errors, all_device=all_device,
            host_numpy=host_numpy, shapes=shapes, wrong_dtype=wrong_dtype)


def check_new_weights() -> None:
    bound = _lstm()
    x, h0, c0 = examples.random_inputs(bound.program, batch=2, steps=4, seed=7)
    current = dict(bound.weights)
    compiled = _compile(bound, {})
    from rshop_ir.kernels.cuda import build

    before = _as_list(compiled(x))[0]
    new = examples.random_weights(bound.program, seed=99)
    uploads = compiled.weight_uploads
    compiled.set_weights(new)
    after = _as_list(compiled(x))[0]
    expected = _as_list(rshop_ir.interpret(bound.program, x, weights=new))[0]
    compiled(x)
    uploads_after_calls = compiled.weight_uploads - uploads
    # a weight reader (how Keras variables are followed): changed values are seen
    source = dict(current)
    read = build(rshop_ir.optimize(bound), bound, weight_reader=lambda: dict(source),
                 threads_per_block=16)
    first = _as_list(read(x))[0]
    source.update(new)
    second = _as_list(read(x))[0]
    _report(case="new_weights",
            changed=bool(not np.allclose(before, after)),
            weights_error=float(np.abs(after - expected).max()),
            uploads=uploads_after_calls,
            reader_first_error=float(np.abs(first - before).max()),
            reader_second_error=float(np.abs(second - expected).max()))


def check_unsupported() -> None:
    messages = []
    program = examples.nested_program()
    bound = BoundProgram(program, examples.random_weights(program))
    for target in (bound,):
        try:
            rshop_ir.compile(target, target="cuda")
            messages.append("")
        except rshop_ir.UnsupportedError as error:
            messages.append(str(error))
    builder = rshop_ir.ProgramBuilder()
    x = builder.input("float32", ("B", 4, 4))
    w = builder.input("float32", ("B", 1, 4, 4))
    y = builder.apply("matmul", x, w)
    try:
        rshop_ir.compile(builder.build([y]), target="cuda")
        messages.append("")
    except rshop_ir.UnsupportedError as error:
        messages.append(str(error))
    _report(case="unsupported", messages=messages)


def check_gemm_methods() -> None:
    from rshop_ir.kernels.cuda import device, gemm

    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 5)).astype(np.float32)
    w = rng.standard_normal((5, 6)).astype(np.float32)
    weights = np.concatenate([np.zeros(3, np.float32), w.ravel()])
    errors = {}
    for method in ("tiled", "strided"):
        out = device.empty((42,), "float32")
        gemm.gemm(device.to_device(a.ravel()), 7, 5, device.to_device(weights), 3, 6, out,
                  method=method)
        errors[method] = float(np.abs(out.copy_to_host().reshape(7, 6) - a @ w).max())
    _report(case="gemm", errors=errors)


def check_edges() -> None:
    """Batch 0, length 0, NaN/inf in the input: as the interpreter."""
    program = examples.lstm_program(3, 4, return_sequences=True, go_backwards=True,
                                    masked=True)
    bound = BoundProgram(program, examples.random_weights(program, seed=1))
    compiled = _compile(bound, {"rows_per_block": 2})
    errors, nan_agree, shapes = [], True, True
    for (batch, steps), blocks_per_group in itertools.product(((0, 4), (2, 0), (3, 3)),
                                                              (0, 1)):
        compiled.blocks_per_group = blocks_per_group     # both layouts of the scan
        inputs = examples.random_inputs(program, batch=batch, steps=steps, seed=8)
        if batch and steps:
            inputs[0][0, 1, 0] = np.nan
            inputs[0][1, 2, :] = np.inf
        got = _as_list(compiled(*inputs))
        expected = _as_list(rshop_ir.interpret(bound, *inputs))
        for a, b in zip(got, expected):
            shapes = shapes and a.shape == b.shape
            nan_agree = nan_agree and bool(np.array_equal(np.isnan(a), np.isnan(b)))
            finite = ~np.isnan(b)
            errors.append(float(np.max(np.abs(a[finite] - b[finite]), initial=0)))
    _report(case="edges", errors=errors, nan_agree=nan_agree, shapes=shapes)


def check_group_requests() -> None:
    """What `blocks_per_group` accepts here: several blocks per group is refused in the
    simulator (its blocks run one after another), as are values that are not ints >= 1."""
    compiled = _compile(_lstm(), {})
    x = examples.random_inputs(compiled.program, batch=2, steps=3, seed=2)[0]
    messages = {}
    for value in (2, -1, True, 1.5):
        try:
            compiled.blocks_per_group = value
            compiled(x)
            messages[repr(value)] = ""
        except ValueError as error:
            messages[repr(value)] = str(error)
    # a group barrier whose partner block never arrives times out, sets the flag, and
    # the barriers after it pass at once; the host then refuses the results
    from rshop_ir.kernels.cuda import group_sync
    from rshop_ir.kernels.cuda.device import cuda

    group_sync.MAX_POLLS = 50

    @cuda.jit
    def wait_for_a_missing_block(arrivals):
        group_sync.group_barrier(arrivals, 0, 2)
        group_sync.group_barrier(arrivals, 0, 4)

    arrivals = cuda.to_device(np.zeros(2, np.int64))
    wait_for_a_missing_block[1, 4](arrivals)
    counters = arrivals.copy_to_host()
    try:
        group_sync.check_barriers(counters)
        timeout_message = ""
    except RuntimeError as error:
        timeout_message = str(error)
    _report(case="group_requests", messages=messages, counters=counters.tolist(),
            timeout_message=timeout_message)


def check_ordered_threads_find_races() -> None:
    """The ordered executor is a real check. An LSTM's numbers are right as generated,
    and go wrong in both orders when a barrier is left out: the group barriers before
    eqns (kernels/cuda/step_syncs.py) in groups of several blocks, or the block barriers
    of the split matmul (eqn_rendering._split_matmul) in the block layout."""
    from rshop_ir.kernels.cuda import step_syncs

    bound = _lstm(return_sequences=True)
    x = examples.random_inputs(bound.program, batch=3, steps=4, seed=5)[0]
    expected = _as_list(rshop_ir.interpret(bound, x))
    options = {"rows_per_block": 2, "threads_per_block": 4}
    compiled = _compile(bound, options)
    before_eqn = step_syncs.StepSyncs.before_eqn
    step_syncs.StepSyncs.before_eqn = lambda self, eqn: None
    try:
        without_group_barriers = _compile(bound, options)
    finally:
        step_syncs.StepSyncs.before_eqn = before_eqn
    matmul_syncs = "            cuda.syncthreads()\n"     # inside the step loop's tiles
    runs = {"as generated": (compiled, compiled.source,
                             (("forward", 0), ("reverse", 0), ("reverse", 2), ("forward", 3))),
            "no group barriers": (without_group_barriers, without_group_barriers.source,
                                  (("reverse", 2), ("forward", 3))),
            "no matmul syncs": (compiled, compiled.source.replace(matmul_syncs, ""),
                                (("forward", 0), ("reverse", 0)))}
    errors = {}
    for label, (target, source, layouts) in runs.items():
        for order, group_blocks in layouts:
            errors[f"{label} {order} G={group_blocks}"] = _ordered_error(
                target, source, order, group_blocks, expected, x)
    _report(case="ordered_races", errors=errors,
            removed_syncs=compiled.source.count(matmul_syncs))


def check_weight_slices() -> None:
    """A recurrent weight too big for shared memory whole, whose column tiles fit: a
    block keeps its own tiles there when they are few enough (groups of 2 or 3 blocks,
    run by the ordered executor), else reads the weight from global memory (one block
    per rows, in the simulator). Corrupting the copied tiles changes exactly the runs
    that read them, which shows which path each took."""
    from rshop_ir.kernels.cuda.loader import load_module

    program = examples.lstm_program(8, 40, return_sequences=True)
    bound = BoundProgram(program, examples.random_weights(program, seed=3))
    x = examples.random_inputs(program, batch=3, steps=3, seed=4)[0]
    expected = _as_list(rshop_ir.interpret(bound, x))
    compiled = _compile(bound, {"rows_per_block": 2, "threads_per_block": 64,
                                "shared_memory_bytes": 24 * 1024})
    source = compiled.source
    corrupted = source.replace("[slot] = ", "[slot] = 0.5 * ")
    errors = {}
    for label, text in (("as generated", source), ("corrupted tiles", corrupted)):
        compiled.module = load_module(text)            # the simulator's kernels
        compiled._runtime.__dict__.pop("_choose_group_blocks", None)
        compiled.blocks_per_group = 0
        errors[f"{label} simulator G=0"] = _max_error(_as_list(compiled(x)), expected)
        for order, group_blocks in (("reverse", 2), ("forward", 3)):
            errors[f"{label} {order} G={group_blocks}"] = _ordered_error(
                compiled, text, order, group_blocks, expected, x)
    _report(case="weight_slices", errors=errors, slices=source.count("cuda.shared.array"),
            corrupted=corrupted != source)


def check_left_staging() -> None:
    """The split matmuls' left rows (eqn_rendering._split_matmul): staged in shared
    memory with one accumulator register per row when there is room, else read in place
    with the local `acc` array. Both give the interpreter's numbers, in the simulator and
    on the ordered executor; leaving out the barrier after the staging copy makes the
    ordered runs wrong, which shows the barrier is needed and checked."""
    import re

    program = examples.lstm_program(6, 24, return_sequences=True)
    bound = BoundProgram(program, examples.random_weights(program, seed=7))
    x = examples.random_inputs(program, batch=3, steps=4, seed=8)[0]
    expected = _as_list(rshop_ir.interpret(bound, x))
    staged = _compile(bound, {"rows_per_block": 2, "threads_per_block": 16})
    in_place = _compile(bound, {"rows_per_block": 2, "threads_per_block": 16,
                                "shared_memory_bytes": 0})
    unsynced = re.sub(r"(lsh\w*\[\w+\] = [^\n]*\n)\s+cuda\.syncthreads\(\)\n", r"\1",
                      staged.source)
    errors = {}
    for label, compiled in (("staged", staged), ("in place", in_place)):
        compiled.blocks_per_group = 0
        errors[f"{label} simulator G=0"] = _max_error(_as_list(compiled(x)), expected)
        compiled.blocks_per_group = None
        for order, group_blocks in (("reverse", 0), ("reverse", 2), ("forward", 3)):
            errors[f"{label} {order} G={group_blocks}"] = _ordered_error(
                compiled, compiled.source, order, group_blocks, expected, x)
    for order, group_blocks in (("reverse", 0), ("forward", 3)):
        errors[f"no staging barrier {order} G={group_blocks}"] = _ordered_error(
            staged, unsynced, order, group_blocks, expected, x)
    _report(case="left_staging", errors=errors,
            staged={"lsh": "lsh = cuda.shared.array" in staged.source,
                    "local acc": "acc = cuda.local.array" in staged.source},
            in_place={"lsh": "lsh = cuda.shared.array" in in_place.source,
                      "local acc": "acc = cuda.local.array" in in_place.source},
            barrier_removed=unsynced != staged.source)


EXTRA = {"device_arrays": check_device_arrays, "new_weights": check_new_weights,
         "unsupported": check_unsupported, "gemm": check_gemm_methods,
         "edges": check_edges, "group_requests": check_group_requests,
         "ordered_races": check_ordered_threads_find_races,
         "weight_slices": check_weight_slices, "left_staging": check_left_staging}


def main(argv) -> None:
    from rshop_ir.kernels.cuda.device import in_simulator

    if not in_simulator():
        raise SystemExit("run with NUMBA_ENABLE_CUDASIM=1")
    cases_dir = argv[0]
    for name in sorted(os.listdir(cases_dir)):
        run_case(os.path.join(cases_dir, name))
    for name in argv[1:]:
        try:
            EXTRA[name]()
        except Exception as error:
            _report(case=name, error=f"{type(error).__name__}: {error}")
    _report(case="modules", keras=sorted(m for m in sys.modules
                                         if m.split(".")[0] in ("keras", "tensorflow")))


if __name__ == "__main__":
    main(sys.argv[1:])
