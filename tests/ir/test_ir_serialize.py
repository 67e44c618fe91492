"""save -> load round trips (run where Keras and TensorFlow cannot be imported) and clear
errors for corrupted, truncated and newer-version files."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rshop_ir import BoundProgram, IRFormatError, ProgramBuilder, load, optimize, save
from rshop_ir.examples import lstm_program, random_inputs, random_weights

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def saved_lstm(directory, optimized=True):
    program = lstm_program(3, 4, masked=True, return_sequences=True)
    bound = BoundProgram(program, random_weights(program, seed=1))
    if optimized:
        bound = optimize(bound)
    path = os.path.join(directory, "lstm.rshop")
    save(bound, path)
    return bound, path


@pytest.mark.parametrize("optimized", [False, True])
def test_round_trip_gives_identical_output(tmp_path, optimized):
    bound, path = saved_lstm(str(tmp_path), optimized)
    loaded = load(path)
    assert str(loaded.program) == str(bound.program)
    inputs = random_inputs(bound.program, seed=3)
    for want, got in zip(bound(*inputs), loaded(*inputs)):
        np.testing.assert_array_equal(got, want)


def test_json_is_readable_and_versioned(tmp_path):
    bound, path = saved_lstm(str(tmp_path))
    with open(os.path.join(path, "program.json")) as handle:
        document = json.load(handle)
    assert document["format"] == "rshop_ir.program" and document["version"] == 1
    assert "\n".join(document["ir_text"]) == str(bound.program)
    assert set(document["weights"]) == set(bound.program.param_names)


def test_non_finite_literals_round_trip(tmp_path):
    b = ProgramBuilder()
    x = b.input("float64", ("B", 2))
    y = b.apply("maximum", b.apply("add", x, float("nan")), float("-inf"))
    program = b.build([b.apply("minimum", y, float("inf"))])
    save(program, str(tmp_path / "p"))
    loaded = load(str(tmp_path / "p"))
    assert str(loaded.program) == str(program)
    assert np.isnan(loaded(np.ones((1, 2)))).all()


def test_loaded_program_runs_without_keras_or_tensorflow(tmp_path):
    bound, path = saved_lstm(str(tmp_path))
    inputs = random_inputs(bound.program, seed=4)
    np.savez(tmp_path / "io.npz", *inputs, *bound(*inputs))
    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("keras", "tensorflow"):
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Blocker())
        for blocked in ("keras", "tensorflow"):
            try:
                __import__(blocked)
            except ImportError:
                pass
            else:
                raise SystemExit(blocked + " was importable")

        import numpy as np
        import rshop_ir

        loaded = rshop_ir.load({path!r})
        data = np.load({str(tmp_path / "io.npz")!r})
        arrays = [data[f"arr_{{i}}"] for i in range(len(data.files))]
        inputs, expected = arrays[:4], arrays[4:]
        outputs = loaded(*inputs)
        for want, got in zip(expected, outputs):
            np.testing.assert_array_equal(got, want)
        assert not any(m.split(".")[0] in ("keras", "tensorflow") for m in sys.modules)
        print("OK", len(outputs))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK 3"


def test_newer_version_is_refused(tmp_path):
    _, path = saved_lstm(str(tmp_path))
    program_file = os.path.join(path, "program.json")
    with open(program_file) as handle:
        document = json.load(handle)
    document["version"] = 99
    with open(program_file, "w") as handle:
        json.dump(document, handle)
    with pytest.raises(IRFormatError, match="version 99.*Upgrade"):
        load(path)


@pytest.mark.parametrize("cut", [0.5, 0.95])
def test_truncated_json_is_refused(tmp_path, cut):
    _, path = saved_lstm(str(tmp_path))
    program_file = os.path.join(path, "program.json")
    with open(program_file, "rb") as handle:
        data = handle.read()
    with open(program_file, "wb") as handle:
        handle.write(data[:int(len(data) * cut)])
    with pytest.raises(IRFormatError, match="corrupted or truncated"):
        load(path)


def test_structurally_corrupted_json_is_refused(tmp_path):
    _, path = saved_lstm(str(tmp_path))
    program_file = os.path.join(path, "program.json")
    with open(program_file) as handle:
        document = json.load(handle)
    document["program"]["eqns"][0]["inputs"] = [{"var": 12345}]
    with open(program_file, "w") as handle:
        json.dump(document, handle)
    with pytest.raises(IRFormatError, match="corrupted"):
        load(path)
    document["program"]["eqns"][0]["inputs"] = []
    with open(program_file, "w") as handle:
        json.dump(document, handle)
    with pytest.raises(IRFormatError, match="invalid program"):
        load(path)


def test_truncated_or_pickled_weights_are_refused(tmp_path):
    _, path = saved_lstm(str(tmp_path))
    weights_file = os.path.join(path, "weights.npz")
    with open(weights_file, "rb") as handle:
        data = handle.read()
    with open(weights_file, "wb") as handle:
        handle.write(data[:len(data) // 2])
    with pytest.raises(IRFormatError, match="weights.npz"):
        load(path)
    names = {f"w{i}": np.array([object()], dtype=object) for i in range(12)}
    np.savez(weights_file, **names)     # object arrays need pickle: never loaded
    with pytest.raises(IRFormatError, match="weights.npz"):
        load(path)


def test_missing_path_and_wrong_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="No saved rshop_ir program"):
        load(str(tmp_path / "nothing"))
    program = lstm_program(3, 4)
    weights = random_weights(program)
    weights["lstm/Wi"] = np.zeros((5, 4), "float32")
    with pytest.raises(ValueError, match="lstm/Wi"):
        save(BoundProgram(program, weights), str(tmp_path / "x"))
