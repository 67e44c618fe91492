"""Which kernel target to use: "auto" means CUDA on a real GPU, the CPU otherwise.

    target = resolve_target("auto")             # "cuda" or "cpu"
    compiled = compile_for(layer, "auto")       # CUDA, or the CPU when CUDA cannot

Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) counts for an explicit target="cuda"
(that is how the CUDA kernels are tested without a GPU) but never for "auto": a
simulated kernel is far slower than the CPU one.
"""

from __future__ import annotations

from rshop_ir.errors import UnsupportedError

TARGET_CHOICES = ("auto", "cpu", "cuda")


def gpu_present() -> bool:
    """True when a real CUDA GPU can run kernels here (the simulator does not count)."""
    try:
        from rshop_ir.kernels.cuda.device import cuda_available, in_simulator
    except ImportError:  # numba without its CUDA target
        return False
    return not in_simulator() and cuda_available()[0]


def resolve_target(target: str) -> str:
    """"auto" -> "cuda" on a real GPU, else "cpu"; "cpu"/"cuda" are kept."""
    if target not in TARGET_CHOICES:
        raise ValueError(f"Unknown target {target!r}. Expected one of "
                         f"{', '.join(repr(choice) for choice in TARGET_CHOICES)}.")
    if target == "auto":
        return "cuda" if gpu_present() else "cpu"
    return target


def compile_for(target_object, target: str = "auto"):
    """`rshop_ir.compile` on the resolved target. For "auto", a program the CUDA
    generator cannot handle is compiled for the CPU instead; UnsupportedError only
    when neither can."""
    from rshop_ir.compile import compile as compile_target

    resolved = resolve_target(target)
    if target == "auto" and resolved == "cuda":
        try:
            return compile_target(target_object, target="cuda")
        except UnsupportedError:
            resolved = "cpu"
    return compile_target(target_object, target=resolved)
