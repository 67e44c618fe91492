"""The wide-vector mark of the generated kernels (kernels/cpu/vector_width.py).

`wide_vectors()` must put LLVM's "prefer-vector-width"="512" attribute on the function
it is compiled into and on nothing else, change no number (each element of a gate loop
is computed the same way whatever the vector width), give 512-bit loops on a CPU with
AVX-512, and be called by every function of a generated kernel module.
"""

import re

import llvmlite.binding as llvm
import numpy as np
import pytest
from numba import njit

import rshop_ir
from rshop_ir import examples
from rshop_ir.bound import BoundProgram
from rshop_ir.kernels.cpu.mathlib import sigmoid_f32, tanh_f32
from rshop_ir.kernels.cpu.vector_width import PREFERRED_WIDTH, wide_vectors


@njit(error_model="numpy")
def _marked(x, out):
    wide_vectors()
    for index in range(x.shape[0]):
        out[index] = tanh_f32(x[index]) + sigmoid_f32(x[index])


@njit(error_model="numpy")
def _unmarked(x, out):
    for index in range(x.shape[0]):
        out[index] = tanh_f32(x[index]) + sigmoid_f32(x[index])


def _llvm_text(dispatcher) -> str:
    return "\n".join(dispatcher.inspect_llvm().values())


def _inputs():
    x = np.linspace(-12, 12, 1003).astype(np.float32)
    x[[5, 77, 500]] = [np.nan, np.inf, -np.inf]
    return x


def test_the_mark_sets_the_attribute_and_changes_no_number():
    x = _inputs()
    marked, unmarked = np.empty_like(x), np.empty_like(x)
    _marked(x, marked)
    _unmarked(x, unmarked)
    assert PREFERRED_WIDTH in _llvm_text(_marked)
    assert PREFERRED_WIDTH not in _llvm_text(_unmarked)
    np.testing.assert_array_equal(marked, unmarked)    # bit for bit, NaN where NaN
    expected = np.tanh(x.astype(np.float64)) + 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(marked, expected, atol=1e-6, rtol=0)


@pytest.mark.skipif("+avx512f" not in llvm.get_host_cpu_features().flatten(),
                    reason="512-bit vectors need a CPU with AVX-512")
def test_the_marked_loop_uses_512_bit_registers():
    x = _inputs()
    _marked(x, np.empty_like(x))
    assert "zmm" in "\n".join(_marked.inspect_asm().values())


def test_every_generated_function_is_marked(tmp_path, monkeypatch):
    # a kernel cache of its own: a module loaded from the disk cache has `run` loaded
    # whole, and the scan function it calls is never compiled alone (no signature)
    monkeypatch.setenv("RSHOP_CACHE_DIR", str(tmp_path))
    # a decoder: work around its scan, so a scan function and `run`, besides the
    # launcher that only starts `run` (team_poll.py)
    program = examples.decoder_program(3, 5, dtype="float32")
    bound = BoundProgram(program, examples.random_weights(program, seed=1))
    compiled = rshop_ir.compile(bound)
    functions = compiled.source.count("\ndef ") - compiled.source.count("\ndef launch_")
    assert functions >= 2
    assert compiled.source.count("    wide_vectors()\n") == functions
    inputs = examples.random_inputs(program, batch=2, steps=4, seed=2)
    compiled(*inputs)
    # Numba shows no LLVM code of a function it loaded from its disk cache: compile
    # the generated functions again, uncached, for the types they were called with.
    names = re.findall(r"^def (\w+)\(", compiled.source, re.M)
    assert "run" in names
    for name in (name for name in names if not name.startswith("launch_")):
        dispatcher = getattr(compiled.module, name)
        again = njit(error_model="numpy", nogil=True)(dispatcher.py_func)
        again.compile(dispatcher.signatures[0])
        assert PREFERRED_WIDTH in _llvm_text(again), name
