"""Printing programs as text: the form tests compare and `RSHOP_DEBUG=1` shows.

One statement per line, `outputs = op inputs [params]`; each Var named by its first
appearance (a, b, ..., z, ba, bb, ...), typed where it is defined (`c:f32[B,16]`);
literals print with their dtype (`2.0:f32`); params sorted; programs held in params
(scan and fused bodies) printed below their statement, indented. Deterministic.

    { params a:f32[8,16]=dense/kernel
      inputs b:f32[B,8]
      let
        c:f32[B,16] = matmul b a
        d:f32[B,16] = mul c 2.0:f32
      in (d) }
"""

from __future__ import annotations

from rshop_ir.ir import Literal, Program, Var, format_scalar, short_dtype
from rshop_ir.output_structure import format_structure

INDENT = "  "


def var_name(index: int) -> str:
    """0 -> "a", 25 -> "z", 26 -> "ba", ... (base 26 written with letters)."""
    letters = ""
    while True:
        index, digit = divmod(index, 26)
        letters = chr(ord("a") + digit) + letters
        if index == 0:
            return letters


class Namer:
    """Assigns names to Vars in order of first appearance."""

    def __init__(self):
        self.names = {}

    def name(self, var: Var) -> str:
        if var not in self.names:
            self.names[var] = var_name(len(self.names))
        return self.names[var]

    def atom(self, atom) -> str:
        if isinstance(atom, Literal):
            return f"{format_scalar(atom.value, atom.dtype)}:{short_dtype(atom.dtype)}"
        return self.name(atom)

    def typed(self, var: Var) -> str:
        return f"{self.name(var)}:{var.type}"


def format_program(program: Program) -> str:
    lines, _ = program_lines(program)
    return "\n".join(lines)


def program_lines(program: Program, namer: "Namer | None" = None) -> tuple:
    """The printed lines and, for each eqn (by id), the index of its line."""
    lines = []
    eqn_lines = {}
    _emit_program(program, namer or Namer(), lines, eqn_lines, indent="")
    return lines, eqn_lines


def _emit_program(program, namer, lines, eqn_lines, indent):
    opener = "{ "
    if program.params:
        declared = ", ".join(f"{namer.typed(var)}={name}" for name, var in program.params)
        lines.append(f"{indent}{opener}params {declared}")
        opener = INDENT
    inputs = ", ".join(
        namer.typed(var) + ("" if default is None else f"={format_scalar(default)}")
        for var, default in zip(program.inputs, program.input_defaults))
    lines.append(f"{indent}{opener}inputs {inputs}".rstrip())
    if program.prologue is not None:
        lines.append(f"{indent}{INDENT}precompute")
        for eqn in program.prologue.eqns:
            _emit_eqn(eqn, namer, lines, eqn_lines, indent + INDENT * 2)
        results = ", ".join(namer.atom(atom) for atom in program.prologue.outputs)
        lines.append(f"{indent}{INDENT * 2}-> ({results})")
    lines.append(f"{indent}{INDENT}let")
    for eqn in program.eqns:
        _emit_eqn(eqn, namer, lines, eqn_lines, indent + INDENT * 2)
    names = [namer.atom(atom) for atom in program.outputs]
    if program.output_structure is None:
        results = f"({', '.join(names)})"
    else:   # the nesting, its outer brackets included: `in [a, [b, c]]`
        results = format_structure(program.output_structure, names)
    lines.append(f"{indent}{INDENT}in {results} }}")


def format_param(value) -> str:
    if isinstance(value, float):
        return format_scalar(value)
    if isinstance(value, tuple):
        inner = ", ".join(format_param(item) for item in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _emit_eqn(eqn, namer, lines, eqn_lines, indent):
    arguments = " ".join(namer.atom(atom) for atom in eqn.inputs)
    outputs = " ".join(namer.typed(var) for var in eqn.outputs)
    simple = [f"{key}={format_param(value)}" for key, value in eqn.params.items()
              if not isinstance(value, Program)]
    params = f" [{', '.join(simple)}]" if simple else ""
    eqn_lines[id(eqn)] = len(lines)
    lines.append(f"{indent}{outputs} = {eqn.op} {arguments}".rstrip() + params)
    for key, value in eqn.params.items():
        if isinstance(value, Program):
            label = f"{indent}{INDENT * 2}{key}="
            nested_lines, nested_eqn_lines = [], {}
            _emit_program(value, namer, nested_lines, nested_eqn_lines, indent="")
            for key_id, index in nested_eqn_lines.items():
                eqn_lines[key_id] = len(lines) + index
            lines.append(label + nested_lines[0])
            lines.extend(" " * len(label) + line for line in nested_lines[1:])
