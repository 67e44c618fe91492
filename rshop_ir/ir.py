"""The IR data model: a flat, immutable SSA program in the style of JAX's jaxpr.

A `Program` is a list of equations `outputs = op(inputs) [params]`. Values are `Var`s
(identity objects carrying a dtype and a shape) or `Literal`s (scalar constants). Shapes
hold ints or the symbolic dims "B" (batch) and "T" (time). Weights are never values in
the program: they are `params`, named `Var`s bound to arrays when the program runs.

Everything here is immutable; passes build new programs instead of mutating old ones.
Vars compare by identity, so a pass may reuse the Vars of its input program.

    b = ProgramBuilder()                       # see builder.py
    x = b.input("float32", ("B", 8))
    w = b.param("dense/kernel", "float32", (8, 4))
    y = b.apply("matmul", x, w)
    print(b.build([y]))
    # { params a:f32[8,4]=dense/kernel
    #   inputs b:f32[B,8]
    #   let
    #     c:f32[B,4] = matmul b a
    #   in (c) }
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Union

import numpy as np

SYMBOLIC_DIMS = ("B", "T")
# 16-bit floats: Keras mixed precision computes in them, the kernels never do.
HALF_PRECISION = ("float16", "bfloat16")

Dim = Union[int, str]
Shape = tuple  # tuple[Dim, ...]


def normalize_dtype(dtype) -> str:
    """Return numpy's canonical name for `dtype` ("float32", "int32", "bool", ...)."""
    try:
        return _dtype_name(dtype)   # every Var and type normalises: remember the answers
    except TypeError:               # an unhashable dtype description
        return _dtype_name.__wrapped__(dtype)


@functools.lru_cache(maxsize=256)
def _dtype_name(dtype) -> str:
    try:
        return np.dtype(dtype).name
    except TypeError as error:
        raise ValueError(f"Unknown dtype: {dtype!r}. Expected a numpy dtype name "
                         f"such as 'float32'.") from error


def normalize_shape(shape) -> Shape:
    """Return `shape` as a tuple of non-negative ints and symbolic dims ("B", "T")."""
    if isinstance(shape, (int, str)):
        raise ValueError(f"A shape must be a tuple of dims. Received: shape={shape!r}")
    dims = []
    for dim in shape:
        if isinstance(dim, str):
            if dim not in SYMBOLIC_DIMS:
                raise ValueError(f"Unknown symbolic dim {dim!r} in shape {tuple(shape)}. "
                                 f"Expected an int or one of {SYMBOLIC_DIMS}.")
            dims.append(dim)
        elif isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim >= 0:
            dims.append(int(dim))
        else:
            raise ValueError(f"Invalid dim {dim!r} in shape {tuple(shape)}. Expected a "
                             f"non-negative int or one of {SYMBOLIC_DIMS}.")
    return tuple(dims)


@dataclass(frozen=True)
class TensorType:
    """The static type of a value: dtype name and shape (ints or "B"/"T")."""

    dtype: str
    shape: Shape

    def __post_init__(self):
        object.__setattr__(self, "dtype", normalize_dtype(self.dtype))
        object.__setattr__(self, "shape", normalize_shape(self.shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{short_dtype(self.dtype)}[{','.join(str(d) for d in self.shape)}]"


_SHORT_DTYPES = {
    "float16": "f16", "float32": "f32", "float64": "f64",
    "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
    "uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64",
    "bool": "bool", "complex64": "c64", "complex128": "c128",
}


def short_dtype(dtype: str) -> str:
    """The printed name of a dtype: "float32" -> "f32"."""
    return _SHORT_DTYPES.get(dtype, dtype)


@dataclass(frozen=True, eq=False)
class Var:
    """An SSA value. Compared and hashed by identity; carries its static type."""

    dtype: str
    shape: Shape

    def __post_init__(self):
        object.__setattr__(self, "dtype", normalize_dtype(self.dtype))
        object.__setattr__(self, "shape", normalize_shape(self.shape))

    @functools.cached_property
    def type(self) -> TensorType:   # dtype and shape never change: built once
        return TensorType(self.dtype, self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"Var({self.type})"


@dataclass(frozen=True)
class Literal:
    """A scalar constant such as the 2.0 in `x * 2.0`. Compared by value and dtype."""

    value: Union[bool, int, float]
    dtype: str

    def __post_init__(self):
        dtype = normalize_dtype(self.dtype)
        object.__setattr__(self, "dtype", dtype)
        value = np.asarray(self.value, dtype=dtype)
        if value.shape != ():
            raise ValueError(f"A Literal holds a scalar. Received: value={self.value!r}")
        object.__setattr__(self, "value", value.item())

    @property
    def shape(self) -> Shape:
        return ()

    @property
    def type(self) -> TensorType:
        return TensorType(self.dtype, ())

    @property
    def ndim(self) -> int:
        return 0

    def key(self) -> tuple:
        """A hashable key that tells NaN and -0.0 apart (for CSE)."""
        return ("literal", self.dtype, repr(self.value))

    def __repr__(self) -> str:
        return f"Literal({format_scalar(self.value, self.dtype)}:{short_dtype(self.dtype)})"


Atom = Union[Var, Literal]


def format_scalar(value, dtype: str = "float64") -> str:
    """Print a scalar so that nan/inf are explicit and floats round-trip in `dtype`."""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if dtype in ("float32", "float16"):
            return str(np.dtype(dtype).type(value))  # shortest repr in that precision
        return repr(value)
    return repr(value)


def _freeze_param(value):
    """Turn a param value into an immutable, comparable one (lists become tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze_param(item) for item in value)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, Program)):
        return value
    raise TypeError(f"An IR param must be an int, float, str, bool, None, tuple or "
                    f"Program. Received: {value!r} of type {type(value).__name__}")


class Params(Mapping):
    """An immutable mapping of equation params, kept sorted by key."""

    __slots__ = ("_items",)

    def __init__(self, items=()):
        pairs = dict(items).items() if not isinstance(items, Params) else items.items()
        frozen = tuple(sorted((str(key), _freeze_param(value)) for key, value in pairs))
        object.__setattr__(self, "_items", frozen)

    def __setattr__(self, name, value):
        raise AttributeError("Params is immutable")

    def __getitem__(self, key):
        for item_key, value in self._items:
            if item_key == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other) -> bool:
        return isinstance(other, Params) and self._items == other._items

    def replace(self, **changes) -> "Params":
        return Params({**dict(self._items), **changes})

    def __repr__(self) -> str:
        return f"Params({dict(self._items)!r})"


@dataclass(frozen=True, eq=False)
class Eqn:
    """One statement: `outputs = op(inputs) [params]`."""

    op: str
    inputs: tuple
    outputs: tuple
    params: Params = field(default_factory=Params)

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if not isinstance(self.params, Params):
            object.__setattr__(self, "params", Params(self.params))

    def replace(self, **changes) -> "Eqn":
        fields = {"op": self.op, "inputs": self.inputs, "outputs": self.outputs,
                  "params": self.params, **changes}
        return Eqn(**fields)

    def nested_programs(self) -> list:
        """The programs held in params (a scan's or a fused op's `body`)."""
        return [value for value in self.params.values() if isinstance(value, Program)]


@dataclass(frozen=True, eq=False)
class Program:
    """A typed SSA program.

    Attributes:
        inputs: data inputs (e.g. the sequence, initial states), in call order.
        params: `(name, Var)` pairs: the weights, bound by name when the program runs.
        eqns: the statements, in execution order.
        outputs: the returned atoms.
        prologue: optional weight-precompute program (see passes/precompute_weights.py):
            no inputs, only params; its outputs are Vars the main `eqns` read. It is
            run once per weight version and may be cached by a kernel.
        input_names: one name per input ("x", "initial_state/0", ...), used to pass
            inputs by keyword; defaults to "input/<i>".
        input_defaults: one entry per input: None (the caller must give it) or a
            scalar the input is filled with when the caller omits it (e.g. zeros for
            an initial state), its symbolic dims sized from the other inputs.
        output_structure: how the outputs nest in what a call returns (as the traced
            Keras layer or model returns them; rshop_ir/output_structure.py), or None
            for the flat form: the one output, or a list of several.
    """

    inputs: tuple = ()
    params: tuple = ()
    eqns: tuple = ()
    outputs: tuple = ()
    prologue: "Program | None" = None
    input_names: tuple = ()
    input_defaults: tuple = ()
    output_structure: object = None

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "params", tuple((str(n), v) for n, v in self.params))
        object.__setattr__(self, "eqns", tuple(self.eqns))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        names = tuple(self.input_names) or tuple(f"input/{i}" for i in range(len(self.inputs)))
        if len(names) != len(self.inputs):
            raise ValueError(f"Expected one input name per input ({len(self.inputs)}). "
                             f"Received: input_names={names}")
        object.__setattr__(self, "input_names", names)
        defaults = tuple(self.input_defaults) or (None,) * len(self.inputs)
        if len(defaults) != len(self.inputs):
            raise ValueError(f"Expected one input default per input ({len(self.inputs)}). "
                             f"Received: input_defaults={defaults}")
        for default in defaults:
            if default is not None and not isinstance(default, (bool, int, float)):
                raise TypeError(f"An input default is None or a scalar. Received {default!r}.")
        object.__setattr__(self, "input_defaults", defaults)
        from rshop_ir.output_structure import check_structure

        check_structure(self.output_structure, len(self.outputs))

    @property
    def param_names(self) -> tuple:
        return tuple(name for name, _ in self.params)

    @property
    def param_vars(self) -> tuple:
        return tuple(var for _, var in self.params)

    def replace(self, **changes) -> "Program":
        """A copy with `changes`; new `inputs` drop the old names and defaults unless
        those are given too."""
        fields = {"inputs": self.inputs, "params": self.params, "eqns": self.eqns,
                  "outputs": self.outputs, "prologue": self.prologue,
                  "input_names": self.input_names, "input_defaults": self.input_defaults,
                  "output_structure": self.output_structure}
        if "inputs" in changes and tuple(changes["inputs"]) != self.inputs:
            fields["input_defaults"] = ()
        fields.update(changes)
        return Program(**fields)

    def count_eqns(self, nested: bool = True) -> int:
        """Number of statements, including prologue and nested bodies if `nested`."""
        total = len(self.eqns)
        if nested:
            if self.prologue is not None:
                total += self.prologue.count_eqns()
            for eqn in self.eqns:
                total += sum(body.count_eqns() for body in eqn.nested_programs())
        return total

    def __str__(self) -> str:
        from rshop_ir.printer import format_program
        return format_program(self)

    def __repr__(self) -> str:
        return (f"<Program: {len(self.inputs)} inputs, {len(self.params)} params, "
                f"{len(self.eqns)} eqns, {len(self.outputs)} outputs>")
