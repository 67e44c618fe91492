"""Kernel planning shared by every renderer (Numba CPU now, CUDA later).

From an OPTIMISED program (passes/pipeline.py) this decides, without writing any code:

* which top-level eqns each scan absorbs: the hoisted input projection
  `p = matmul x W` (x of shape (B, T, I), W a 2-D weight) and the element-wise eqns
  that follow it over the whole sequence (e.g. `bias_add p b`; with `row_norms`, a
  layer norm over the last axis too), when the scan is their only reader. A kernel computes them chunk by chunk inside its time loop, so the
  projection of a 100k-step sequence is never held at once (`ScanPlan.projections`);
* with `epilogues`, the top-level eqns reading a scan's output sequence as
  `chain(y @ W)` (an output layer after the loop, passes/sink_output_projection.py):
  a kernel computes them after each chunk's steps from that chunk's rows of y, so the
  sequence of y is never held whole either (`ScanPlan.epilogue`);
* how the scan's inputs split into sequences, states, readout, constants and mask
  (`ScanPlan.groups`, `ScanPlan.body_groups`);
* how a body value is stored (`body_storage`): a per-step buffer, a view of a slice
  along the last axis of another value (no copy), or a per-step array;
* broadcasting of operands inside an element-wise loop nest (`broadcast_index`), and
  the scalar statements of a fused region from the one op -> scalar-expression table
  (`scalar_statements`, reading kernels/scalar_ops.py).

    plan = plan_program(optimized)     # ProgramPlan: top-level steps, scans absorbed
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rshop_ir.errors import UnsupportedError
from rshop_ir.ir import HALF_PRECISION, Literal, Program, Var
from rshop_ir.ops import ScanLayout, get_op, is_row_norm
from rshop_ir.kernels.scalar_ops import scalar_expression
from rshop_ir.passes.rewrite import count_uses, fresh_var


@dataclass
class Projection:
    """A scan sequence computed in chunks inside the kernel: `chain(source @ weight)`.

    source: the (B, T, I) value the GEMM reads; weight: the (I, N) matrix; chain: the
    element-wise eqns (and layer norms over the last axis, where the renderer asked for
    them) applied after it, each reading the previous result once, other operands
    weight-like: no symbolic dims; output: the Var the scan reads.
    """

    source: Var
    weight: Var
    matmul: object
    chain: list
    output: Var


@dataclass
class Epilogue:
    """The eqns after a scan computed chunk by chunk inside its kernel:
    `chain(y @ weight)`, y the scan's output sequence (B, T, H).

    weight: the (H, N) matrix; chain: element-wise eqns applied after the GEMM, each
    reading the previous result once, other operands literals or 1-D weights; output:
    the Var the program reads afterwards, (B, T, N).
    """

    weight: Var
    matmul: object
    chain: list
    output: Var


@dataclass
class ScanPlan:
    eqn: object
    layout: ScanLayout
    groups: dict            # outer inputs by group ("sequences", "states", ...)
    body_groups: dict       # body inputs by group
    projections: dict = field(default_factory=dict)   # sequence index -> Projection
    epilogue: Epilogue = None

    @property
    def params(self):
        return self.eqn.params

    @property
    def body(self) -> Program:
        return self.eqn.params["body"]


@dataclass
class ProgramPlan:
    program: Program
    steps: list             # ("eqn", eqn) or ("scan", ScanPlan), in execution order


def plan_program(program: Program, row_norms: bool = False,
                 epilogues: bool = False) -> ProgramPlan:
    """`row_norms`: a projection's chain may hold layer norms over the last axis
    (`rshop_ir.ops.is_row_norm`), for a renderer that computes them row by row in its chunks.
    `epilogues`: a top-level scan absorbs the output layer after it (`Epilogue`)."""
    refuse_half_precision(program)
    uses = count_uses(program)
    producers = {var: eqn for eqn in program.eqns for var in eqn.outputs}
    readers = {}
    for eqn in program.eqns:
        for atom in eqn.inputs:
            if isinstance(atom, Var):
                readers.setdefault(atom, []).append(eqn)
    absorbed = set()
    scans = {}
    for eqn in program.eqns:
        if eqn.op == "scan":
            plan = plan_scan(eqn)
            for index, sequence in enumerate(plan.groups["sequences"]):
                projection = _projection(sequence, producers, uses, row_norms)
                if projection is not None and id(projection.matmul) not in absorbed:
                    plan.projections[index] = projection
                    absorbed.update(id(member) for member in
                                    [projection.matmul, *projection.chain])
            scans[id(eqn)] = plan
    for plan in scans.values() if epilogues else ():
        # after the projections: a scan's output projected for the next scan stays that
        # scan's chunked projection (an epilogue would hold it whole)
        epilogue = _epilogue(plan.eqn, readers, uses, program.outputs)
        if epilogue is not None and id(epilogue.matmul) not in absorbed:
            plan.epilogue = epilogue
            absorbed.update(id(member) for member in [epilogue.matmul, *epilogue.chain])
    steps = []
    for eqn in program.eqns:
        if id(eqn) in absorbed:
            continue
        steps.append(("scan", scans[id(eqn)]) if eqn.op == "scan" else ("eqn", eqn))
    return ProgramPlan(program, steps)


def refuse_half_precision(program: Program) -> None:
    """Raise `UnsupportedError` where `program` (its bodies and prologue included) holds
    a 16-bit float value: the kernels compute in float32 and float64 only, and a float32
    result is not the number a float16 computation gives."""
    values = [*program.inputs, *(var for _, var in program.params)]
    for eqn in program.eqns:
        values.extend(eqn.outputs)
        for body in eqn.nested_programs():
            refuse_half_precision(body)
    if program.prologue is not None:
        refuse_half_precision(program.prologue)
    for value in values:
        if isinstance(value, Var) and value.dtype in HALF_PRECISION:
            raise UnsupportedError(
                f"The program computes on {value.dtype} values ({value}); the kernels "
                "compute in float32 or float64 only. Cast to float32 before the "
                "compiled part, or build the layers with dtype='float32'.")


def plan_scan(eqn) -> ScanPlan:
    layout = ScanLayout.from_params(eqn.params)
    body = eqn.params["body"]
    y = body.outputs[0]
    if not (isinstance(y, Var) and y.ndim >= 1 and y.shape[0] == "B"):
        raise UnsupportedError(
            f"A scan whose step output is {getattr(y, 'type', y)}: the kernels keep the "
            "outputs per batch row (a first axis 'B').")
    return ScanPlan(eqn, layout, layout.split(eqn.inputs), layout.split(body.inputs))


def _weight_like(atom) -> bool:
    return isinstance(atom, Literal) or not any(isinstance(d, str) for d in atom.shape)


def _projection(sequence, producers, uses, row_norms: bool):
    """The absorbable `chain(matmul(x, W))` producing `sequence`, or None."""
    chain = []
    value = sequence
    while True:
        if not isinstance(value, Var) or uses[value] != 1 or value not in producers:
            return None
        eqn = producers[value]
        if len(eqn.outputs) != 1:
            return None
        if eqn.op == "matmul":
            source, weight = eqn.inputs
            # the time axis may be "T" or a length fixed by the model's input shape
            if (isinstance(source, Var) and source.ndim == 3 and source.shape[0] == "B"
                    and _weight_like(weight) and isinstance(weight, Var) and weight.ndim == 2
                    and source.dtype == weight.dtype == value.dtype
                    and value.dtype in ("float32", "float64")):
                return Projection(source, weight, eqn, list(reversed(chain)), sequence)
            return None
        if not (is_elementwise(eqn) or (row_norms and is_row_norm(eqn))):
            return None
        previous = [atom for atom in eqn.inputs if not _weight_like(atom)]
        if len(previous) != 1 or previous[0].shape != value.shape \
                or previous[0].dtype != value.dtype:
            return None
        if any(not _weight_like(atom) for atom in eqn.inputs if atom is not previous[0]):
            return None
        chain.append(eqn)
        value = previous[0]


def _epilogue(eqn, readers, uses, program_outputs):
    """The absorbable `chain(y @ W)` reading the scan's output sequence y, or None."""
    y = eqn.outputs[0]
    if not eqn.params["return_sequences"] or y.ndim != 3 or uses[y] != 1 \
            or len(readers.get(y, [])) != 1:
        return None
    matmul = readers[y][0]
    if matmul.op != "matmul" or matmul.inputs[0] is not y:
        return None
    weight = matmul.inputs[1]
    value = matmul.outputs[0]
    if not (isinstance(weight, Var) and weight.ndim == 2 and _weight_like(weight)
            and y.dtype == weight.dtype == value.dtype
            and value.dtype in ("float32", "float64")):
        return None
    chain = []
    outputs = {atom for atom in program_outputs if isinstance(atom, Var)}
    while uses[value] == 1 and value not in outputs and len(readers.get(value, [])) == 1:
        follower = readers[value][0]
        if not is_elementwise(follower) or len(follower.outputs) != 1 \
                or follower.outputs[0].shape != value.shape \
                or follower.outputs[0].dtype != value.dtype:
            break
        others = [atom for atom in follower.inputs if atom is not value]
        if len(others) != len(follower.inputs) - 1 or not all(
                isinstance(atom, Literal)
                or (_weight_like(atom) and atom.ndim <= 1) for atom in others):
            break
        chain.append(follower)
        value = follower.outputs[0]
    return Epilogue(weight, matmul, chain, value)


# ---- element-wise loop nests ---------------------------------------------------------

def broadcast_index(operand_shape, output_shape, indices) -> list:
    """The index expressions reading an operand of `operand_shape` inside a loop nest
    over `output_shape` (numpy broadcasting: leading dims dropped, size-1 dims read at 0)."""
    offset = len(output_shape) - len(operand_shape)
    result = []
    for position, dim in enumerate(operand_shape):
        out_dim = output_shape[position + offset]
        result.append("0" if dim == 1 and out_dim != 1 else indices[position + offset])
    return result


def scalar_statements(body: Program, input_exprs, ctx, fresh_name, overrides=None) -> tuple:
    """Render a fused body (or one element-wise eqn wrapped as a body) as scalar
    statements: returns ([(name, expression)], [output expression per body output]).
    `input_exprs[i]` is the scalar expression of body input i at the current element;
    `overrides` maps a body eqn's output to the expression computing it instead."""
    values = dict(zip(body.inputs, input_exprs))
    statements = []
    overrides = overrides or {}

    def read(atom):
        if isinstance(atom, Literal):
            return ctx.const(atom.value, atom.dtype)
        return values[atom]

    for eqn in body.eqns:
        expression = overrides.get(eqn.outputs[0]) if eqn.outputs else None
        if expression is None:
            expression = scalar_expression(eqn.op, [read(atom) for atom in eqn.inputs],
                                           eqn.params, ctx, eqn.outputs[0].dtype)
            expression = _in_declared_type(eqn, expression)
        name = fresh_name("e")
        statements.append((name, expression))
        values[eqn.outputs[0]] = name
    return statements, [read(atom) for atom in body.outputs]


_ARITHMETIC = frozenset({"add", "sub", "mul", "neg", "abs", "square", "pow", "maximum",
                         "minimum", "floor_divide", "mod", "sign"})


def _in_declared_type(eqn, expression: str) -> str:
    """`expression` as the eqn's declared integer or bool type, where Numba's scalar
    arithmetic widens it: int32 * int32 is an int64 in Numba (numpy wraps to int32),
    and bool + bool an int (numpy: the logical or)."""
    dtype = eqn.outputs[0].dtype
    if eqn.op not in _ARITHMETIC:
        return expression
    if dtype == "bool":
        return f"(({expression}) != 0)"
    if dtype.startswith(("int", "uint")):
        return f"np.{dtype}({expression})"
    return expression


def elementwise_as_body(eqn) -> Program:
    """A lone element-wise eqn as a one-eqn body, so it renders like a fused region."""
    if eqn.op == "fused":
        return eqn.params["body"]
    inputs = [fresh_var(atom) for atom in eqn.inputs if isinstance(atom, Var)]
    mapping = dict(zip([a for a in eqn.inputs if isinstance(a, Var)], inputs))
    new_inputs = [mapping.get(atom, atom) if isinstance(atom, Var) else atom
                  for atom in eqn.inputs]
    outputs = [fresh_var(var) for var in eqn.outputs]
    inner = eqn.replace(inputs=new_inputs, outputs=outputs)
    return Program(inputs=inputs, eqns=[inner], outputs=outputs)


def elementwise_operands(eqn) -> list:
    """The outer operands matching `elementwise_as_body(eqn).inputs`."""
    if eqn.op == "fused":
        return list(eqn.inputs)
    return [atom for atom in eqn.inputs if isinstance(atom, Var)]


def is_elementwise(eqn) -> bool:
    return eqn.op == "fused" or get_op(eqn.op).elementwise

