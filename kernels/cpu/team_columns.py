"""Team members that own columns: a team step's element-wise work split too.

In a team kernel (team.py) each member computes its blocks of columns of a split
matmul. Gathering every member's blocks right after the product and running the
element-wise loops whole on every member (the same numbers everywhere) costs each
member the whole step's gate math, and an exchange of the whole product. Instead a
member here keeps its own columns of the product and runs the element-wise loops over
those columns only:

  * the columns of an n-wide value (B, n): member m owns [m * w, min(n, (m + 1) * w))
    with w whole blocks of the packed weight (`BLOCK_COLUMNS`), the same split for
    every value of that width, so values of one width line up column by column;
  * a product read only through slices along its last axis (the LSTM's gates, the
    RWA's two halves) is split slice by slice: member m computes its columns of each
    slice (one packed product per slice), so it owns units [low, low + count) of
    every gate;
  * an element-wise loop whose owned operands all have its shape runs over the
    member's columns only (its other operands are whole on every member); its
    outputs are then owned;
  * a value is gathered (each member writes its columns to the exchange buffer, the
    barrier, each copies the others' columns) where something reads it whole: a
    matmul's operand, an op that is not element-wise, a loop of another shape, y (at
    the end of each step), a state that is read whole at the next step;
  * a state read only by element-wise loops of its own shape stays owned from step
    to step and is gathered once, after the last step;
  * additive attention's scores, `tanh(keys + q[:, None, :]) @ v` with q owned: the
    (B, 1, n) view of q stays owned (`own_view`), the (B, R, n) loop runs over the
    member's columns, and the one-column matmul sums its blocks of columns
    (block_dot.py): the members exchange the partial sums of their blocks
    (`exchange_partials`), B x R x blocks numbers instead of q. With one thread the
    same partials are added in the same block order (`block_dot_applies` is the rule
    both kernels follow). The attention decoder at S2 on a team of two: 0.41 -> 0.36
    ms a call (ad-hoc, one process), its redundant tanh of 16 x 256 a step halved.

  * a (B, n) einsum whose column label is in one operand only (the attention read
    `einsum(a, memory @ W)` that rshop_ir/passes/reassociate_products.py makes) is
    computed over the member's columns, its other operand read whole
    (`owned_einsum_applies`); it is then owned.
  * a member computes a product segment of the step's input (its state) only where
    something first reads it: one read late (the attention decoder's `h @ U`, read
    after the scores) runs between the member's arrival at the next exchange and its
    wait for the partners (`defer`, team_sync.team_arrive / team_await), so it
    overlaps the wait.
An owned loop's column index is `(own_low + jj) & INDEX_MASK`: Numba wraps negative
indices, and LLVM vectorises the loop only where it can tell the index is not
negative (ad-hoc on the development machine, the RWA at S2 on a team of two: 0.89 ms
a call with `own_low + jj`, 0.54 ms with the mask, 0.64 ms gathering whole products).
Every column is computed by the same operations in the same order as on one thread,
so a team's numbers stay those of one thread, bit for bit.
"""

from __future__ import annotations

from rshop_ir.ir import Var
from rshop_ir.kernels import lowering
from rshop_ir.kernels.cpu.packed_product import BLOCK_COLUMNS
from rshop_ir.kernels.cpu.source import smaller
from rshop_ir.shapes import normalize_axis

INDEX_MASK = "0x7FFFFFFF"    # column indices are below 2**31


def product_segments(product: Var, readers: list, block_columns: int):
    """How a split product's columns are owned: [(var, start, stop)] with one entry
    per slice reading it along its last axis (each starting on a block boundary), or
    [(product, 0, columns)] when no slice reads it; None when other ops read it too
    (it is then gathered whole right after the product)."""
    columns = product.shape[-1]
    if not readers:
        return None
    slices = [eqn for eqn in readers if eqn.op == "slice"]
    if not slices:
        return [(product, 0, columns)]
    if len(slices) != len(readers):
        return None
    segments = []
    for eqn in slices:
        axis = normalize_axis(eqn.params["axis"], product.ndim)
        if axis != product.ndim - 1 or eqn.outputs[0].ndim != 2:
            return None
        start, stop, step = slice(eqn.params["start"], eqn.params["stop"]).indices(columns)
        if step != 1 or stop <= start or start % block_columns:
            return None
        segments.append((eqn.outputs[0], start, stop))
    return segments


def block_dot_applies(eqn) -> bool:
    """Whether the kernels compute the matmul `eqn` by a one-column weight (K, 1) block
    by block (block_dot.py; codegen's `_one_column_matmul`): float operands of one
    dtype, K whole blocks of columns, static dims between the rows' first and last.
    The same rule in a team's kernel and one thread's keeps their sums equal."""
    if eqn.op != "matmul":
        return False
    a, b = eqn.inputs
    out = eqn.outputs[0]
    if not (isinstance(a, Var) and isinstance(b, Var)) or b.ndim != 2 or a.ndim < 2 \
            or b.shape[1] != 1 or not isinstance(b.shape[0], int) \
            or out.dtype not in BLOCK_COLUMNS or not a.dtype == b.dtype == out.dtype:
        return False
    return b.shape[0] % BLOCK_COLUMNS[out.dtype] == 0 and a.shape[-1] == b.shape[0] \
        and all(isinstance(dim, int) for dim in a.shape[1:-1])


def owned_einsum_applies(eqn) -> bool:
    """Whether a team member computes only its columns of the einsum `eqn`: a (B, n)
    result, n static, something contracted, and its column label in one operand only
    (so a column reads that operand's column and the other operand whole), as in
    `einsum(attention, memory @ W)` (rshop_ir/passes/reassociate_products.py)."""
    from rshop_ir.ops.linalg import parse_einsum

    input_labels, output_labels = parse_einsum(eqn.params["equation"])
    out = eqn.outputs[0]
    if out.ndim != 2 or not isinstance(out.shape[1], int):
        return False
    last = output_labels[-1]
    contracted = set("".join(input_labels)) - set(output_labels)
    return bool(contracted) and sum(labels.count(last) for labels in input_labels) == 1


def kept_states(body_program, state_vars, readers: dict) -> set:
    """The body's state inputs that may stay owned between steps: 2-D of a static
    width, read only by element-wise eqns of their own shape and not passed through
    as a body output unchanged. `readers`: Var -> the body eqns reading it."""
    kept = set()
    for var in state_vars:
        uses = readers.get(var, [])
        if var.ndim == 2 and isinstance(var.shape[1], int) and uses \
                and var not in body_program.outputs \
                and all(lowering.is_elementwise(eqn) and len(eqn.outputs) == 1
                        and eqn.outputs[0].shape == var.shape for eqn in uses):
            kept.add(var)
    return kept


class ColumnOwnership:
    """The owned values of one team scan function and the source that splits and
    gathers them (see the module docstring).

    Args:
        names: the function's Namespace.
        preamble: the SourceWriter run once before the steps (the partitions).
        block_columns: columns of one block of the packed weight.
        abort_return: the statement leaving the scan when the team aborts.
        dtype: the dtype of the split products and of the exchange buffer.
    """

    def __init__(self, names, preamble, block_columns: int, abort_return: str, dtype: str):
        self.names, self.preamble = names, preamble
        self.dtype = dtype
        self.block_columns = block_columns
        self.abort_return = abort_return
        self.owned = {}          # Var -> its element-store targets (ArrayValue / "y_all")
        self.partitions = {}     # width n -> (w, low, count) names
        self.done = set()        # ids of the slice eqns a split product wrote
        self.kept = set()        # state inputs owned between steps
        self.widest = 0          # the widest value gathered (sizes the exchange buffer)
        self.y_step = "step"     # the index of the step's row in y_all
        self.views = {}          # owned (B, 1, n) view Var -> the (B, n) Var it reshapes
        self.deferred = {}       # owned Var -> writes the code computing it (`defer`)

    def partition(self, columns: int) -> tuple:
        """(w, low, count): the names of this member's columns of a `columns`-wide
        value, defined once in the preamble (all columns on one thread)."""
        if columns not in self.partitions:
            width, low, count = (self.names.fresh(f"own_{hint}_{columns}")
                                 for hint in ("width", "low", "count"))
            block = self.block_columns
            self.preamble.line(f"{width} = (({columns} + {block - 1}) // {block} "
                               f"+ team_size - 1) // team_size * {block} "
                               f"if team_size > 1 else {columns}")
            self.preamble.line(f"{low} = {smaller(str(columns), f'team_rank * {width}')}")
            self.preamble.line(f"{count} = {smaller(str(columns), f'{low} + {width}')} - {low}")
            self.partitions[columns] = (width, low, count)
        return self.partitions[columns]

    def open_loop(self, writer, columns: int) -> tuple:
        """Open `for` over this member's columns; returns the names of the index among
        them (from 0) and of the column."""
        _, low, count = self.partition(columns)
        local, column = self.names.fresh("jj"), self.names.fresh("j")
        writer.line(f"for {local} in range({count}):")
        writer.depth += 1
        writer.line(f"{column} = ({low} + {local}) & {INDEX_MASK}")
        return local, column

    def own(self, var: Var, targets: list) -> None:
        self.owned[var] = list(targets)

    def _element(self, target, row: str, column: str) -> str:
        if target == "y_all":
            return f"y_all[{row}, {self.y_step}, {column}]"
        return target.element([row, column])

    def defer(self, var: Var, emit) -> None:
        """Write the code computing the owned `var` (`emit(writer)`) only where it is
        read (`flush`), or while the member waits at the next exchange: a product
        segment the step reads late (the attention decoder's `h @ U`, read after the
        scores) then runs while the partners' shares arrive. Its operands must stay
        unchanged until then (the step's inputs do)."""
        self.deferred[var] = emit

    def flush(self, writer, atoms=None) -> None:
        """Write the deferred code of the values among `atoms` (views count as their
        base), or of every deferred value when `atoms` is None, in the order deferred."""
        if atoms is None:
            wanted = set(self.deferred)
        else:
            wanted = {self.views.get(atom, atom) for atom in atoms if isinstance(atom, Var)}
        for var in [var for var in self.deferred if var in wanted]:
            self.deferred.pop(var)(writer)

    def own_view(self, view: Var, base: Var) -> None:
        """`view` (B, 1, n) reshapes the owned (B, n) `base`, sharing its storage:
        it is owned while `base` is, and gathering it gathers `base`."""
        self.views[view] = base
        self.owned[view] = self.owned[base]

    def gather(self, writer, var: Var) -> None:
        """Make `var` whole on every member: each writes its columns to its row of the
        exchange buffer, waits at the barrier, then copies the other members' columns
        into every place `var` is stored. Rows (phase % 2) * team_size + member
        alternate between barriers, as for the split products (codegen's
        `_team_matmul`)."""
        self.flush(writer, [var])
        targets = self.owned.pop(var)
        base = self.views.pop(var, None)
        if base is not None:     # a view: its base's storage holds the columns
            if base in self.owned:
                self.gather(writer, base)
            return
        if var.ndim != 2:
            raise RuntimeError(f"Gathering the owned {var.type}: only (B, n) values are "
                               f"gathered (a generator bug).")
        self.widest = max(self.widest, var.shape[1])

        def write(i, column, value):
            for target in targets:
                writer.line(f"{self._element(target, i, column)} = {value}")

        self._exchange(writer, "B", var.shape[1], 1,
                       lambda i, column: self._element(targets[0], i, column), write)

    def exchange_partials(self, writer, partials: str, rows: str, row_count: int,
                          columns: int) -> None:
        """Make the (rows, columns // block) `partials` whole on every member, each
        having filled the blocks of its own columns of a `columns`-wide value
        (block_dot.py); `row_count` bounds rows // B."""
        self.widest = max(self.widest, row_count * columns)

        def write(i, block, value):
            writer.line(f"{partials}[{i}, {block}] = {value}")

        self._exchange(writer, rows, columns, self.block_columns,
                       lambda i, block: f"{partials}[{i}, {block}]", write)

    def _exchange(self, writer, rows: str, columns: int, unit: int, read, write) -> None:
        """The exchange of `gather`: this member's share of `rows` rows is its columns
        of a `columns`-wide value divided by `unit` (1, or a block of columns per
        partial sum); `read(i, j)` is its element (i, j) of the whole value, `write(i,
        j, value)` writes a member's element there."""
        width, low, count = self.partition(columns)
        names = self.names
        phase, slot, member, member_low, member_count, member_slot, i, j, value = (
            names.fresh(hint) for hint in ("phase", "team_slot", "member", "member_low",
                                           "member_count", "member_slot", "i", "j",
                                           "value"))

        def units(expression):
            return expression if unit == 1 else f"({expression} // {unit})"

        # A member's share is row (phase % 2) * team_size + rank of team_pool, read and
        # written element by element (views of it, made at every step, would each
        # take and drop a reference count). Between arriving at the barrier and
        # waiting for the partners, the member runs its deferred work (`defer`).
        writer.line(f"{phase} = team_counter[phase_slot(team_rank)]")
        with writer.block("if team_size > 1:"):
            writer.line(f"{slot} = ({phase} % 2) * team_size + team_rank")
            with writer.block(f"for {i} in range({rows}):"):
                with writer.block(f"for {j} in range({units(count)}):"):
                    column = f"({units(low)} + {j}) & {INDEX_MASK}"
                    writer.line(f"team_pool[{slot}, {i} * {units(count)} + {j}] = "
                                f"{read(i, column)}")
            writer.line("team_arrive(team_counter, team_rank)")
        self.flush(writer)
        with writer.block("if team_size > 1:"):
            with writer.block("if not team_await(team_counter, team_size, team_rank):"):
                writer.line(self.abort_return)
            with writer.block(f"for {member} in range(team_size):"):
                with writer.block(f"if {member} != team_rank:"):
                    writer.line(f"{member_low} = "
                                f"{smaller(str(columns), f'{member} * {width}')}")
                    writer.line(f"{member_count} = "
                                f"{smaller(str(columns), f'{member_low} + {width}')} "
                                f"- {member_low}")
                    writer.line(f"{member_slot} = ({phase} % 2) * team_size + {member}")
                    with writer.block(f"for {i} in range({rows}):"):
                        with writer.block(f"for {j} in range({units(member_count)}):"):
                            writer.line(f"{value} = team_pool[{member_slot}, "
                                        f"{i} * {units(member_count)} + {j}]")
                            write(i, f"({units(member_low)} + {j}) & {INDEX_MASK}", value)

    def gather_inputs(self, writer, atoms) -> None:
        """Gather the owned ones of `atoms` (a reader needs them whole)."""
        for atom in dict.fromkeys(atoms):
            if isinstance(atom, Var) and atom in self.owned:
                self.gather(writer, atom)
