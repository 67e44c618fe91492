"""The callable a CPU compilation returns: checks inputs, keeps weights current, runs.

`CompiledProgram(bound_optimized, ...)` wraps the generated module's `run`. A call:
  1. orders the inputs by name (`x`, `initial_state=[...]`, `initial_readout=...`) and
     fills omitted ones that have defaults (zeros for initial states), as the
     interpreter does;
  2. checks each: numeric (else TypeError), cast to the declared dtype (float64 ->
     float32 as Keras does), rank and fixed dims (else ValueError naming the input),
     made C-contiguous;
  3. re-reads the weights if a `weight_reader` is set (e.g. Keras variables) and
     recomputes the weight prologue, and the packed copies of the recurrent weights
     (packed_product.pack_weight), only when they changed (on a team, a member asks
     while the others start; on one thread, mostly beside the kernel: team_poll.py);
  4. calls `run(B, T, chunk, *inputs, *weights)` with `chunk` sized so the chunk
     buffers of the input projection stay under `max_chunk_bytes`, whatever
     T is: on this thread, as row slices on all cores for a batch of 8+ rows
     (row_split.py), or on a team of threads when `team_size=` asks for one (team.py,
     its own kernel variant) or the automatic team pays (team.auto_team_size; kept
     only while its calls are faster than one thread's, team_choice.py).
A call with one positional array of the same shape and dtype as the previous such
call skips steps 1-2 (the defaults filled then are reused; the kernel never writes its
inputs). Nothing here imports Keras.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext

import numpy as np

from rshop_ir.bound import BoundProgram
from rshop_ir.kernels.batch_rows import has_batch_rows, rows_independent
from rshop_ir.kernels.compiled_program_base import CompiledProgramBase
from rshop_ir.kernels.cpu.blas_threads import (THREADED_MIN_STEP_FLOPS, blas_predicate,
                                               blas_threads_for)
from rshop_ir.kernels.cpu.core_load import others_idle
from rshop_ir.kernels.cpu.optimization_level import compile_for, compile_for_types
from rshop_ir.kernels.cpu.packed_product import pack_weight
from rshop_ir.kernels.cpu.row_split import run_in_slices, slice_count, usable_cores
from rshop_ir.kernels.cpu.team import (TeamBuffers, auto_team_size, launch_natively,
                                       new_counter, run_team, team_size_for)
from rshop_ir.kernels.cpu.background_compile import BackgroundCompile
from rshop_ir.kernels.cpu.team_choice import TeamChoice
from rshop_ir.kernels.cpu.team_poll import (BESIDE_MAX_PAUSE_S, BESIDE_MIN_CALLS,
                                            PollCallback)
from rshop_ir.kernels.cpu.team_launch import (compile_launcher, compile_with_member,
                                              native_launch_usable)
from rshop_ir.interpret import bind_weights, gather_inputs, run_prologue
from rshop_ir.output_structure import nest_outputs

DEFAULT_CHUNK_STEPS = 256
# Kernel calls of this many rows and recurrent matmul FLOPs (about a millisecond of
# work) run the wide-batch variant, whose recurrent products take the step's input
# projection in (merged_projection.py), once it is compiled in the background: a
# second kernel compiled for calls too small to repay it would only load the cores.
# LSTM, 2 cores, plain -> wide ms (`python -m bench.merged_projection`, BENCHMARKS.md
# run 30): (B, T, I, H) = (16, 100, 128, 256) 7.41 -> 6.74, (32, 100, 128, 256) 14.77
# -> 13.30, (256, 50, 256, 512) 222.2 -> 210.4; at 4-8 rows a kernel call within the
# noise: (8, 100, 128, 256), two slices of 4 rows, 0.965 and 1.033 of the plain time
# in two passes.
MERGED_MIN_ROWS = 8
MERGED_MIN_FLOPS = 3e7
_BESIDE = threading.Lock()    # held by the one-thread call asking beside its kernel
DEFAULT_MAX_CHUNK_BYTES = 16 * 2 ** 20
# A chunk's projected rows are written by its GEMM and read back a step at a time:
# kept near the core's cache (~4 MB of chunk buffers) they are read from there, not
# from memory. An LSTM at S4 (row slices of 128 rows x 9 KB of chunk buffers) ran 14
# steps a chunk within 16 MB: 147.1 ms a call; 2-4 steps: 142.5-142.8 ms (ad-hoc, 5
# interleaved rounds). A chunk keeps MIN_CHUNK_ROWS rows, so a GEMM still
# has rows enough to reuse each block of its weight.
CACHE_CHUNK_BYTES = 4 * 2 ** 20
MIN_CHUNK_ROWS = 256
_NO_BLAS = nullcontext()    # the BLAS scope of a kernel that never calls BLAS


class CompiledProgram(CompiledProgramBase):
    """A program compiled to a Numba CPU kernel. Call it like the layer it came from.

    Attributes:
        ir: the optimised IR as text; ir_before_passes: before the pass pipeline.
        source: the generated Python/Numba module source.
        program: the optimised `Program`; weights: the current weights (name -> array).
    """

    def __init__(self, optimized: BoundProgram, original: BoundProgram, kernel, module,
                 weight_reader=None, chunk_steps: int = DEFAULT_CHUNK_STEPS,
                 max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES, name: str = "program"):
        if chunk_steps < 1:
            raise ValueError(f"chunk_steps must be >= 1. Received: chunk_steps={chunk_steps}")
        super().__init__(optimized, original, kernel, module, weight_reader, name)
        self.chunk_steps = int(chunk_steps)
        self.max_chunk_bytes = int(max_chunk_bytes)
        self._run = getattr(module, kernel.entry)
        self._calls_blas = blas_predicate(kernel.blas_guard)
        self._rows_independent = rows_independent(self.program)
        self._batched_inputs = [has_batch_rows(var) for var in self.program.inputs]
        self._batched_outputs = [has_batch_rows(atom) for atom in self.program.outputs]
        self._fast_call = None
        self._outputs_to_check = _outputs_maybe_inputs(self.program)
        self._variants = {}               # "team" / "wide" -> (KernelSource, run, module)
        self._slot_orders = {}            # ... -> for each of its weight arguments, the
                                          # index of the plain kernel's one it takes
        self._variant_lock = threading.Lock()   # one thread generates a variant
        self._background = BackgroundCompile()   # compiles beside the calls
        self._team_calls_blas = None      # blas_predicate of the team kernel
        self._team_choice = TeamChoice()   # whether the automatic team pays, per shape
        self._native_launchers = {}     # kind -> the argument types and the launcher
        self._ended = 0.0               # perf_counter() when the last call ended
        self._beside_calls = 0          # one-thread calls that could ask beside the kernel
        self._team_buffers_kept = threading.local()   # per calling thread
        self._set_weights(optimized.weights)

    def __repr__(self) -> str:
        return (f"<CompiledProgram {self.name!r}: target=cpu, inputs "
                f"{list(self.program.input_names)}, {len(self.program.params)} weights>")

    # ---- weights -----------------------------------------------------------------------

    def _set_weights(self, weights: dict) -> None:
        """Bind `weights` and recompute the prologue."""
        checked = bind_weights(self.program, weights)
        # Own copies: a caller changing its arrays in place must not change the
        # kernel's weights behind the packed copies made from them below.
        self._weights = {name: np.array(checked[var]) for name, var in self.program.params}
        checked = {var: self._weights[name] for name, var in self.program.params}
        self._prologue = tuple(np.require(value, requirements="C") for value in
                               run_prologue(self.program, checked))

        def argument(kind, key):
            if kind == "param":
                return self._weights[key]
            if kind == "prologue":
                return self._prologue[key]
            return pack_weight(argument(*key))    # "packed": once per weight version

        self._weight_arguments = [argument(kind, key) for kind, key in self.kernel.weight_slots]

    # ---- calling -----------------------------------------------------------------------

    def __call__(self, *inputs, initial_state=None, initial_readout=None, chunk_steps=None,
                 team_size=None, **named_inputs):
        """Run the kernel. `chunk_steps` bounds the steps per input-projection GEMM;
        `team_size` > 1 runs the call on that many threads splitting each step's
        matmul columns (kernels/cpu/team.py; default: one thread per call, or row
        slices on all cores for a big batch)."""
        if len(inputs) == 1 and not named_inputs and initial_state is None \
                and initial_readout is None and chunk_steps is None:
            fast = self._fast_inputs(inputs[0])
            if fast is not None:
                return self._launch(*fast, team_size)
        program = self.program
        inputs, named_inputs = self._call_inputs(inputs, initial_state, initial_readout,
                                                 named_inputs)
        try:
            values = gather_inputs(program, inputs, named_inputs)
        except ValueError:
            # A default could not be sized: report a bad given input first, if any.
            given_dims = {}
            for value, var, name in zip(inputs, program.inputs, program.input_names):
                self._checked_host_array(value, var, name, given_dims)
            raise
        dims = {}
        arrays = [self._checked_host_array(value, var, name, dims)
                  for value, var, name in zip(values, program.inputs, program.input_names)]
        batch, steps = dims.get("B", 0), dims.get("T", 0)
        if len(inputs) == 1 and not named_inputs and chunk_steps is None:
            self._remember_call(inputs[0], arrays, batch, steps)
        return self._launch(arrays, batch, steps, chunk_steps, team_size)

    def finish_compiles(self, timeout: float = None) -> bool:
        """Wait for what this program compiles in the background (the automatic team's
        kernel, the launcher of the weight question beside a kernel; the calls run
        without them meanwhile: kernels/cpu/background_compile.py), each up to
        `timeout` seconds. Returns True when nothing is still compiling."""
        return self._background.wait(timeout)

    def _remember_call(self, given, arrays: list, batch: int, steps: int) -> None:
        """Keep what a call with one positional array made of it (its defaults filled
        and checked), so that the next call with an array of the same shape and dtype
        skips the input checks."""
        if isinstance(given, np.ndarray) and arrays[0] is given:
            self._fast_call = (given.shape, given.dtype, arrays[1:], batch, steps)

    def _fast_inputs(self, given):
        """(arrays, batch, steps, None) for a call like the last remembered one, else None."""
        remembered = self._fast_call
        if remembered is None or type(given) is not np.ndarray:
            return None
        shape, dtype, defaults, batch, steps = remembered
        if given.shape != shape or given.dtype != dtype or not given.flags.c_contiguous:
            return None
        return [given, *defaults], batch, steps, None

    def _launch(self, arrays: list, batch: int, steps: int, chunk_steps,
                team_size=None, chosen: bool = False) -> object:
        """Run the kernel on checked inputs: on this thread, on a team of threads
        splitting each step's matmul columns (kernels/cpu/team.py), or as row slices
        on several cores (kernels/cpu/row_split.py). `chosen`: `team_size` is the
        automatic choice's (team_choice.py), not the caller's."""
        kernel = self.kernel
        automatic = team_size is None or chosen
        if team_size is None:
            # `steps` is 0 when the time axis has a static length (no T to bind)
            proposed = auto_team_size(kernel, batch, steps or kernel.fixed_steps)
            if proposed > 1:     # kept only while it is faster (team_choice.py)
                return self._team_choice.call(
                    (batch, steps, chunk_steps), proposed,
                    lambda members: self._launch(arrays, batch, steps, chunk_steps, members,
                                                 chosen=True),
                    lambda members: self._team_ready(arrays, batch, steps, chunk_steps,
                                                     members))
            team_size = proposed
        members = 1 if team_size == 1 else team_size_for(self._team_kernel()[0], team_size)
        if members > 1:
            # a member asks whether the weights changed (team_poll.py)
            results = self._run_team(arrays, batch, steps, chunk_steps, members)
            if results is not None:
                return self._finish(results)
            # a member failed, or the weights changed: the call runs again on one thread
        slices = 1
        if self._rows_independent:
            # `steps` is 0 when the time axis has a static length (no T to bind)
            work_steps = steps or kernel.fixed_steps
            slices = slice_count(batch, batch * work_steps * kernel.step_flops_per_row)
        if slices == 1 and automatic and self._poll_beside_pays(batch, steps) \
                and self._polled_ready(arrays, batch, steps, chunk_steps) \
                and _BESIDE.acquire(blocking=False):
            # the weight question runs beside the kernel, on the idle core (team_poll.py);
            # one such call at a time in the process (threads calling at once would
            # each start a thread of Numba's to ask)
            try:
                with self._blas_scope(0.0, self._calls_blas(batch, steps)):  # one thread
                    results = self._run_polled(arrays, batch, steps,
                                               self._chunk(batch, chunk_steps))
            finally:
                _BESIDE.release()
            if results is not None:
                return self._finish(results)
            # the weights changed (bound now) or the kernel failed: the usual call below
        self.refresh_weights()
        # Row slices call it with arguments of the same types.
        compile_for(self._run, (batch, steps, self._chunk(batch, chunk_steps), *arrays,
                                *self._weight_arguments))
        rows = batch // slices
        run, weights = self._wide_run(arrays, rows, steps, self._chunk(rows, chunk_steps)) \
            or (self._run, self._weight_arguments)
        if slices > 1:
            def run_slice(start, stop):
                rows = stop - start
                sliced = [array[start:stop] if has_rows else array
                          for array, has_rows in zip(arrays, self._batched_inputs)]
                return run(rows, steps, self._chunk(rows, chunk_steps), *sliced, *weights)
            with self._blas_scope(0.0, self._calls_blas(batch, steps)):
                results = run_in_slices(run_slice, batch, slices, self._batched_outputs)
        else:
            chunk = self._chunk(batch, chunk_steps)
            with self._blas_scope(batch * kernel.step_flops_per_row,
                                  self._calls_blas(batch, steps)):
                results = list(run(batch, steps, chunk, *arrays, *weights))
        return self._finish(results)

    @staticmethod
    def _blas_scope(step_flops: float, kernel_calls_blas: bool):
        """The BLAS thread count a kernel call runs under (blas_threads.py); nothing
        to set for a kernel that never calls BLAS."""
        return blas_threads_for(step_flops) if kernel_calls_blas else _NO_BLAS

    def _run_team(self, arrays: list, batch: int, steps: int, chunk_steps, members: int):
        """The results of a call on a team of `members` threads: started by the kernel
        module's native launcher where it may run (team_launch.py), else by Python
        member threads (team.py); None when a member failed or gave up waiting."""
        team_kernel, team_run, _ = self._team_kernel()
        chunk = self._chunk(batch, chunk_steps)
        buffers = self._team_buffers(team_kernel, members)
        weights = self._weight_arguments
        callback = self._poll_callback()
        address = 0 if callback is None else callback.address
        if callback is not None:
            callback.clear()
        with self._blas_scope(0.0, self._team_calls_blas(batch, steps)):
            if native_launch_usable(members):
                leading = (batch, steps, chunk, *arrays, *weights)
                results = launch_natively(lambda *team: self._launcher(arrays, leading, team)(
                    *leading, *team), buffers, batch, chunk, address)
            else:
                results = run_team(
                    lambda *team: team_run(batch, steps, chunk, *arrays, *weights, *team),
                    buffers, batch, chunk, address)
                results = None if results is None else list(results)
        if callback is not None:
            self._bind_found(callback)   # a change or a failed read stopped the team
        return results

    def _bind_found(self, callback) -> bool:
        """Bind the weights `callback`'s last question found changed (True), or raise
        the error reading them raised; False when they were unchanged or not asked."""
        return self._bind_changed(callback.found())

    def _poll_callback(self):
        """This thread's team_poll.PollCallback asking `_changed_weights` (None where no
        weight source is watched)."""
        if self._weight_reader is None:
            return None
        kept = self._team_buffers_kept
        callback = getattr(kept, "poll_callback", None)
        if callback is None:
            callback = kept.poll_callback = PollCallback(self._changed_weights)
        return callback

    def _launcher(self, arrays: list, leading: tuple, team: tuple):
        """The team kernel's native launcher for arguments of these types
        (team_launch.compile_launcher)."""
        return self._kept_launcher("team", arrays, lambda: compile_launcher(
            self._team_kernel()[2], leading, team))

    def _kept_launcher(self, kind: str, arrays: list, build):
        """The native launcher of `kind` for arguments of these types: `build()`,
        called at the first call that needs it and again when the types change. Only
        the inputs' types are compared at each call: the weights and the team's
        buffers are the runtime's own, and their types can only change with the weight
        arrays, whose list `_set_weights` replaces."""
        launch = self._launcher_kept(kind, arrays)
        if launch is None:
            launch = build()
            self._native_launchers[kind] = {"weights": self._weight_arguments,
                                            "key": _types_key(arrays), "launch": launch}
        return launch

    def _launcher_kept(self, kind: str, arrays: list):
        """The kept native launcher of `kind` for these arguments' types, else None."""
        kept = self._native_launchers.get(kind, {})
        if kept.get("weights") is not self._weight_arguments \
                or kept.get("key") != _types_key(arrays):
            return None
        return kept["launch"]

    def _team_ready(self, arrays: list, batch: int, steps: int, chunk_steps,
                    members: int) -> bool:
        """Whether an automatic team call can run now without compiling; if not, what
        it runs (the team kernel and its native launcher, or the team kernel alone for
        Python member threads) compiles in the background (background_compile.py)."""
        if native_launch_usable(members):
            key = ("team", _types_key(arrays))
            done = lambda: self._launcher_kept("team", arrays) is not None  # noqa: E731
        else:
            key = ("team members", _types_key(arrays))
            # the thread finds a version compiled or cached already (compile_for_types)
            done = lambda: False  # noqa: E731
        return self._background.ready(
            key, done, lambda: self._compile_team(arrays, batch, steps, chunk_steps,
                                                  members))

    def _compile_team(self, arrays: list, batch: int, steps: int, chunk_steps,
                      members: int) -> None:
        """Compile what a team call with arguments of these types runs: the team
        kernel and its native launcher (kept for the calls), or, where Python member
        threads run the team (team_workers.py), the team kernel. Reads no input
        values."""
        team_kernel, team_run, _ = self._team_kernel()
        members = team_size_for(team_kernel, members)
        if members < 2:
            return
        buffers = TeamBuffers(team_kernel, members)
        chunk = self._chunk(batch, chunk_steps)
        leading = (batch, steps, chunk, *arrays, *self._weight_arguments)
        # buffers of one row and one step: only their types matter here
        team = (members, new_counter(), buffers.pool(1), buffers.shared(1, 1))
        if native_launch_usable(members):
            self._launcher(arrays, leading, (*team, np.full(members, -1, np.int64),
                                             buffers.masks))
        else:
            compile_for_types(team_run, (*leading, 0, *team))

    def _poll_beside_pays(self, batch: int, steps: int) -> bool:
        """Whether a one-thread call asks whether the weights changed beside its kernel
        (team_poll.py: the conditions); counts the calls that could."""
        if self._weight_reader is None or batch < 1 or (steps or self.kernel.fixed_steps) < 1:
            return False
        if self._calls_blas(batch, steps) \
                and batch * self.kernel.step_flops_per_row >= THREADED_MIN_STEP_FLOPS:
            return False     # BLAS would run its own threads
        if time.perf_counter() - self._ended >= BESIDE_MAX_PAUSE_S \
                or not native_launch_usable(2) or usable_cores() < 2 or not others_idle():
            return False
        if self._background.running():
            # a compile holds a core (and Numba's compiler lock, which compiling the
            # launcher of the question would wait for)
            return False
        self._beside_calls += 1
        return self._beside_calls >= BESIDE_MIN_CALLS

    def _run_polled(self, arrays: list, batch: int, steps: int, chunk: int):
        """The results of a one-thread call whose weight question runs beside the
        kernel (the module's `launch_polled`), or None when the weights changed (they
        are bound now) or the kernel failed: the caller then runs the call as usual."""
        callback = self._poll_callback()
        callback.clear()
        counter = new_counter(callback.address)
        arguments = (batch, steps, chunk, *arrays, *self._weight_arguments)
        results = self._polled_launcher(arrays, arguments)(*arguments, counter)
        if callback.outcome is None or self._bind_found(callback) or len(results) != 1:
            return None
        results = list(results[0])
        # a kernel that raised returned empty arrays through its function pointer
        return None if any(result.size == 0 for result in results) else results

    def _polled_launcher(self, arrays: list, arguments: tuple):
        """The module's `launch_polled` for `run`'s `arguments` (kept for their types)."""
        return self._kept_launcher("polled", arrays, lambda: compile_with_member(
            self.module.launch_polled, self._run, arguments, (*arguments, new_counter())))

    def _polled_ready(self, arrays: list, batch: int, steps: int, chunk_steps) -> bool:
        """Whether the one-thread call may ask beside its kernel without compiling the
        launcher first; if not, the launcher compiles in the background
        (background_compile.py) and the call asks itself meanwhile."""
        return self._background.ready(
            ("polled", _types_key(arrays)),
            lambda: self._launcher_kept("polled", arrays) is not None,
            lambda: self._polled_launcher(arrays, (
                batch, steps, self._chunk(batch, chunk_steps), *arrays,
                *self._weight_arguments)))

    def _team_buffers(self, team_kernel, members: int) -> TeamBuffers:
        """What a team keeps between calls (team.TeamBuffers), one per team size and
        calling thread (two threads calling at once never share one; a thread's go
        when it ends)."""
        kept = getattr(self._team_buffers_kept, "by_size", None)
        if kept is None:
            kept = self._team_buffers_kept.by_size = {}
        if members not in kept:
            kept[members] = TeamBuffers(team_kernel, members)
        return kept[members]

    def _team_kernel(self) -> tuple:
        """(KernelSource, run, its module) of the team variant, generated at the first call asking
        for a team (kernels/cpu/team.py): the branches and barriers it adds cost every
        first compile ~0.5 s, so kernels without a team never carry them."""
        team = self._variant("team")
        if team is None:
            raise RuntimeError(f"The team kernel of {self.name!r} takes other weight "
                               f"arguments than its plain kernel: a generator bug.")
        return team

    def _wide_run(self, arrays: list, rows: int, steps: int, chunk: int):
        """(`run`, its weight arguments) of the wide-batch variant, whose recurrent
        products take their input projection in (merged_projection.py), for kernel calls
        of `rows` rows, when it applies and is compiled for these arguments; else None,
        and it compiles in the background (background_compile.py) while the plain
        kernel runs the calls."""
        flops = rows * (steps or self.kernel.fixed_steps) * self.kernel.step_flops_per_row
        if rows < MERGED_MIN_ROWS or flops < MERGED_MIN_FLOPS \
                or self._variants.get("wide", ()) is None:
            return None
        if not self._background.ready(("wide", _types_key(arrays)), lambda: False,
                                      lambda: self._compile_wide(arrays, rows, steps, chunk)):
            return None
        wide = self._variant("wide")
        if wide is None:
            return None
        weights = self._wide_weights()
        compile_for(wide[1], (rows, steps, chunk, *arrays, *weights))
        return wide[1], weights

    def _compile_wide(self, arrays: list, rows: int, steps: int, chunk: int) -> None:
        wide = self._variant("wide")
        if wide is not None:
            compile_for_types(wide[1], (rows, steps, chunk, *arrays, *self._wide_weights()))

    def _wide_weights(self) -> list:
        """The weight arguments in the wide variant's order (its generator may ask for
        the packed copies in another order than the plain kernel's)."""
        order = self._slot_orders["wide"]
        return [self._weight_arguments[index] for index in order]

    def _variant(self, kind: str):
        """(KernelSource, run, its module) of the "team" or "wide" (wide-batch) variant of
        the kernel, generated at its first use; None when it would take weight
        arguments the plain kernel does not (the team variant: others, or in another
        order), or, wide, merges no product (it would be the plain kernel again)."""
        if kind in self._variants:
            return self._variants[kind]
        with self._variant_lock:
            if kind not in self._variants:
                from rshop_ir.kernels.cpu.cache import load_module
                from rshop_ir.kernels.cpu.codegen import generate

                kernel = generate(self.program, team=kind == "team", merged=kind == "wide")
                plain = self.kernel.weight_slots
                order = [plain.index(slot) if slot in plain else None
                         for slot in kernel.weight_slots]
                if None in order or (kind == "team" and kernel.weight_slots != plain) \
                        or (kind == "wide" and not kernel.merged_products):
                    self._variants[kind] = None
                else:
                    module = load_module(kernel.source, kernel.globals,
                                         kernel.named_arguments)
                    if kind == "team":
                        self._team_calls_blas = blas_predicate(kernel.blas_guard)
                    self._slot_orders[kind] = order
                    self._variants[kind] = (kernel, getattr(module, kernel.entry), module)
            return self._variants[kind]

    def _finish(self, results: list):
        self._ended = time.perf_counter()
        fast_call = self._fast_call
        if self._outputs_to_check and fast_call is not None and fast_call[2] and any(
                np.may_share_memory(results[index], default)
                for index in self._outputs_to_check for default in fast_call[2]):
            self._fast_call = None   # an output is a filled default: never hand it out twice
        return nest_outputs(results, self.program.output_structure)

    def _chunk(self, batch: int, chunk_steps) -> int:
        """Steps per input-projection chunk for `batch` rows: at most `chunk_steps`
        (this call's, else the compiled default), within `max_chunk_bytes`; by default
        also within CACHE_CHUNK_BYTES while a chunk keeps MIN_CHUNK_ROWS rows, so the
        steps read back projected rows that are still in the cache."""
        chunk = self.chunk_steps if chunk_steps is None else int(chunk_steps)
        if chunk < 1:
            raise ValueError(f"chunk_steps must be >= 1. Received: chunk_steps={chunk}")
        row_bytes = self.kernel.projection_row_bytes
        if row_bytes and batch > 0:
            chunk = min(chunk, max(1, self.max_chunk_bytes // (batch * row_bytes)))
            if chunk_steps is None:
                cached = CACHE_CHUNK_BYTES // (batch * row_bytes)
                chunk = min(chunk, max(cached, -(-MIN_CHUNK_ROWS // batch)))
        return chunk


def _outputs_maybe_inputs(program) -> list:
    """The indices of the program's outputs that a call might return as (a view of) an
    input, a filled default among them. A top-level scan's outputs never are: the scan
    function allocates its outputs and copies the initial states (codegen.py). Checking
    only the others spares a call with one array ~5 us of `np.may_share_memory` (an
    LSTM's three outputs against its two default states; measured 100.4 -> 98.3 us a
    call at S1, BENCHMARKS.md run 28)."""
    fresh = {var for eqn in program.eqns if eqn.op == "scan" for var in eqn.outputs}
    return [index for index, atom in enumerate(program.outputs) if atom not in fresh]


def _types_key(arrays: list) -> tuple:
    """What a native launcher's compiled types depend on among a call's inputs."""
    return tuple((type(array), getattr(array, "dtype", None), getattr(array, "ndim", None))
                 for array in arrays)
