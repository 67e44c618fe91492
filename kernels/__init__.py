"""Code generators and runtimes (imported as `rshop_ir.kernels`).

lowering.py and scalar_ops.py are shared by every target: which eqns a scan absorbs,
how body values are stored, and each element-wise op as a scalar expression. cpu/ is
the Numba CPU renderer and runtime. Kernels depend only on the IR, never on Keras.
"""
