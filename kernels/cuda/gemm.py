"""The GEMM before the loop kernels: C (M, N) = A (M, K) @ W (K, N), all float, on device.

W is a slice of the packed weight buffer (`weights[offset : offset + K * N]`, row-major).
With CuPy importable (and a real GPU) this is `cupy.matmul` (cuBLAS) on zero-copy views;
otherwise a tiled Numba kernel: a TILE x TILE block stages one tile of A and one of W in
shared memory per step along K, each thread accumulating one element of C. Under the
simulator, where every barrier of every block costs Python thread switches, the default
is a grid-stride kernel without shared memory (one thread per element of C); the
tiled kernel is still checked there by asking for it (`method="tiled"`).

    gemm(a, rows, k, weights, offset, n, out)      # a, out: flat device arrays
"""

from __future__ import annotations

import numpy as np

from rshop_ir.kernels.cuda.device import cuda, in_simulator

TILE = 16
SIMULATOR_TILE = 4


def _tiled_kernel(tile: int, scalar):
    zero = scalar(0)

    @cuda.jit
    def gemm_tiled(a, weights, offset, out, rows, k, n):
        a_tile = cuda.shared.array((tile, tile), scalar)
        w_tile = cuda.shared.array((tile, tile), scalar)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        column = cuda.blockIdx.x * tile + tx
        row = cuda.blockIdx.y * tile + ty
        total = zero
        for start in range(0, k, tile):
            if row < rows and start + tx < k:
                a_tile[ty, tx] = a[row * k + start + tx]
            else:
                a_tile[ty, tx] = zero
            if column < n and start + ty < k:
                w_tile[ty, tx] = weights[offset + (start + ty) * n + column]
            else:
                w_tile[ty, tx] = zero
            cuda.syncthreads()
            for j in range(tile):
                total += a_tile[ty, j] * w_tile[j, tx]
            cuda.syncthreads()
        if row < rows and column < n:
            out[row * n + column] = total
    return gemm_tiled


def _strided_kernel(scalar):
    zero = scalar(0)

    @cuda.jit
    def gemm_strided(a, weights, offset, out, rows, k, n):
        start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        for index in range(start, rows * n, cuda.gridDim.x * cuda.blockDim.x):
            row = index // n
            column = index - row * n
            total = zero
            for j in range(k):
                total += a[row * k + j] * weights[offset + j * n + column]
            out[index] = total
    return gemm_strided


_KERNELS = {}


def _cupy():
    if in_simulator():
        return None
    try:
        import cupy
    except Exception:
        return None
    return cupy


def backend_name() -> str:
    """Which GEMM `gemm(...)` uses by default here."""
    if _cupy() is not None:
        return "cupy (cuBLAS)"
    return "grid-stride numba kernel (simulator)" if in_simulator() else "tiled numba kernel"


def gemm(a, rows: int, k: int, weights, offset: int, n: int, out, method: str = None) -> None:
    """out = a @ W; method: None (the default for the machine), "cupy", "tiled" or
    "strided"."""
    rows, k, n = int(rows), int(k), int(n)
    if rows == 0 or n == 0:
        return
    if method not in (None, "cupy", "tiled", "strided"):
        raise ValueError(f"Unknown GEMM method {method!r}; expected 'cupy', 'tiled' or "
                         f"'strided'.")
    cupy = _cupy() if method in (None, "cupy") else None
    if method == "cupy" and cupy is None:
        raise ValueError("method='cupy' needs CuPy and a real GPU.")
    scalar = np.dtype(out.dtype).type
    if method == "strided" or (method is None and cupy is None and in_simulator()):
        kernel = _KERNELS.get(("strided", scalar))
        if kernel is None:
            kernel = _KERNELS["strided", scalar] = _strided_kernel(scalar)
        blocks, threads = (1, 32) if in_simulator() else (
            min(4096, (rows * n + 255) // 256), 256)
        kernel[blocks, threads](a, weights, np.int64(offset), out, np.int64(rows),
                                np.int64(k), np.int64(n))
        return
    if cupy is not None:
        left = cupy.asarray(a).reshape(rows, k)
        right = cupy.asarray(weights)[offset:offset + k * n].reshape(k, n)
        cupy.matmul(left, right, out=cupy.asarray(out).reshape(rows, n))
        return
    tile = SIMULATOR_TILE if in_simulator() else TILE
    kernel = _KERNELS.get((tile, scalar))
    if kernel is None:
        kernel = _KERNELS[tile, scalar] = _tiled_kernel(tile, scalar)
    grid = ((n + tile - 1) // tile, (rows + tile - 1) // tile)
    kernel[grid, (tile, tile)](a, weights, np.int64(offset), out, np.int64(rows),
                               np.int64(k), np.int64(n))
