"""The verifier catches malformed programs and shows the offending line in context."""

import pytest

from rshop_ir import Eqn, IRVerificationError, Literal, Program, ProgramBuilder, Var, verify
from rshop_ir.examples import lstm_program


def offending_line(error) -> str:
    return next(line for line in str(error.value).split("\n") if line.startswith(">>"))


def test_valid_programs_pass():
    verify(lstm_program(3, 4, masked=True, return_sequences=True))


def test_use_before_definition():
    x = Var("float32", ("B", 4))
    late = Var("float32", ("B", 4))
    out = Var("float32", ("B", 4))
    eqns = [Eqn("add", (x, late), (out,)), Eqn("tanh", (x,), (late,))]
    with pytest.raises(IRVerificationError, match="used before it is defined") as error:
        verify(Program(inputs=[x], eqns=eqns, outputs=[out]))
    assert "= add" in offending_line(error)
    assert issubclass(IRVerificationError, ValueError)


def test_undefined_var_and_output():
    x, ghost, out = (Var("float32", (2,)) for _ in range(3))
    with pytest.raises(IRVerificationError, match="never defined"):
        verify(Program(inputs=[x], eqns=[Eqn("mul", (x, ghost), (out,))], outputs=[out]))
    with pytest.raises(IRVerificationError, match="output is not defined"):
        verify(Program(inputs=[x], eqns=[], outputs=[ghost]))


def test_double_assignment():
    x, y = Var("float32", (2,)), Var("float32", (2,))
    eqns = [Eqn("tanh", (x,), (y,)), Eqn("exp", (x,), (y,))]
    with pytest.raises(IRVerificationError, match="more than once") as error:
        verify(Program(inputs=[x], eqns=eqns, outputs=[y]))
    assert "= exp" in offending_line(error)
    with pytest.raises(IRVerificationError, match="more than once"):
        verify(Program(inputs=[x], eqns=[Eqn("tanh", (x,), (x,))], outputs=[x]))


def test_shape_and_dtype_mismatch_show_the_line_with_context():
    b = ProgramBuilder()
    x = b.input("float32", ("B", 8))
    w = b.param("w", "float32", (8, 4))
    hidden = b.apply("tanh", b.apply("matmul", x, w))
    program = b.build([b.apply("exp", hidden)])
    wrong = Var("float32", ("B", 5))
    bad_eqns = list(program.eqns)
    bad_eqns[1] = Eqn("tanh", bad_eqns[1].inputs, (wrong,))
    bad_eqns[2] = Eqn("exp", (wrong,), bad_eqns[2].outputs)
    with pytest.raises(IRVerificationError, match="Type mismatch") as error:
        verify(program.replace(eqns=bad_eqns))
    text = str(error.value)
    assert "tanh" in offending_line(error) and "f32[B,5]" in offending_line(error)
    assert "matmul" in text and "exp" in text      # neighbouring lines are shown
    wrong_dtype = Var("float64", ("B", 4))
    bad_eqns = list(program.eqns)
    bad_eqns[1] = Eqn("tanh", bad_eqns[1].inputs, (wrong_dtype,))
    bad_eqns[2] = Eqn("exp", (wrong_dtype,), (Var("float64", ("B", 4)),))
    with pytest.raises(IRVerificationError, match="f32.B,4.*f64.B,4"):
        verify(program.replace(eqns=bad_eqns, outputs=bad_eqns[2].outputs))


def test_rule_rejection_unknown_op_and_params():
    a, b, out = Var("float32", (2, 3)), Var("float32", (4, 5)), Var("float32", (2, 5))
    with pytest.raises(IRVerificationError, match="contracted dims differ"):
        verify(Program(inputs=[a, b], eqns=[Eqn("matmul", (a, b), (out,))], outputs=[out]))
    y = Var("float32", (2, 3))
    with pytest.raises(IRVerificationError, match="'fft' is not in the rshop_ir op table"):
        verify(Program(inputs=[a], eqns=[Eqn("fft", (a,), (y,))], outputs=[y]))
    with pytest.raises(IRVerificationError, match="requires the param 'perm'"):
        verify(Program(inputs=[a], eqns=[Eqn("transpose", (a,), (Var("float32", (3, 2)),))],
                       outputs=[]))
    with pytest.raises(IRVerificationError, match="has no param"):
        verify(Program(inputs=[a], eqns=[Eqn("tanh", (a,), (y,), {"axis": 0})], outputs=[y]))


def test_scan_body_checked_and_cannot_capture_outer_values():
    program = lstm_program(3, 4)
    scan = program.eqns[0]
    body = scan.params["body"]
    outer_value = program.inputs[1]
    captured = Eqn("add", (body.inputs[1], outer_value), (Var("float32", ("B", 4)),))
    bad_body = body.replace(eqns=body.eqns + (captured,))
    bad = program.replace(eqns=[scan.replace(params=scan.params.replace(body=bad_body))])
    with pytest.raises(IRVerificationError, match="never defined") as error:
        verify(bad)
    assert "= add" in offending_line(error)
    literal_body = body.replace(eqns=body.eqns + (
        Eqn("mul", (body.inputs[1], Literal(2.0, "float32")), (Var("float32", ("B", 3)),)),))
    with pytest.raises(IRVerificationError, match="Type mismatch"):
        verify(program.replace(eqns=[scan.replace(params=scan.params.replace(
            body=literal_body))]))
