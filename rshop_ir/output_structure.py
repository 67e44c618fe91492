"""How a program's flat outputs nest into what its call returns.

A program's outputs are a flat tuple of atoms; the Keras layer or model it was traced
from may return them nested: `keras.layers.RNN(StackedRNNCells([...]),
return_state=True)` returns `(output, [h_1, c_1], [h_2, c_2])`, a model whatever
structure its outputs were built in. `Program.output_structure` records that nesting
as a template of the same lists, tuples and dicts whose leaves are the outputs'
positions (`[0, [1, 2], [3, 4]]`); None, the default, is the flat form: the one
output itself, or a list of several. The compiled objects, the interpreter and
`accelerate` return `nest_outputs(flat, structure)`; `rshop_ir.save` keeps it.
Leaves are taken in `keras.tree.flatten`'s order (dict keys sorted), the order the
tracer flattens outputs in.
"""

from __future__ import annotations


def structure_of(nested) -> object:
    """The template of `nested` (lists, tuples and dicts of anything else: the
    leaves), its leaves numbered in flattening order; None when that is the flat form
    (see the module docstring), so programs that need no nesting keep none."""
    counter = iter(range(1 << 62))

    def template(value):
        if isinstance(value, dict):
            return {key: template(value[key]) for key in sorted(value)}
        if isinstance(value, tuple):     # a subclass (a named tuple) as a plain one
            return tuple(template(item) for item in value)
        if isinstance(value, list):      # ... and a tracking wrapper as a list
            return [template(item) for item in value]
        return next(counter)

    built = template(nested)
    count = next(counter)
    flat = list(range(count))
    if built == flat or (count == 1 and built in (0, [0])):
        return None
    return built


def leaf_count(structure) -> int:
    """The number of leaves of a template."""
    if isinstance(structure, dict):
        return sum(leaf_count(item) for item in structure.values())
    if isinstance(structure, (list, tuple)):
        return sum(leaf_count(item) for item in structure)
    return 1


def check_structure(structure, outputs: int) -> None:
    """ValueError unless `structure` is None or a template whose leaves are 0 ..
    outputs - 1, each once."""
    if structure is None:
        return
    leaves = []

    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValueError(f"An output structure's dict keys are strings. "
                                     f"Received the key {key!r}.")
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, int) and not isinstance(value, bool):
            leaves.append(value)
        else:
            raise ValueError(f"An output structure holds lists, tuples, dicts and output "
                             f"positions. Received {value!r}.")
    walk(structure)
    if sorted(leaves) != list(range(outputs)):
        raise ValueError(f"An output structure must name each of the program's {outputs} "
                         f"outputs once. Received {structure!r}.")


def nest_outputs(flat, structure):
    """The call's result: `flat` (a sequence of arrays) nested by `structure`."""
    flat = list(flat)
    if structure is None:
        return flat[0] if len(flat) == 1 else flat

    def build(value):
        if isinstance(value, dict):
            return {key: build(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(build(item) for item in value)
        return flat[value]
    return build(structure)


def flatten_outputs(nested, structure) -> list:
    """`nest_outputs`'s inverse: the flat list of a call's result."""
    if structure is None:
        return list(nested) if isinstance(nested, list) else [nested]
    flat = [None] * leaf_count(structure)

    def walk(template, value):
        if isinstance(template, dict):
            for key, item in template.items():
                walk(item, value[key])
        elif isinstance(template, (list, tuple)):
            for item, part in zip(template, value):
                walk(item, part)
        else:
            flat[template] = value
    walk(structure, nested)
    return flat


def encode_structure(structure):
    """A JSON form of a template: positions stay ints, containers become
    {"list": [...]}, {"tuple": [...]} or {"dict": [[key, ...], ...]}."""
    if isinstance(structure, dict):
        return {"dict": [[key, encode_structure(item)] for key, item in structure.items()]}
    if isinstance(structure, tuple):
        return {"tuple": [encode_structure(item) for item in structure]}
    if isinstance(structure, list):
        return {"list": [encode_structure(item) for item in structure]}
    return structure


def decode_structure(encoded):
    """`encode_structure`'s inverse (ValueError for anything else)."""
    if isinstance(encoded, dict) and len(encoded) == 1:
        (kind, items), = encoded.items()
        if kind == "dict" and isinstance(items, list):
            return {str(key): decode_structure(item) for key, item in items}
        if kind in ("list", "tuple") and isinstance(items, list):
            decoded = [decode_structure(item) for item in items]
            return decoded if kind == "list" else tuple(decoded)
    if isinstance(encoded, int) and not isinstance(encoded, bool):
        return encoded
    raise ValueError(f"Not an encoded output structure: {encoded!r}.")


def format_structure(structure, names) -> str:
    """The template written with `names[position]` for its leaves: `(a, [b, c])`."""
    def text(value):
        if isinstance(value, dict):
            return "{" + ", ".join(f"{key!r}: {text(item)}" for key, item in value.items()) + "}"
        if isinstance(value, tuple):
            inner = ", ".join(text(item) for item in value)
            return f"({inner},)" if len(value) == 1 else f"({inner})"
        if isinstance(value, list):
            return "[" + ", ".join(text(item) for item in value) + "]"
        return names[value]
    return text(structure)
