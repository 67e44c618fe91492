"""rshop_ir: the RecurrentShop compiler (typed graph IR, passes, Numba kernels)."""

from rshop_ir.errors import UnsupportedError

__all__ = ["UnsupportedError"]
