"""Tracer + passes + interpreter against Keras on the zoo of published step models."""

import numpy as np
import pytest

import rshop_ir
import zoo


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


@pytest.fixture(scope="module", params=zoo.ZOO, ids=[entry.__name__ for entry in zoo.ZOO])
def traced(request):
    case = request.param(np.random.default_rng(3))
    program = rshop_ir.trace(case.target)
    return case, program, rshop_ir.optimize(program)


def test_interpreter_matches_keras(traced):
    case, program, _ = traced
    expected = _as_list(case.reference())
    got = _as_list(rshop_ir.interpret(program, *case.inputs, **case.kwargs))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_optimized_program_matches_keras(traced):
    case, program, optimized = traced
    rshop_ir.verify(optimized.program)
    expected = _as_list(case.reference())
    got = _as_list(rshop_ir.interpret(optimized, *case.inputs, **case.kwargs))
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_optimization_shrinks_or_keeps_the_step(traced):
    """Passes never add matmuls to a scan body: hoisting moves input projections out."""
    _, program, optimized = traced

    def body_matmuls(prog):
        count = 0
        for eqn in prog.eqns:
            if eqn.op == "scan":
                count += sum(e.op == "matmul" for e in eqn.params["body"].eqns)
                count += body_matmuls(eqn.params["body"]) - sum(
                    e.op == "matmul" for e in eqn.params["body"].eqns)
        return count

    assert body_matmuls(optimized.program) <= body_matmuls(program.program)
