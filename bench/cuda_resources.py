"""What the CUDA compiler makes of the generated kernels, read without a GPU.

    python -m bench.cuda_resources PROGRAM [PROGRAM ...] [--rows 1,4] [--arch sm_90]

For each saved program (`rshop_ir.save`; `python -m bench.cuda_check --prepare DIR`
writes some), this compiles every kernel the CUDA generator writes to PTX with NVVM
(`kernels/cuda/device.compile_ptx`). It then assembles each one with `ptxas -v` for
the GPU architecture. It prints one row per kernel: registers, stack frame, spill
stores and loads, and shared memory. A stack frame or spills in a scan kernel mean
local memory in the step loop. On an H200 (BENCHMARKS.md, CUDA run 1) that was the
accumulator array, and it made the recurrent matmul wait on every index.

It needs NVVM and ptxas, not a GPU. Both come with `pip install "numba-cuda[cu12]"`
(ptxas is in the nvidia-cuda-nvcc wheel), in an environment of its own: numba-cuda
replaces the `numba.cuda` that the simulator tests use. Run it without
NUMBA_ENABLE_CUDASIM.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

USED = re.compile(r"Used (\d+) registers([^\n]*)")
SHARED = re.compile(r"(\d+) bytes smem")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(text: str) -> dict:
    """The resources `ptxas -v` reports for a PTX file holding one kernel: registers,
    shared memory, stack frame and spill bytes (ValueError when they are missing)."""
    used, frame = USED.search(text), FRAME.search(text)
    if used is None or frame is None:
        raise ValueError(f"ptxas -v printed no resource lines; it printed: {text[-500:]!r}")
    shared = SHARED.search(used.group(2))
    return {"registers": int(used.group(1)),
            "shared_bytes": int(shared.group(1)) if shared else 0,
            "stack_bytes": int(frame.group(1)), "spill_store_bytes": int(frame.group(2)),
            "spill_load_bytes": int(frame.group(3))}


def find_ptxas() -> str:
    """ptxas on PATH, else the one in the nvidia-cuda-nvcc wheel; ValueError if none."""
    found = shutil.which("ptxas")
    if found:
        return found
    try:
        from nvidia import cuda_nvcc

        candidate = os.path.join(list(cuda_nvcc.__path__)[0], "bin", "ptxas")
        if os.path.exists(candidate):
            return candidate
    except ImportError:
        pass
    raise ValueError("ptxas was not found: put it on PATH, or pip install "
                     "'numba-cuda[cu12]' (its nvidia-cuda-nvcc wheel holds ptxas).")


def kernel_resources(path: str, rows_per_block: int, arch: str, ptxas: str) -> list:
    """(kernel name, resources) for every kernel of the saved program at `path`."""
    import rshop_ir
    from rshop_ir.kernels.cuda.ptx_check import generated_ptx

    capability = tuple(int(digit) for digit in arch.removeprefix("sm_"))
    ptx, _ = generated_ptx(rshop_ir.optimize(rshop_ir.load(path)), rows_per_block,
                           capability)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, text in ptx.items():
            ptx_path = os.path.join(folder, f"{name}.ptx")
            with open(ptx_path, "w") as handle:
                handle.write(text)
            done = subprocess.run([ptxas, f"-arch={arch}", "-O3", "-v", ptx_path, "-o",
                                   os.path.join(folder, f"{name}.cubin")],
                                  capture_output=True, text=True, check=True)
            rows.append((name, parse_ptxas(done.stdout + done.stderr)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cuda_resources",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("programs", nargs="+", help="saved programs (rshop_ir.save)")
    parser.add_argument("--rows", default="4", help="rows per block, comma-separated")
    parser.add_argument("--arch", default="sm_90", help="GPU architecture for ptxas")
    args = parser.parse_args(argv)
    from rshop_ir.kernels.cuda import device

    available, reason = device.nvvm_available()
    if not available:
        raise SystemExit(f"NVVM is needed to compile the kernels to PTX: {reason}")
    ptxas = find_ptxas()
    print("| program | rows per block | kernel | registers | stack bytes | spill stores "
          "| spill loads | shared bytes |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for path in args.programs:
        for rows in (int(item) for item in args.rows.split(",")):
            for name, found in kernel_resources(path, rows, args.arch, ptxas):
                print(f"| {os.path.basename(path.rstrip('/'))} | {rows} | {name} | "
                      f"{found['registers']} | {found['stack_bytes']} | "
                      f"{found['spill_store_bytes']} | {found['spill_load_bytes']} | "
                      f"{found['shared_bytes']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
