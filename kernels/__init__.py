"""Code generators and runtimes (imported as `rshop_ir.kernels`).

lowering.py and scalar_ops.py are shared by every target: which eqns a scan absorbs,
how body values are stored, and each element-wise op as a scalar expression.
compiled_program_base.py (the text views and weights of a compiled program) and
module_files.py (writing and importing generated modules) are shared by the runtimes
and loaders of every target. cpu/ is the Numba CPU renderer and runtime, cuda/ the Numba
CUDA one. Kernels depend only on the IR, never on Keras.
"""
