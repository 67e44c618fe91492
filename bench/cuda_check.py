"""Check and time the Numba CUDA kernels on a GPU machine that has no Keras.

Two steps, two machines:

    # 1. where Keras lives (CPU): trace the models, save programs, inputs, references
    python -m bench.cuda_check --prepare DIR [--sizes default|tiny|B:H:T,...]
    # 2. on the GPU machine (numba-cuda; optional cupy, torch): check, then time
    python -m bench.cuda_check --run DIR --out OUT.md

(On a machine with the source tree but no install, first mirror pyproject's
package-dir mapping: `ln -s ../kernels rshop_ir/kernels; ln -s ../frontends
rshop_ir/frontends; ln -s ../bench rshop_ir/bench`.)

--prepare writes DIR/manifest.json and one saved program (rshop_ir.save) per model and
hidden size: correctness cases (small LSTM and MGU, several batch sizes so that scan
kernels run on several blocks, one with the workspace forced into global memory), with
their inputs and the outputs of the CPU compiled kernel and of Keras; and timing models
(an LSTM per hidden size, an MGU) whose inputs the GPU side draws from a saved seed. It
stays small (about 45 MB for the default sizes).

--run never imports Keras or TensorFlow (rshop_ir.load + compile are Keras-free). It
prints and writes to OUT (markdown; OUT.json beside it) the max abs error of every
correctness case against both references, in each layout of the scan kernels (a block
per rows; groups of blocks splitting the rows' work, automatic and forced sizes, which
is the grid-synchronised path the simulator cannot check), then per timing size (batch,
hidden, length) the median time per step of our kernel (its automatic layout; when that
is a group of blocks, the block layout is timed too) and of torch.nn.LSTM (cuDNN) with
the same weights, inputs already on the device for both, timed with CUDA events after a
warm-up, plus the max abs difference between the two outputs; then a layout sweep (the
batch-1 LSTM with 0, 1, 2, 4, ... 128 blocks per group, as many as the GPU holds) for
tuning the automatic layout. Without torch (or without a GPU for torch) the torch column
says so and the checks still run. `--budget-seconds` stops timing new sizes when the run
gets long (default 270 s). A case that fails (an error building, running or at a
barrier) is recorded in the report with its error and the run goes on; the report is
rewritten after each stage, so a run stopped by a time limit leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

PRESETS = {
    # timing sizes (batch, hidden, length) and correctness cases
    # (model, batch, hidden, length, input features, rows_per_block, shared memory bytes)
    "default": {
        "timings": [(batch, hidden, length) for hidden in (256, 512, 1024)
                    for batch in (1, 8, 64) for length in (100, 1000)],
        "input": 128,
        "checks": [("lstm", 3, 64, 50, 32, 4, None), ("lstm", 9, 40, 30, 16, 4, None),
                   ("lstm", 64, 256, 20, 128, 4, None), ("mgu", 5, 48, 40, 16, 2, None),
                   ("lstm", 6, 24, 20, 8, 4, 0)],
    },
    "tiny": {
        "timings": [(2, 4, 3)],
        "input": 3,
        "checks": [("lstm", 2, 4, 3, 3, 4, None), ("lstm", 3, 5, 3, 2, 2, None),
                   ("mgu", 2, 4, 3, 3, 1, None), ("lstm", 2, 3, 3, 2, 2, 0)],
    },
}
REPEATS = 5


def parse_sizes(text: str) -> dict:
    if text in PRESETS:
        return dict(PRESETS[text])
    timings = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"--sizes takes {sorted(PRESETS)} or B:H:T,... (batch, hidden, "
                             f"length, positive integers). Received {text!r}.")
        timings.append(tuple(int(p) for p in parts))
    return {**PRESETS["default"], "timings": timings}


# ---------------------------------------------------------------- --prepare (with Keras)

def prepare(directory: str, sizes_text: str) -> dict:
    import rshop_ir
    from bench import suites
    from bench.sizes import Size

    import keras

    sizes = parse_sizes(sizes_text)
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    builders = {"lstm": suites._standard("lstm"), "mgu": suites.mgu}
    manifest = {"sizes": sizes_text, "checks": [], "timings": [], "models": {}}
    for index, (model, batch, hidden, length, features, rows, shared) in enumerate(
            sizes["checks"]):
        keras.utils.set_random_seed(index)
        case = builders[model](Size("check", batch, length, features, hidden), rng)
        name = f"check_{index}_{model}_b{batch}_h{hidden}"
        bound = rshop_ir.trace(case.model)
        rshop_ir.save(bound, os.path.join(directory, name))
        cpu = rshop_ir.compile(bound, target="cpu")(*case.inputs)
        keras_output = case.reference_outputs()[0]
        np.savez(os.path.join(directory, f"{name}.npz"), x=case.inputs[0],
                 cpu=np.asarray(cpu), keras=keras_output)
        manifest["checks"].append({"name": name, "model": model, "batch": batch,
                                   "hidden": hidden, "length": length,
                                   "rows_per_block": rows, "shared_memory_bytes": shared})
    features = sizes["input"]
    for hidden in sorted({hidden for _, hidden, _ in sizes["timings"]}):
        for model in ("lstm", "mgu"):
            case = builders[model](Size("timing", 1, 2, features, hidden), rng)
            # the same recurrent layer (same weights) on sequences of any length
            inputs = keras.Input((None, features))
            any_length = keras.Model(inputs, case.model.layers[-1](inputs))
            bound = rshop_ir.trace(any_length)
            name = f"timing_{model}_h{hidden}"
            rshop_ir.save(bound, os.path.join(directory, name))
            entry = {"program": name, "input": features, "hidden": hidden}
            if model == "lstm":
                entry["torch_weights"] = {suffix: _param_ending(bound, suffix)
                                          for suffix in ("/kernel", "/recurrent_kernel",
                                                         "/bias")}
            manifest["models"][name] = entry
    manifest["timings"] = [{"batch": b, "hidden": h, "length": t, "seed": 1000 + i}
                           for i, (b, h, t) in enumerate(sizes["timings"])]
    with open(os.path.join(directory, "manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=1)
    total = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in
                os.walk(directory) for f in files)
    print(f"prepared {len(manifest['checks'])} checks and {len(manifest['models'])} timing "
          f"models in {directory} ({total / 2 ** 20:.1f} MiB)")
    return manifest


def _param_ending(bound, suffix: str) -> str:
    names = [name for name in bound.program.param_names if name.endswith(suffix)]
    if len(names) != 1:
        raise ValueError(f"Expected one LSTM weight ending in {suffix!r}; found {names}.")
    return names[0]


# ---------------------------------------------------------------- --run (GPU, no Keras)

def run(directory: str, out: str, budget_seconds: float = 270.0,
        repeats: int = REPEATS, sweep_length: int = None) -> dict:
    import rshop_ir
    from rshop_ir.kernels.cuda import build, device, gemm

    available, reason = device.cuda_available()
    if not available:
        raise SystemExit(f"--run needs a CUDA GPU (or NUMBA_ENABLE_CUDASIM=1): {reason}")
    with open(os.path.join(directory, "manifest.json")) as handle:
        manifest = json.load(handle)
    started = time.perf_counter()
    report = {"device": reason, "gemm": gemm.backend_name(), "versions": _versions(),
              "checks": [], "timings": [], "notes": []}
    torch, torch_note = _torch()
    if torch_note:
        report["notes"].append(torch_note)
    # after a group barrier times out once, the rest of the run keeps the block layout:
    # every further group launch would wait out its own timeout
    health = {"groups_work": True, "report": report}

    for check in manifest["checks"]:
        try:
            bound = rshop_ir.load(os.path.join(directory, check["name"]))
            arrays = np.load(os.path.join(directory, f"{check['name']}.npz"))
            compiled = build(rshop_ir.optimize(bound), bound,
                             rows_per_block=check["rows_per_block"],
                             shared_memory_bytes=check["shared_memory_bytes"])
        except Exception as error:
            report["checks"].append({**check, "blocks": 0, "layout": "-",
                                     "error": _describe(error)})
            print(f"check {check['name']} failed to build: {_describe(error)}", flush=True)
            continue
        blocks = -(-check["batch"] // check["rows_per_block"])
        for layout in _layouts(blocks, device):
            if layout != 0 and not health["groups_work"]:
                continue
            report["checks"].append(_check_one(compiled, check, arrays, blocks, layout,
                                               device, health))
            row = report["checks"][-1]
            print(f"check {check['name']} ({row['layout']}): "
                  + (f"{row['error_vs_keras']:.2e}" if "error" not in row
                     else row["error"]), flush=True)
    _write(report, out, started, quiet=True)

    compiled_models = {}
    for timing in manifest["timings"]:
        if time.perf_counter() - started > budget_seconds:
            report["notes"].append(f"stopped timing after {budget_seconds:.0f} s: sizes "
                                   f"from B{timing['batch']} H{timing['hidden']} "
                                   f"T{timing['length']} on were skipped")
            break
        for model in ("lstm", "mgu"):
            name = f"timing_{model}_h{timing['hidden']}"
            entry = manifest["models"][name]
            try:
                if name not in compiled_models:
                    bound = rshop_ir.load(os.path.join(directory, name))
                    compiled_models[name] = (bound, rshop_ir.compile(bound, target="cuda"))
                bound, compiled = compiled_models[name]
                row = _time_one(compiled, bound, entry, timing, torch, device, repeats,
                                model, health)
            except Exception as error:
                row = {"model": model, "batch": timing["batch"], "hidden": timing["hidden"],
                       "length": timing["length"], "error": _describe(error)}
            report["timings"].append(row)
            print(f"timing {model} B{timing['batch']} H{timing['hidden']} "
                  f"T{timing['length']}: " + (f"{row['ours_us_per_step']:.1f} us/step"
                                              if "error" not in row else row["error"]),
                  flush=True)
            _write(report, out, started, quiet=True)
    report["sweep_length"] = sweep_length or SWEEP_LENGTH
    report["layout_sweep"] = _layout_sweep(directory, manifest, compiled_models, device,
                                           repeats, started, budget_seconds, report) \
        if health["groups_work"] else []
    _write(report, out, started)
    return report


SWEEP_GROUP_BLOCKS = (0, 1, 2, 4, 8, 16, 32, 64, 128)
SWEEP_LENGTH = 100


def _layout_sweep(directory, manifest, compiled_models, device, repeats, started,
                  budget_seconds, report) -> list:
    """us/step of the batch-1 LSTM of each hidden size, length report["sweep_length"]
    (SWEEP_LENGTH unless asked; the simulator's test asks fewer steps), with every
    blocks_per_group of SWEEP_GROUP_BLOCKS the GPU holds at once (0: the block layout),
    and the max abs difference from the block layout: the numbers for tuning the
    automatic choice (kernels/cuda/runtime.py)."""
    import rshop_ir

    rows, length = [], report["sweep_length"]
    fitting = [size for size in SWEEP_GROUP_BLOCKS
               if size <= (1 if device.in_simulator() else device.device_count_of_sms())]
    for hidden in sorted({timing["hidden"] for timing in manifest["timings"]}):
        if time.perf_counter() - started > budget_seconds:
            report["notes"].append(f"layout sweep stopped after {budget_seconds:.0f} s, "
                                   f"before hidden {hidden}")
            break
        name = f"timing_lstm_h{hidden}"
        entry = manifest["models"][name]
        if name not in compiled_models:
            try:
                bound = rshop_ir.load(os.path.join(directory, name))
                compiled_models[name] = (bound, rshop_ir.compile(bound, target="cuda"))
            except Exception as error:
                report["notes"].append(f"layout sweep H{hidden}: {_describe(error)}")
                continue
        compiled = compiled_models[name][1]
        x = device.to_device(np.random.default_rng(hidden).standard_normal(
            (1, length, entry["input"])).astype(np.float32))
        row, reference = {"hidden": hidden, "us_per_step": {}, "max_abs_diff": {}}, None
        for size in fitting:
            compiled.blocks_per_group = size
            try:
                seconds, y = _median_seconds(lambda: compiled(x), device, repeats)
            except Exception as error:
                report["notes"].append(f"layout sweep H{hidden} G={size}: "
                                       f"{_describe(error)}")
                continue
            row["us_per_step"][size] = seconds / length * 1e6
            reference = _host(y) if reference is None else reference
            row["max_abs_diff"][size] = float(np.abs(_host(y) - reference).max())
        compiled.blocks_per_group = None
        rows.append(row)
        print(f"layout sweep H{hidden}: " + ", ".join(
            f"G={size} {value:.1f}" for size, value in row["us_per_step"].items()),
            flush=True)
    return rows


def _check_one(compiled, check, arrays, blocks, layout, device, health) -> dict:
    """One correctness case in one layout: errors against both references, or the
    error that stopped it (recorded, so that one failure does not end the run)."""
    row = {**check, "blocks": blocks, "layout": f"blocks_per_group={layout}"}
    try:
        compiled.blocks_per_group = layout
        got = compiled(arrays["x"])
        on_device = compiled(device.to_device(arrays["x"])).copy_to_host()
    except Exception as error:
        row["error"] = _describe(error)
        _note_barrier_timeout(error, health)
        return row
    used = compiled.group_blocks_used
    row.update({"blocks": blocks * max(1, used),
                "layout": f"groups of {used} blocks" if used else "block per rows",
                "error_vs_cpu": float(np.abs(got - arrays["cpu"]).max()),
                "error_vs_keras": float(np.abs(got - arrays["keras"]).max()),
                "device_input_error": float(np.abs(on_device - got).max())})
    return row


def _note_barrier_timeout(error: BaseException, health: dict) -> None:
    """Keep the block layout from now on if `error` is a group barrier's timeout."""
    from rshop_ir.kernels.cuda.group_sync import GroupBarrierTimeout

    if isinstance(error, GroupBarrierTimeout) and health["groups_work"]:
        health["groups_work"] = False
        health["report"]["notes"].append(
            "a group barrier timed out: the rest of the run used the block layout only "
            "(no group layouts, no layout sweep)")


def _describe(error: BaseException) -> str:
    """An error in one line for the report: its type, message, and where it rose."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)[-3:]
    where = " (at " + " < ".join(f"{frame.filename.split('site-packages/')[-1]}:"
                                f"{frame.lineno}" for frame in reversed(frames)) + ")" \
        if frames else ""
    message = " ".join(str(error).split())[:600]
    return f"{type(error).__name__}: {message}{where}"


def _versions() -> dict:
    """Versions of the packages the GPU side runs with (none of them pinned there)."""
    from importlib import metadata

    found = {}
    for package in ("numpy", "numba", "numba-cuda", "llvmlite", "cuda-python",
                    "cuda-bindings", "torch", "cupy-cuda13x", "cupy-cuda12x"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    found["python"] = sys.version.split()[0]
    return found


def _layouts(groups: int, device) -> list:
    """The `blocks_per_group` values a correctness case runs with: the block layout, the
    automatic choice, and groups of 2 and 8 blocks where the GPU holds them all at once
    (kernels/cuda/runtime.py; the simulator runs one block per group only)."""
    if device.in_simulator():
        return [0, 1]
    fitting = [size for size in (2, 8) if groups * size <= device.device_count_of_sms()]
    return [0, None, *fitting]


def _torch():
    try:
        import torch
    except Exception as error:
        return None, f"torch is not importable ({type(error).__name__}): no cuDNN timings"
    if not torch.cuda.is_available():
        return None, "torch has no CUDA device here: no cuDNN timings"
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch, ""


def _time_one(compiled, bound, entry, timing, torch, device, repeats, model,
              health) -> dict:
    batch, length, hidden = timing["batch"], timing["length"], timing["hidden"]
    rng = np.random.default_rng(timing["seed"])
    x_host = rng.standard_normal((batch, length, entry["input"])).astype(np.float32)
    x = device.to_device(x_host)
    compiled.blocks_per_group = None if health["groups_work"] else 0
    try:
        ours, y = _median_seconds(lambda: compiled(x), device, repeats)
    except Exception as error:
        _note_barrier_timeout(error, health)
        raise
    row = {"model": model, "batch": batch, "hidden": hidden, "length": length,
           "ours_us_per_step": ours / length * 1e6,
           "group_blocks": compiled.group_blocks_used, "block_layout_us_per_step": None}
    if compiled.group_blocks_used:       # the automatic choice was the group layout
        compiled.blocks_per_group = 0
        block_layout, y_blocks = _median_seconds(lambda: compiled(x), device, repeats)
        compiled.blocks_per_group = None
        row["block_layout_us_per_step"] = block_layout / length * 1e6
        row["max_abs_diff_layouts"] = float(np.abs(_host(y_blocks) - _host(y)).max())
    if model != "lstm":
        row["torch_us_per_step"] = None
        return row
    if torch is None:
        row["torch_us_per_step"] = None
        return row
    names = entry["torch_weights"]
    kernel, recurrent, bias = (np.asarray(bound.weights[names[key]]) for key in
                               ("/kernel", "/recurrent_kernel", "/bias"))
    lstm = torch.nn.LSTM(entry["input"], hidden, batch_first=True).cuda().eval()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(kernel.T.copy()))
        lstm.weight_hh_l0.copy_(torch.from_numpy(recurrent.T.copy()))
        lstm.bias_ih_l0.copy_(torch.from_numpy(bias))
        lstm.bias_hh_l0.zero_()
        x_torch = torch.as_tensor(x_host, device="cuda")

        def call():
            return lstm(x_torch)[0]

        theirs, y_torch = _median_seconds(call, device, repeats, torch=torch)
    row["torch_us_per_step"] = theirs / length * 1e6
    row["max_abs_diff_vs_torch"] = float(np.abs(_host(y) - y_torch.cpu().numpy()).max())
    return row


def _host(array) -> np.ndarray:
    return array.copy_to_host() if hasattr(array, "copy_to_host") else np.asarray(array)


def _median_seconds(call, device, repeats, torch=None):
    result = call()                               # warm-up (and compilation)
    device.synchronize()
    times = []
    for _ in range(repeats):
        if device.in_simulator():
            start = time.perf_counter()
            result = call()
            times.append(time.perf_counter() - start)
            continue
        if torch is not None:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                enable_timing=True)
            begin.record()
            result = call()
            end.record()
            torch.cuda.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            begin, end = device.cuda.event(), device.cuda.event()
            begin.record()
            result = call()
            end.record()
            end.synchronize()
            times.append(device.cuda.event_elapsed_time(begin, end) / 1e3)
    return float(np.median(times)), result


def _write(report: dict, out: str, started: float, quiet: bool = False) -> None:
    """Write OUT (markdown) and OUT.json; called after each stage, so that a run
    stopped by its time limit still leaves what it measured."""
    report["seconds"] = time.perf_counter() - started
    versions = ", ".join(f"{name} {version}" for name, version in
                         report.get("versions", {}).items())
    lines = ["# rshop_ir CUDA check", "",
             f"Device: {report['device']}; input-projection GEMM: {report['gemm']}; "
             f"{report['seconds']:.0f} s.", "", f"Versions: {versions}.", "",
             "## Correctness (max abs error)", "",
             "| case | batch | layout | blocks | vs CPU kernel | vs Keras | device input |",
             "|---|---|---|---|---|---|---|"]
    for check in report["checks"]:
        if "error" in check:
            lines.append(f"| {check['name']} | {check['batch']} | {check['layout']} | "
                         f"{check['blocks']} | FAILED: {check['error']} | | |")
            continue
        lines.append(f"| {check['name']} | {check['batch']} | {check['layout']} | "
                     f"{check['blocks']} | "
                     f"{check['error_vs_cpu']:.2e} | {check['error_vs_keras']:.2e} | "
                     f"{check['device_input_error']:.2e} |")
    lines += ["", "## Time per step (median of %d, inputs on the device)" % REPEATS, "",
              "| model | batch | hidden | length | blocks per group | ours (us/step) "
              "| block layout (us/step) | torch cuDNN (us/step) | torch / ours "
              "| max abs diff vs torch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["timings"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['batch']} | {row['hidden']} | "
                         f"{row['length']} | | FAILED: {row['error']} | | | | |")
            continue
        theirs = row.get("torch_us_per_step")
        speed = f"{theirs / row['ours_us_per_step']:.2f}x" if theirs else "-"
        diff = row.get("max_abs_diff_vs_torch")
        blocks = row.get("block_layout_us_per_step")
        lines.append(f"| {row['model']} | {row['batch']} | {row['hidden']} | {row['length']} "
                     f"| {row.get('group_blocks') or '-'} "
                     f"| {row['ours_us_per_step']:.1f} | "
                     f"{'%.1f' % blocks if blocks else '-'} | "
                     f"{'%.1f' % theirs if theirs else '-'} | {speed} | "
                     f"{'%.2e' % diff if diff is not None else '-'} |")
    sweep = report.get("layout_sweep") or []
    if sweep:
        sizes = sorted({size for row in sweep for size in row["us_per_step"]})
        lines += ["", f"## Layout sweep: LSTM, batch 1, length {report['sweep_length']}, "
                  f"us/step by blocks per group (0: a block per rows; max abs diff vs it)", "",
                  "| hidden | " + " | ".join(f"G={size}" for size in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        for row in sweep:
            cells = [f"{row['us_per_step'][size]:.1f} ({row['max_abs_diff'][size]:.0e})"
                     if size in row["us_per_step"] else "-" for size in sizes]
            lines.append(f"| {row['hidden']} | " + " | ".join(cells) + " |")
    if report["notes"]:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in report["notes"]]
    text = "\n".join(lines) + "\n"
    if not quiet:
        print(text)
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    with open(out, "w") as handle:
        handle.write(text)
    with open(os.path.splitext(out)[0] + ".json", "w") as handle:
        json.dump(report, handle, indent=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cuda_check",
                                     description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--prepare", metavar="DIR", help="trace and save (needs Keras)")
    action.add_argument("--run", metavar="DIR", help="check and time (needs a GPU)")
    parser.add_argument("--out", default="cuda_check.md", help="markdown report (--run)")
    parser.add_argument("--sizes", default="default",
                        help="'default', 'tiny' or B:H:T,... timing sizes (--prepare)")
    parser.add_argument("--budget-seconds", type=float, default=270.0)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--sweep-length", type=int, default=SWEEP_LENGTH,
                        help="steps of the layout sweep's calls (--run)")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.prepare, args.sizes)
    else:
        run(args.run, args.out, args.budget_seconds, args.repeats, args.sweep_length)
    return 0


if __name__ == "__main__":
    sys.exit(main())
