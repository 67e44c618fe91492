"""Slice sinking: an element-wise eqn read only through disjoint slices is computed
per slice.

A merged gate matmul (merge_gemms.py, or a cell written as one `4H` product) is added
to the projected input and the bias at full width, and only then cut into its gates:

    u:f32[B,8] = add x h                      a1:f32[B,4] = slice x [axis=1, start=0, stop=4]
    v:f32[B,8] = bias_add u b                 b1:f32[B,4] = slice h [axis=1, start=0, stop=4]
    i:f32[B,4] = slice v [axis=1, 0:4]        u1:f32[B,4] = add a1 b1
    f:f32[B,4] = slice v [axis=1, 4:8]        c1:f32[4] = slice b [axis=0, start=0, stop=4]
                                              i:f32[B,4] = bias_add u1 c1
                                              ... (the same for f)

Each gate then reads its slices of the operands (a view, no copy, in the code
generators), so element-wise fusion puts the adds into the gate's own loop: one pass
over memory less per step, and no full-width buffer. The eqn moves only when every
reader of its output is a slice along one axis, the slices are pairwise disjoint (no
element is computed twice) and the output is not a program output; a cascade (the
`add` above, read only by the `bias_add`) moves in the same pass, since eqns are
visited last to first. Each element is computed by the same op on the same operand
elements, so the numbers do not change.
"""

from __future__ import annotations


from rshop_ir.ir import Literal, Program, Var
from rshop_ir.ops import get_op
from rshop_ir.passes.rewrite import make_eqn, map_bodies, reader_positions
from rshop_ir.shapes import is_symbolic, normalize_axis


def sink_slices(program: Program) -> Program:
    program = map_bodies(program, sink_slices, skip_ops=("fused",))
    eqns = list(program.eqns)
    outputs = {atom for atom in program.outputs if isinstance(atom, Var)}
    changed = False
    readers = reader_positions(eqns)
    position = len(eqns) - 1
    while position >= 0:
        eqn = eqns[position]
        cuts = _slices_to_sink(eqn, readers, eqns, outputs)
        if cuts is not None:
            params = {key: eqn.params[key] for key in eqn.params}
            replacement = []
            for reader_position, axis, start, stop in cuts:
                sliced_inputs = []
                for atom in eqn.inputs:
                    operand, cut = _operand_slice(atom, eqn.outputs[0], axis, start, stop)
                    if cut is not None:
                        replacement.append(cut)
                    sliced_inputs.append(operand)
                computed = make_eqn(eqn.op, sliced_inputs, **params)
                # the slice's own output Var takes the per-slice value: readers unchanged
                replacement.append(computed.replace(outputs=eqns[reader_position].outputs))
            # The per-slice eqns go where the eqn was (its operands are defined by then);
            # the slices it replaces all come after it.
            dropped = {reader_position for reader_position, *_ in cuts}
            eqns = eqns[:position] + replacement + [
                e for p, e in enumerate(eqns[position + 1:], position + 1) if p not in dropped]
            readers = reader_positions(eqns)
            changed = True
        # the operands' producers are earlier: keep walking back from here
        position -= 1
    return program.replace(eqns=eqns) if changed else program


def _slices_to_sink(eqn, readers, eqns, outputs):
    """[(reader position, axis, start, stop)] when `eqn` may be computed per slice of
    its output, else None."""
    if len(eqn.outputs) != 1 or eqn.nested_programs() or not get_op(eqn.op).elementwise:
        return None
    out = eqn.outputs[0]
    if out in outputs or not readers.get(out):
        return None
    cuts, axes = [], set()
    for position in readers[out]:
        reader = eqns[position]
        if reader.op != "slice":
            return None
        axis = normalize_axis(reader.params["axis"], out.ndim)
        dim = out.shape[axis]
        if is_symbolic(dim):
            return None
        start, stop, _ = slice(reader.params["start"], reader.params["stop"]).indices(dim)
        if stop <= start:      # an empty slice: nothing to compute per slice
            return None
        cuts.append((position, axis, start, stop))
        axes.add(axis)
    if len(axes) != 1:
        return None
    ranges = sorted((start, stop) for _, _, start, stop in cuts)
    if any(stop > next_start for (_, stop), (next_start, _) in zip(ranges, ranges[1:])):
        return None          # overlapping slices would compute elements twice
    axis = axes.pop()
    if not all(_sliceable(atom, out, axis) for atom in eqn.inputs if isinstance(atom, Var)):
        return None
    return cuts


def _sliceable(atom: Var, out: Var, axis: int) -> bool:
    """The operand broadcasts along `axis` (absent or of size 1 there) or has the
    output's static size along it."""
    operand_axis = axis - (out.ndim - atom.ndim)
    if operand_axis < 0:
        return True
    dim = atom.shape[operand_axis]
    return dim == 1 or dim == out.shape[axis]


def _operand_slice(atom, out: Var, axis: int, start: int, stop: int):
    """(the operand of the per-slice eqn, the slice eqn making it or None)."""
    if isinstance(atom, Literal):
        return atom, None
    operand_axis = axis - (out.ndim - atom.ndim)
    if operand_axis < 0 or atom.shape[operand_axis] == 1:
        return atom, None
    cut = make_eqn("slice", [atom], axis=operand_axis, start=start, stop=stop)
    return cut.outputs[0], cut
