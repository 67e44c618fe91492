"""A tiny pattern language for local rewrites (after tinygrad's UPat/PatternMatcher).

    Op("add", Any("x"), Lit(0))      add of anything (bound as "x") and the literal 0
    Op("neg", Op("neg", Any("x")))   a double negation
    Op("transpose", Op("transpose", Any("x"), name="inner"))

An `Op` pattern matches a Var produced by an eqn with that op whose inputs match the
sub-patterns (a commutative binary op is also tried with its inputs swapped); `name`
binds the matched eqn. `Any(name)` matches any atom and binds it. `Lit(value)` matches a
Literal equal to `value`. A match is a dict: name -> atom or eqn.
"""

from __future__ import annotations

from dataclasses import dataclass

from rshop_ir.ir import Literal, Var
from rshop_ir.ops import get_op


@dataclass(frozen=True)
class Any:
    name: str

    def match(self, atom, producers: dict, bindings: dict) -> bool:
        if self.name in bindings and bindings[self.name] is not atom:
            return False
        bindings[self.name] = atom
        return True


@dataclass(frozen=True)
class Lit:
    value: float

    def match(self, atom, producers: dict, bindings: dict) -> bool:
        return isinstance(atom, Literal) and atom.value == self.value


class Op:
    def __init__(self, op: str, *inputs, name: "str | None" = None):
        self.op = op
        self.inputs = inputs
        self.name = name

    def match(self, atom, producers: dict, bindings: dict) -> bool:
        if not isinstance(atom, Var) or atom not in producers:
            return False
        return self.match_eqn(producers[atom], producers, bindings)

    def match_eqn(self, eqn, producers: dict, bindings: dict) -> bool:
        if eqn.op != self.op or len(eqn.inputs) != len(self.inputs):
            return False
        orders = [eqn.inputs]
        if len(eqn.inputs) == 2 and get_op(eqn.op).commutative:
            orders.append(eqn.inputs[::-1])
        for inputs in orders:
            trial = dict(bindings)
            if all(p.match(a, producers, trial) for p, a in zip(self.inputs, inputs)):
                if self.name is not None:
                    trial[self.name] = eqn
                bindings.clear()
                bindings.update(trial)
                return True
        return False

    def __repr__(self) -> str:
        return f"Op({self.op!r}, {', '.join(map(repr, self.inputs))})"
