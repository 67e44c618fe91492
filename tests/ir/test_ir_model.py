"""The data model (immutable, typed) and the printer (deterministic, jaxpr-like)."""

import dataclasses

import numpy as np
import pytest

from rshop_ir import Literal, Params, ProgramBuilder, Var
from rshop_ir.examples import lstm_program
from rshop_ir.printer import var_name


def test_var_is_an_identity_with_type():
    a, b = Var("float32", ("B", 4)), Var(np.float32, ("B", 4))
    assert a != b and a == a and len({a, b}) == 2
    assert a.type == b.type and str(a.type) == "f32[B,4]"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.dtype = "float64"
    with pytest.raises(ValueError, match="symbolic dim 'N'"):
        Var("float32", ("N", 4))
    with pytest.raises(ValueError, match="Unknown dtype"):
        Var("floaty", (4,))


def test_literal_params_and_program_are_immutable():
    assert Literal(2, "float32") == Literal(2.0, "float32")
    assert Literal(2.0, "float32") != Literal(2.0, "float64")
    params = Params({"perm": [1, 0], "axis": 1})
    assert list(params) == ["axis", "perm"] and params["perm"] == (1, 0)
    assert hash(params) == hash(Params({"axis": 1, "perm": (1, 0)}))
    with pytest.raises(AttributeError):
        params.axis = 2
    with pytest.raises(TypeError, match="IR param"):
        Params({"value": np.zeros(3)})
    program = lstm_program()
    assert isinstance(program.eqns, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        program.eqns = ()


def test_var_names_by_first_appearance():
    assert [var_name(i) for i in (0, 1, 25, 26, 27, 51, 52, 675, 676)] == [
        "a", "b", "z", "ba", "bb", "bz", "ca", "zz", "baa"]


def test_printer_format_is_deterministic():
    def build():
        b = ProgramBuilder()
        x = b.input("float32", ("B", 8), name="x")
        w = b.param("dense/kernel", "float32", (8, 4))
        y = b.apply("leaky_relu", b.apply("mul", b.apply("matmul", x, w), 0.1))
        z = b.apply("reduce_sum", y, axes=(1,), keepdims=True)
        n = b.apply("add", z, float("nan"))
        return b.build([b.apply("maximum", n, float("-inf")), y])

    text = str(build())
    assert text == str(build())
    assert text == """{ params a:f32[8,4]=dense/kernel
  inputs b:f32[B,8]
  let
    c:f32[B,4] = matmul b a
    d:f32[B,4] = mul c 0.1:f32
    e:f32[B,4] = leaky_relu d [negative_slope=0.2]
    f:f32[B,1] = reduce_sum e [axes=(1,), keepdims=True]
    g:f32[B,1] = add f nan:f32
    h:f32[B,1] = maximum g -inf:f32
  in (h, e) }"""


def test_nested_body_is_indented_below_its_statement():
    lines = str(lstm_program(3, 4)).split("\n")
    scan_line = next(i for i, line in enumerate(lines) if "= scan " in line)
    assert lines[scan_line + 1].lstrip().startswith("body={ inputs")
    indent = len(lines[scan_line]) - len(lines[scan_line].lstrip())
    body_lines = lines[scan_line + 1:-1]
    assert all(len(line) - len(line.lstrip()) > indent for line in body_lines)
    assert lines[-1] == "  in (p, q, r) }"


def test_builder_weak_typing_and_errors():
    b = ProgramBuilder()
    x = b.input("float32", ("B", 2))
    i = b.input("int32", ("B", 2))
    assert b.apply("mul", x, 2).dtype == "float32"
    assert b.apply("add", i, 1).dtype == "int32"
    with pytest.raises(ValueError, match="already exists"):
        b.param("w", "float32", (2,))
        b.param("w", "float32", (2,))
    with pytest.raises(TypeError, match="must be a Var"):
        b.apply("add", x, "two")
    body = ProgramBuilder()
    h = body.input("float32", ("B", 2))
    with pytest.raises(ValueError, match="use emit"):
        b.apply("scan", x, body=body.build([h, h]), num_sequences=0, num_states=1, length=3)


def test_a_python_number_takes_the_dtype_of_the_first_operand_that_is_not_bool():
    """`where(mask, x, 0)` (Keras's masked pooling) is float32 for a float32 x, as in
    Keras: the literal 0 used to take the bool condition's place as the example and
    became int32, which promoted the where to float64."""
    builder = ProgramBuilder()
    mask = builder.input("bool", ("B", 3))
    x = builder.input("float32", ("B", 3))
    masked = builder.apply("where", mask, x, 0)
    assert masked.dtype == "float32"
    program = builder.build([masked])
    assert program.eqns[0].inputs[2] == Literal(0.0, "float32")
    both_bool = builder.apply("logical_and", mask, mask)
    assert builder.apply("equal", both_bool, 1).dtype == "bool"
