"""Building Python source: a list of lines with indentation, and one naming namespace.

    names = Namespace(reserved={"np", "math"})
    out = SourceWriter()
    with out.block(f"for {names.fresh('i')} in range(n):"):
        out.line("...")

Every identifier in generated code comes from a `Namespace`: hints are sanitised to
identifiers, never collide with keywords, builtins, reserved module-level names or each
other. Objects (arrays, helper functions) are never `repr`-ed into the text; they are
passed in a globals dict under a name from the namespace.
"""

from __future__ import annotations

import builtins
import keyword
import re
from contextlib import contextmanager

INDENT = "    "


class Namespace:
    def __init__(self, reserved=()):
        self.taken = set(reserved) | set(keyword.kwlist) | set(dir(builtins))
        self.counts = {}

    def fresh(self, hint: str = "v") -> str:
        base = re.sub(r"\W", "_", str(hint)).strip("_") or "v"
        if base[0].isdigit():
            base = "v_" + base
        base = base[:40]
        name = base
        while name in self.taken:
            self.counts[base] = self.counts.get(base, 0) + 1
            name = f"{base}_{self.counts[base]}"
        self.taken.add(name)
        return name

    def child(self) -> "Namespace":
        """A namespace for a function body: module-level names stay reserved."""
        child = Namespace()
        child.taken = set(self.taken)
        child.counts = dict(self.counts)
        return child


class SourceWriter:
    def __init__(self):
        self.lines = []
        self.depth = 0

    def line(self, text: str = "") -> None:
        self.lines.append(INDENT * self.depth + text if text else "")

    @contextmanager
    def block(self, header: str):
        self.line(header)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def extend(self, other: "SourceWriter") -> None:
        for text in other.lines:
            self.lines.append(INDENT * self.depth + text if text else "")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def smaller(first: str, second: str) -> str:
    """Source for the smaller of two integer expressions. Python's `min(a, b)` would
    compile Numba's tuple overload of `min` into every kernel (~20 ms a first compile);
    a conditional expression compiles to one select."""
    return f"({first} if {first} < {second} else {second})"


def larger(first: str, second: str) -> str:
    """Source for the larger of two integer expressions (see `smaller`)."""
    return f"({first} if {first} > {second} else {second})"
