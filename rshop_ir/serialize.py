"""Saving and loading programs with their weights: readable JSON plus a `.npz`.

`save(bound_program, path)` writes the directory `path/`:
    program.json   {"format": "rshop_ir.program", "version": 1, "ir_text": [...],
                    "weights": {param name: npz key}, "program": {...}}
    weights.npz    one array per param (keys "w0", "w1", ...)
`load(path)` returns a `BoundProgram`, callable with numpy alone. Loading never runs code
from the files (plain JSON, `np.load(allow_pickle=False)`). A file written by a newer
format version, or a corrupted or truncated one, raises `IRFormatError` (a ValueError).

In "program", a Var is written in full where it is defined ({"id", "dtype", "shape"})
and as {"var": id} where it is used; a Literal as {"literal": value, "dtype"}; nested
programs (scan/fused bodies) as {"program": {...}}; nan/inf as {"float": "nan"}.
Anything with a `to_bound_program()` method (e.g. a compiled model) can be saved too.
"""

from __future__ import annotations

import json
import math
import os
import zipfile

import numpy as np

from rshop_ir.bound import BoundProgram
from rshop_ir.errors import IRFormatError, IRVerificationError
from rshop_ir.ir import Eqn, Literal, Program, Var
from rshop_ir.output_structure import decode_structure, encode_structure
from rshop_ir.verify import verify

FORMAT_NAME = "rshop_ir.program"
FORMAT_VERSION = 1
PROGRAM_FILE = "program.json"
WEIGHTS_FILE = "weights.npz"


def save(program, path, weights=None) -> str:
    """Write a BoundProgram (or a Program plus `weights`) to the directory `path`."""
    if hasattr(program, "to_bound_program"):
        program = program.to_bound_program()
    if isinstance(program, Program):
        program = BoundProgram(program, weights if weights is not None else {})
    if not isinstance(program, BoundProgram):
        raise TypeError(f"save() takes a BoundProgram, or a Program with weights=. "
                        f"Received {type(program).__name__}.")
    verify(program.program)
    keys = {name: f"w{index}" for index, name in enumerate(program.program.param_names)}
    document = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "ir_text": str(program.program).split("\n"),
        "weights": keys,
        "program": _Encoder().program(program.program),
    }
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, PROGRAM_FILE), "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1, allow_nan=False)
        handle.write("\n")
    arrays = {keys[name]: np.asarray(value) for name, value in program.weights.items()}
    np.savez(os.path.join(path, WEIGHTS_FILE), **arrays)
    return str(path)


def load(path) -> BoundProgram:
    """Read what `save` wrote; returns a BoundProgram."""
    program_path = os.path.join(path, PROGRAM_FILE)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No saved rshop_ir program at {path!r} (expected a "
                                f"directory holding {PROGRAM_FILE} and {WEIGHTS_FILE}).")
    try:
        with open(program_path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IRFormatError(f"{program_path} is missing, corrupted or truncated: "
                            f"{error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise IRFormatError(f"{program_path} is not an rshop_ir program file.")
    version = document.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise IRFormatError(f"{program_path} has format version {version!r}; this rshop_ir "
                            f"reads versions 1..{FORMAT_VERSION}. Upgrade rshop_ir to load it.")
    try:
        program = _Decoder().program(document["program"])
        keys = dict(document["weights"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise IRFormatError(f"{program_path} is corrupted: cannot decode the program "
                            f"({type(error).__name__}: {error}).") from None
    try:
        verify(program)
    except IRVerificationError as error:
        raise IRFormatError(f"{program_path} holds an invalid program: {error}") from None
    weights = _load_weights(os.path.join(path, WEIGHTS_FILE), keys, program)
    return BoundProgram(program, weights)


def _load_weights(weights_path: str, keys: dict, program: Program) -> dict:
    try:
        with np.load(weights_path, allow_pickle=False) as archive:
            weights = {name: archive[keys[name]] for name in program.param_names}
    except KeyError as error:
        raise IRFormatError(f"{weights_path} lacks the weight {error}.") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise IRFormatError(f"{weights_path} is missing, corrupted or truncated: "
                            f"{error}") from None
    return weights


def _encode_float(value):
    return value if math.isfinite(value) else {"float": repr(value)}


def _decode_float(value):
    if isinstance(value, dict):
        return float(value["float"])
    return value


class _Encoder:
    def __init__(self):
        self.ids = {}

    def define(self, var: Var) -> dict:
        if var in self.ids:
            return {"var": self.ids[var]}
        self.ids[var] = len(self.ids)
        return {"id": self.ids[var], "dtype": var.dtype, "shape": list(var.shape)}

    def atom(self, atom) -> dict:
        if isinstance(atom, Literal):
            value = _encode_float(atom.value) if isinstance(atom.value, float) else atom.value
            return {"literal": value, "dtype": atom.dtype}
        return {"var": self.ids[atom]}

    def param(self, value):
        if isinstance(value, Program):
            return {"program": self.program(value)}
        if isinstance(value, tuple):
            return [self.param(item) for item in value]
        if isinstance(value, float):
            return _encode_float(value)
        return value

    def program(self, program: Program) -> dict:
        encoded = {
            "params": [{"name": name, "var": self.define(var)} for name, var in program.params],
            "inputs": [self.define(var) for var in program.inputs],
            "input_names": list(program.input_names),
            "input_defaults": [None if value is None else self.param(value)
                               for value in program.input_defaults],
        }
        encoded["prologue"] = (self.program(program.prologue)
                               if program.prologue is not None else None)
        encoded["eqns"] = [{
            "op": eqn.op,
            "inputs": [self.atom(atom) for atom in eqn.inputs],
            "params": {key: self.param(value) for key, value in eqn.params.items()},
            "outputs": [self.define(var) for var in eqn.outputs],
        } for eqn in program.eqns]
        encoded["outputs"] = [self.atom(atom) for atom in program.outputs]
        if program.output_structure is not None:
            encoded["output_structure"] = encode_structure(program.output_structure)
        return encoded


class _Decoder:
    def __init__(self):
        self.vars = {}

    def define(self, entry: dict) -> Var:
        if "var" in entry:
            return self.vars[entry["var"]]
        if entry["id"] in self.vars:
            raise ValueError(f"Var id {entry['id']} is defined twice.")
        var = Var(entry["dtype"], tuple(entry["shape"]))
        self.vars[entry["id"]] = var
        return var

    def atom(self, entry: dict):
        if "literal" in entry:
            return Literal(_decode_float(entry["literal"]), entry["dtype"])
        return self.vars[entry["var"]]

    def param(self, value):
        if isinstance(value, dict):
            if "program" in value:
                return self.program(value["program"])
            return _decode_float(value)
        if isinstance(value, list):
            return tuple(self.param(item) for item in value)
        return value

    def program(self, entry: dict) -> Program:
        params = [(item["name"], self.define(item["var"])) for item in entry["params"]]
        inputs = [self.define(item) for item in entry["inputs"]]
        prologue = self.program(entry["prologue"]) if entry["prologue"] is not None else None
        eqns = []
        for item in entry["eqns"]:
            eqn_inputs = [self.atom(atom) for atom in item["inputs"]]
            eqn_params = {key: self.param(value) for key, value in item["params"].items()}
            outputs = [self.define(var) for var in item["outputs"]]
            eqns.append(Eqn(str(item["op"]), eqn_inputs, outputs, eqn_params))
        outputs = [self.atom(atom) for atom in entry["outputs"]]
        defaults = [None if value is None else self.param(value)
                    for value in entry.get("input_defaults", [])]
        structure = entry.get("output_structure")
        return Program(inputs=inputs, params=params, eqns=eqns, outputs=outputs,
                       prologue=prologue, input_names=entry["input_names"],
                       input_defaults=defaults,
                       output_structure=None if structure is None
                       else decode_structure(structure))
