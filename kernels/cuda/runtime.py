"""The callable a CUDA compilation returns: checks inputs, keeps weights current, runs.

`CompiledCudaProgram` mirrors the CPU `CompiledProgram` (same call signature
`c(x, initial_state=None, initial_readout=None)`, `.ir`, `.ir_before_passes`, `.source`,
`set_weights`, `refresh_weights`, `to_bound_program()`). A call:
  1. orders the inputs by name and fills omitted ones that have defaults (zeros);
  2. takes numpy arrays (checked and cast as on the CPU, then copied to the device) or
     device arrays: anything with `__cuda_array_interface__` (numba, CuPy, torch CUDA
     tensors), used in place: their dtype must be the declared one and they must be
     C-contiguous (else a TypeError/ValueError saying how to fix it);
  3. re-reads the weights if a `weight_reader` is set and uploads the packed buffer
     only when they changed (once per weight version);
  4. runs the module's `run` and returns numpy arrays, or numba device arrays (no host
     round trip) when any input was a device array.
Each scan runs in the block layout (a block per `rows_per_block` rows) or the group layout
(G blocks per rows, splitting each step's work: kernels/cuda/scan_kernel.py), as
`blocks_per_group` says: None picks the group layout when the rows leave most of the
GPU's multiprocessors idle (`_Runtime.blocks_per_group`), 0 keeps the block layout, an
int G >= 1 forces groups of G blocks. `group_blocks_used` tells what the last scan ran
with (0: the block layout).
Nothing here imports Keras.
"""

from __future__ import annotations

import numpy as np

from rshop_ir.bound import BoundProgram
from rshop_ir.interpret import bind_weights, gather_inputs, run_prologue
from rshop_ir.kernels.compiled_program_base import CompiledProgramBase
from rshop_ir.kernels.cuda import device, gemm, group_sync
from rshop_ir.kernels.cuda.kernel_writer import SPLIT_LANES
from rshop_ir.output_structure import nest_outputs
from rshop_ir.shapes import bind_shape, resolve_shape


MAX_GROUP_BLOCKS = 128    # blocks per group at most (automatic choice)


class _Runtime:
    """What the generated `run` calls: allocation, GEMM, launch sizes, error flag."""

    def __init__(self, threads: int):
        self.threads = int(threads)
        self.gemm = gemm.gemm
        self.requested_group_blocks = None    # CompiledCudaProgram.blocks_per_group
        self.used_group_blocks = None         # what the last scan launch ran with

    @staticmethod
    def empty(count, dtype):
        return device.empty((int(count),), dtype)

    @staticmethod
    def barrier_counters(groups: int):
        """The group layout's barrier counters: one per group, then the timeout flag."""
        return device.to_device(np.zeros(int(groups) + 1, np.int64))

    @staticmethod
    def check_barriers(counters) -> None:
        group_sync.check_barriers(device.to_host(counters))

    def blocks_per_group(self, groups: int, widest: int) -> int:
        """G for a scan whose rows make `groups` groups, with `widest` elements per row
        in its widest step value; 0 for the block layout. `requested_group_blocks`: 0
        keeps the block layout, G >= 1 is checked and used.

        Automatic (`requested_group_blocks` None): one block per tile of SPLIT_LANES
        columns of the widest value (a recurrent matmul's output: each block then reads
        1/G of the weight per step; eqn_rendering._split_matmul), at most
        MAX_GROUP_BLOCKS, and only as many as fit
        on the multiprocessors next to the other groups (every block of the group
        layout must be resident at once: group_sync.py); the block layout where that
        leaves fewer than 2, and always in the simulator (it runs blocks one at a time).
        On an H200 (BENCHMARKS.md, CUDA run 1) a block per tile beat fewer blocks at
        every size timed: a batch-1 LSTM of 1024 units took 48 us a step in groups of
        128 blocks against 133 in groups of 32, 512 units 29 (64 blocks) against 44.
        """
        self.used_group_blocks = self._choose_group_blocks(groups, widest)
        return self.used_group_blocks

    def _choose_group_blocks(self, groups: int, widest: int) -> int:
        requested = self.requested_group_blocks
        multiprocessors = device.device_count_of_sms()
        if requested == 0:
            return 0
        if requested is not None:
            if device.in_simulator() and requested > 1:
                raise ValueError(
                    f"blocks_per_group={requested}: Numba's CUDA simulator runs blocks one "
                    f"after another, so a group of several blocks would wait forever at "
                    f"its barrier. Use blocks_per_group=1 or None there.")
            if groups * requested > multiprocessors and not device.in_simulator():
                raise ValueError(
                    f"blocks_per_group={requested} with {groups} groups of rows needs "
                    f"{groups * requested} blocks resident at once, but this GPU has "
                    f"{multiprocessors} multiprocessors. Use at most "
                    f"{max(1, multiprocessors // groups)}, or None to choose automatically.")
            return requested
        if device.in_simulator():
            return 0
        wanted = min(MAX_GROUP_BLOCKS, -(-int(widest) // SPLIT_LANES))
        chosen = min(wanted, multiprocessors // max(1, groups))
        return chosen if chosen >= 2 else 0

    @staticmethod
    def error_flag():
        return device.to_device(np.zeros(1, np.int32))

    @staticmethod
    def check_error_flag(flag) -> None:
        if int(device.to_host(flag)[0]):
            raise IndexError("gather: an index is out of range of the table (an embedding "
                             "id >= input_dim, or negative?).")


class CompiledCudaProgram(CompiledProgramBase):
    """A program compiled to Numba CUDA kernels. Call it like the layer it came from.

    Attributes:
        ir: the optimised IR as text; ir_before_passes: before the pass pipeline.
        source: the generated module source (kernels and the host `run`).
        program: the optimised `Program`; weights: the current weights (name -> array).
        rows_per_block, threads_per_block: the block layout of the scan kernels.
        blocks_per_group: None (automatic), 0 (the block layout) or the G of the group
            layout (module docstring); settable.
    """

    target = "cuda"

    def __init__(self, optimized: BoundProgram, original: BoundProgram, module_source,
                 module, weight_reader=None, name: str = "program",
                 threads_per_block: int = None, blocks_per_group: int = None):
        super().__init__(optimized, original, module_source, module, weight_reader, name)
        self.rows_per_block = module_source.rows_per_block
        self.threads_per_block = int(threads_per_block or device.default_threads_per_block())
        if self.threads_per_block < 1 or self.threads_per_block > 1024:
            raise ValueError(f"threads_per_block must be in [1, 1024]. Received: "
                             f"threads_per_block={threads_per_block}")
        self._runtime = _Runtime(self.threads_per_block)
        self.blocks_per_group = blocks_per_group
        self._device_weights = None
        self.weight_uploads = 0
        self._set_weights(optimized.weights)

    def __repr__(self) -> str:
        return (f"<CompiledCudaProgram {self.name!r}: target=cuda, inputs "
                f"{list(self.program.input_names)}, {len(self.program.params)} weights, "
                f"{self.rows_per_block} rows x {self.threads_per_block} threads per block>")

    @property
    def blocks_per_group(self):
        return self._runtime.requested_group_blocks

    @blocks_per_group.setter
    def blocks_per_group(self, value) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(
                value, (int, np.integer)) or value < 0):
            raise ValueError(f"blocks_per_group must be None (automatic), 0 (the block "
                             f"layout) or an int >= 1 (groups of that many blocks). "
                             f"Received: blocks_per_group={value!r}")
        self._runtime.requested_group_blocks = None if value is None else int(value)

    @property
    def group_blocks_used(self):
        """Blocks per group of the last scan launch (0: the block layout; None: none
        yet)."""
        return self._runtime.used_group_blocks

    # ---- weights -----------------------------------------------------------------------

    def _set_weights(self, weights: dict) -> None:
        """Bind `weights`, pack them with the prologue results and upload the buffer."""
        checked = bind_weights(self.program, weights)
        self._weights = {name: checked[var] for name, var in self.program.params}
        prologue = run_prologue(self.program, checked)
        packed = self.kernel.layout.pack(self._weights, prologue)
        self._device_weights = device.to_device(packed)
        self.weight_uploads += 1

    # ---- calling -----------------------------------------------------------------------

    @staticmethod
    def _is_array(value) -> bool:
        """One array: numpy or a device array."""
        return isinstance(value, np.ndarray) or device.is_device_array(value)

    def __call__(self, *inputs, initial_state=None, initial_readout=None, **named_inputs):
        program = self.program
        inputs, named_inputs = self._call_inputs(inputs, initial_state, initial_readout,
                                                 named_inputs)
        values = gather_inputs(program, inputs, named_inputs)
        given_device = any(device.is_device_array(value) for value in values)
        dims = {}
        arrays = [self._checked_input(value, var, name, dims)
                  for value, var, name in zip(values, program.inputs, program.input_names)]
        self.refresh_weights()
        batch, steps = int(dims.get("B", 0)), int(dims.get("T", 0))
        results = self.module.run(batch, steps, self._device_weights, self._runtime,
                                  *arrays)
        shaped = []
        for array, atom in zip(results, program.outputs):
            shape = resolve_shape(atom.shape, {"B": batch, "T": steps})
            array = array.reshape(shape) if len(shape) != 1 else array
            shaped.append(array if given_device else device.to_host(array))
        return nest_outputs(shaped, program.output_structure)

    @staticmethod
    def _checked_input(value, var, name: str, dims: dict):
        """A flat C-contiguous device array for one input."""
        if device.is_device_array(value):
            array = device.as_device_array(value)
            if np.dtype(array.dtype) != np.dtype(var.dtype):
                raise TypeError(f"Input {name!r}: expected a device array of dtype "
                                f"{var.dtype}; received {np.dtype(array.dtype)}. Convert it "
                                f"on the device first (e.g. x.astype('{var.dtype}')) or pass "
                                f"a numpy array.")
            bind_shape(var.shape, tuple(array.shape), dims, f"Input {name!r}")
            if array.size and not array.is_c_contiguous():
                raise ValueError(f"Input {name!r}: the device array is not C-contiguous; "
                                 f"make it contiguous on the device (e.g. "
                                 f"cupy.ascontiguousarray / tensor.contiguous()) or pass a "
                                 f"numpy array.")
            return array.reshape(int(array.size))
        host = CompiledProgramBase._checked_host_array(value, var, name, dims)
        return device.to_device(host.reshape(-1))
