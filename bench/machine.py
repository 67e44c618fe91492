"""The machine a run happened on, and one `--threads` setting for every library.

`configure_threads(n)` must run before TensorFlow, numba or BLAS start their thread
pools: the CLI calls it right after parsing its arguments, before building any model.
Settings that a library no longer accepts (TensorFlow once initialised) are reported
back as notes instead of failing.
"""

from importlib import metadata
import os
import platform

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
LIBRARIES = {  # name shown -> distributions that provide it
    "numpy": ("numpy",), "scipy": ("scipy",), "keras": ("keras",),
    "tensorflow": ("tensorflow", "tensorflow-cpu"), "numba": ("numba",),
    "llvmlite": ("llvmlite",), "onnx": ("onnx",), "onnxruntime": ("onnxruntime",),
    "torch": ("torch",), "jax": ("jax",), "jaxlib": ("jaxlib",),
    "threadpoolctl": ("threadpoolctl",),
}


def configure_threads(threads):
    """Limits every library to `threads` threads; returns notes on what it could not."""
    notes = []
    if not threads:
        return notes
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        notes.append("threadpoolctl not installed: BLAS limited through env vars only")
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError as error:  # TensorFlow already initialised (e.g. in tests)
        notes.append(f"tensorflow threads unchanged: {error}")
    except ImportError:
        pass
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError) as error:
        notes.append(f"numba threads unchanged: {error}")
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    return notes


def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _blas():
    try:
        from threadpoolctl import threadpool_info

        return [{key: pool.get(key) for key in
                 ("user_api", "internal_api", "version", "num_threads", "architecture")}
                for pool in threadpool_info()]
    except ImportError:
        pass
    try:
        import numpy as np

        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return [{"internal_api": blas.get("name"), "version": blas.get("version")}]
    except Exception:  # numpy < 1.25 has no dict form
        return []


def _gpu():
    """The GPU's description, through the one module that imports Numba's CUDA target."""
    try:
        from rshop_ir.kernels.cuda.device import cuda_available, in_simulator

        available, description = cuda_available()
        if available and not in_simulator():
            return description
    except Exception:  # numba without its CUDA parts, or a broken driver
        pass
    return None


def library_versions():
    """Installed versions (package metadata: nothing is imported), None if absent."""
    versions = {"python": platform.python_version()}
    for name, distributions in LIBRARIES.items():
        versions[name] = None
        for distribution in distributions:
            try:
                versions[name] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def machine_info():
    """A JSON-ready description of this machine and its libraries."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "gpu": _gpu(),
        "blas": _blas(),
        "keras_backend": _keras_backend(),
        "versions": library_versions(),
    }


def _keras_backend():
    try:
        import keras

        return keras.backend.backend()
    except ImportError:
        return None


def describe(info):
    """One line for the console."""
    blas = ", ".join(f"{pool.get('internal_api')} {pool.get('version')}"
                     for pool in info["blas"]) or "unknown BLAS"
    return (f"{info['cpu']}, {info['usable_cores']}/{info['cores']} cores, {blas}; "
            f"GPU: {info['gpu'] or 'none'}")
