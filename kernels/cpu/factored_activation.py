"""Additive attention's `tanh(keys + query)` (or `sigmoid`) with the keys' half of it
computed once a call.

In a scan body, `tanh(K + Q)` where K is a constant of the scan (the attention's keys,
(B, R, n)) and Q changes every step but has fewer elements (the query broadcast over
the R memory rows, (B, 1, n)) costs a tanh per element per step: 4096 per step for the
benchmark's attention decoder at S2. Since tanh(z) = 1 - 2 / (exp(2z) + 1) and
exp(2(k + q)) = exp(2k) exp(2q), the kernel computes E = exp(2K) once a call (in the
scan's preamble), exp(2Q) once a step (n values, not R x n), and each element as
`1 - 2 / (E * exp(2q) + 1)`: a multiply, an add, a division and a multiply-add where the
rational tanh takes ~13 vector operations (mathlib.tanh_f32). A gated attention's
`sigmoid(K + Q)` = 1 / (1 + exp(-k) exp(-q)) takes E = exp(-K) the same way
(`SCALES`: the factor of each activation's exponentials).

Exact where it applies: with every |k| at most `LIMIT`, exp(2k) and exp(-k) are normal
float32 values. A query beyond it needs no other loop: tanh takes exp(2q) as two
factors, exp(2 q_near) exp(2 (q - q_near)) with q_near = q clamped to +-LIMIT (the
second is exactly 1 while |q| <= LIMIT), multiplied into exp(2k) one after the other;
whenever a product overflows to inf or underflows to 0, k + q is beyond +-43 and tanh's
float32 value is 1 or -1, which the formula then gives (NaN and +-inf too). Sigmoid's
product is inf or 0 only when k + q is beyond +-47, where sigmoid is 1, or 0 within
3e-21. So the choice depends on the keys only: a call where some k is
too far (or NaN) runs the usual loop, which the kernel also holds, decided alike by
every member of a team (each computes the flag over all the keys), and a team gives
one thread's numbers bit for bit. The result differs from tanh_f32's / sigmoid_f32's
by at most ~3e-7 absolute (roundings of exp and the products, scaled by the
activation's slope, plus the formula's own), against a contract of 1e-4; float32 only.

Measured (the attention decoder at S2 on a team of two, the team kernel's source
edited by hand to this shape, in-process A/B, 16 alternated rounds of 40 calls, on
the 2-core Zen 4 VM): 658.6 -> 594.3 us a call (-9.8%) and 655.8 -> 576.3 (-12.1%),
faster in 16 of 16 rounds each time.
"""

from __future__ import annotations

from dataclasses import dataclass

from rshop_ir.ir import Var
from rshop_ir.passes.rewrite import count_uses

LIMIT = 40.0     # |k| up to this: exp(2k), exp(-k) are normal float32 values
# the factor in the exponentials of each activation taken factored: exp(scale k)
SCALES = {"tanh": 2.0, "sigmoid": -1.0}
# the kernel's names of the exponentials' arrays (exp_twice: exp(2k); exp_negated: exp(-k))
EXPONENTIAL_NAMES = {"tanh": "exp_twice", "sigmoid": "exp_negated"}


@dataclass(frozen=True)
class FactoredActivation:
    """A tanh or sigmoid of a sum in a fused eqn of an element-wise run of a scan body.

    Attributes:
        eqn: the fused eqn; result: the activation's output inside its body;
        constant: the scan constant K (the run's shape); step: the per-step Q (fewer
        elements, broadcast to the run's shape); activation: "tanh" or "sigmoid".
    """

    eqn: object
    result: Var
    constant: Var
    step: Var
    activation: str

    @property
    def scale(self) -> float:
        return SCALES[self.activation]


def find_factored_activation(run, made, constants, shape):
    """The first `FactoredActivation` of the element-wise `run` (eqns of output `shape`;
    `made`: their outputs; `constants`: the scan's constants), or None. Only fused
    eqns are searched (the fusion pass fuses an add and the activation reading it)."""
    for eqn in run:
        if eqn.op != "fused" or eqn.outputs[0].dtype != "float32":
            continue
        body = eqn.params["body"]
        outer = dict(zip(body.inputs, eqn.inputs))
        uses = count_uses(body)
        producers = {inner.outputs[0]: inner for inner in body.eqns if inner.outputs}
        for inner in body.eqns:
            total = inner.inputs[0] if inner.op in SCALES else None
            add = producers.get(total)
            if add is None or add.op != "add" or uses[total] != 1:
                continue
            for first, second in (add.inputs, reversed(add.inputs)):
                constant, step = outer.get(first), outer.get(second)
                if _applies(constant, step, made, constants, shape):
                    return FactoredActivation(eqn, inner.outputs[0], constant, step,
                                              inner.op)
    return None


def _applies(constant, step, made, constants, shape) -> bool:
    if not (isinstance(constant, Var) and isinstance(step, Var)):
        return False
    if constant not in constants or constant.shape != tuple(shape) \
            or constant.dtype != "float32":
        return False
    if step in made or step in constants or step.dtype != "float32" \
            or step.ndim != len(shape):
        return False
    pairs = list(zip(step.shape, shape))
    return all(dim == out or dim == 1 for dim, out in pairs) \
        and any(dim == 1 and out != 1 for dim, out in pairs)


def constant_exponentials_source(constant: str, ndim: int, exponentials: str, far: str,
                                 names, scale: float) -> list:
    """Lines computing `exponentials` = exp(scale * constant) (an array of its shape)
    and `far` = whether some element is beyond LIMIT or NaN (once a call)."""
    indices = [names.fresh("a") for _ in range(ndim)]
    value = names.fresh("k")
    lines = [f"{exponentials} = new_array({constant}.shape, np.float32)", f"{far} = False"]
    for depth, index in enumerate(indices):
        lines.append("    " * depth + f"for {index} in range({constant}.shape[{depth}]):")
    inner = "    " * ndim
    element = f"[{', '.join(indices)}]"
    lines += [inner + f"{value} = {constant}{element}",
              inner + f"if not (abs({value}) <= np.float32({LIMIT})):",
              inner + f"    {far} = True",
              inner + f"{exponentials}{element} = exp_f32(np.float32({scale}) * {value})"]
    return lines


def step_exponential_lines(activation: str, value: str, targets, names) -> list:
    """Lines (inside the loop over the step's Q) storing the exponentials of the
    element `value` into `targets`: for tanh exp(2 q_near) and exp(2 (q - q_near)),
    q_near = q clamped to +-LIMIT; for sigmoid exp(-q)."""
    if activation == "sigmoid":
        return [f"{targets[0]} = exp_f32(np.float32(-1.0) * {value})"]
    near = names.fresh("near")
    return [f"{near} = {value} if abs({value}) <= np.float32({LIMIT}) else "
            f"(np.float32({LIMIT}) if {value} > 0 else np.float32({-LIMIT}))",
            f"{targets[0]} = exp_f32(np.float32(2.0) * {near})",
            f"{targets[1]} = exp_f32(np.float32(2.0) * ({value} - {near}))"]


def step_exponential_count(activation: str) -> int:
    """How many arrays of exponentials of the step value `step_exponential_lines`
    fills."""
    return 2 if activation == "tanh" else 1


def factored_expression(activation: str, constant_exponential: str,
                        step_exponentials) -> str:
    """tanh(k + q) from exp(2k) and the two factors of exp(2q), or sigmoid(k + q) from
    exp(-k) and exp(-q) (`step_exponentials`: the elements `step_exponential_lines`
    stored)."""
    if activation == "tanh":
        near, rest = step_exponentials
        return (f"np.float32(1.0) - np.float32(2.0) / ({constant_exponential} * {near} * "
                f"{rest} + np.float32(1.0))")
    return f"np.float32(1.0) / (np.float32(1.0) + {constant_exponential} * " \
        f"{step_exponentials[0]})"
