"""The verifier: is a program well formed? (JAX's check_jaxpr, torch.fx's lint.)

Checks, in the program and recursively in its prologue and nested bodies:
  * every Var is defined before it is used, and bodies use only their own inputs;
  * every Var is assigned once (across the whole program tree);
  * every op is in the table, its params are the table's, and its output types are what
    the op's shape rule gives for its input types.
On failure raises `IRVerificationError` (a ValueError) whose message shows the offending
line, marked `>>`, with a few lines of IR around it.
"""

from __future__ import annotations

from rshop_ir.errors import IRVerificationError, UnsupportedError
from rshop_ir.ir import Literal, Program, Var
from rshop_ir.ops import get_op
from rshop_ir.printer import program_lines

CONTEXT_LINES = 3


def verify(program: Program) -> Program:
    """Raise `IRVerificationError` if `program` is malformed; return it otherwise."""
    _Checker(program).check_program(program, frozenset(), owner=None)
    return program


class _Checker:
    def __init__(self, root: Program):
        self.root = root
        self.assigned = set()

    def fail(self, message: str, eqn=None) -> None:
        lines, eqn_lines = program_lines(self.root)
        target = eqn_lines.get(id(eqn), len(lines) - 1) if eqn is not None else len(lines) - 1
        first = max(0, target - CONTEXT_LINES)
        last = min(len(lines), target + CONTEXT_LINES + 1)
        shown = [(">> " if index == target else "   ") + lines[index]
                 for index in range(first, last)]
        raise IRVerificationError(f"{message}\n  at line {target + 1} of the program:\n"
                                  + "\n".join(shown))

    def define(self, var, where, owner) -> None:
        if not isinstance(var, Var):
            self.fail(f"Expected a Var, found {var!r}.", where or owner)
        if var in self.assigned:
            self.fail(f"Single assignment violated: a Var of type {var.type} is assigned "
                      f"more than once.", where or owner)
        self.assigned.add(var)

    def check_program(self, program: Program, shared_params: frozenset, owner) -> None:
        """`owner` is the eqn holding this nested program (None for the root)."""
        defined = set()
        names = [name for name, _ in program.params]
        if len(set(names)) != len(names):
            self.fail(f"Duplicate param names in {names}.", owner)
        for _, var in program.params:
            if var not in shared_params:
                self.define(var, None, owner)
            defined.add(var)
        for var in program.inputs:
            self.define(var, None, owner)
            defined.add(var)
        if program.prologue is not None:
            prologue = program.prologue
            if prologue.inputs:
                self.fail("The precompute prologue takes no inputs.", owner)
            stray = [var for _, var in prologue.params if var not in defined]
            if stray:
                self.fail("The precompute prologue uses params that the program lacks.",
                          owner)
            self.check_program(prologue, frozenset(program.param_vars), owner)
            for atom in prologue.outputs:
                if isinstance(atom, Var):
                    defined.add(atom)
        all_defined_here = {out for eqn in program.eqns for out in eqn.outputs}
        for eqn in program.eqns:
            self.check_eqn(eqn, defined, all_defined_here)
            for var in eqn.outputs:
                self.define(var, eqn, owner)
                defined.add(var)
        for atom in program.outputs:
            if isinstance(atom, Var) and atom not in defined:
                self.fail("A program output is not defined in that program.", owner)

    def check_eqn(self, eqn, defined: set, defined_later: set) -> None:
        for position, atom in enumerate(eqn.inputs):
            if isinstance(atom, Literal):
                continue
            if not isinstance(atom, Var):
                self.fail(f"Input {position} of {eqn.op!r} is not a Var or Literal: "
                          f"{atom!r}.", eqn)
            if atom not in defined:
                when = "before it is defined" if atom in defined_later else "but never defined"
                self.fail(f"Input {position} of {eqn.op!r} is used {when} "
                          f"(in this scope).", eqn)
        try:
            op = get_op(eqn.op)
        except UnsupportedError as error:
            self.fail(str(error).split(" Known ops")[0], eqn)
        try:
            completed = op.complete_params(dict(eqn.params))
            expected = op.infer([atom.type for atom in eqn.inputs], completed)
        except (ValueError, TypeError) as error:
            self.fail(f"Op {eqn.op!r} rejects its inputs: {error}", eqn)
        if dict(completed) != dict(eqn.params):
            self.fail(f"Op {eqn.op!r} is missing params (expected "
                      f"{sorted(completed)}).", eqn)
        actual = [var.type for var in eqn.outputs]
        if list(expected) != actual:
            expected_text = ", ".join(str(t) for t in expected)
            actual_text = ", ".join(str(t) for t in actual)
            self.fail(f"Type mismatch: {eqn.op!r} gives ({expected_text}) for these "
                      f"inputs, but its outputs are declared ({actual_text}).", eqn)
        for body in eqn.nested_programs():
            self.check_program(body, frozenset(), owner=eqn)
