"""Letting LLVM vectorise a generated kernel's loops with the widest vectors the CPU has.

On CPUs with AVX-512, LLVM's tuning for Intel cores prefers 256-bit vectors when it
vectorises loops itself (the "prefer-256-bit" tuning), so the gate loops of a kernel
(tanh, sigmoid, exp as rational or polynomial approximations) ran 8 lanes at a time
where the core has 16. Vectors the kernels write out explicitly (packed_product.py)
are not affected. A function carrying the attribute "prefer-vector-width"="512" gets
16-lane loops; on CPUs without AVX-512 the attribute changes nothing (the vector width
stays what the CPU has).

Measured on one core of the 2-core development machine (Intel Xeon, Emerald Rapids;
ad-hoc script timing 100,000 rounds of one gate loop over 256 float32 values, the
generated kernels' loop shape): bias add + sigmoid 169 -> 121-125 ns, bias add + tanh
143 -> 103 ns, plain adds 20-22 ns either way.

`wide_vectors()` is an intrinsic each generated function calls first: it emits no code
and marks the function it is compiled into. llvmlite checks a function's attributes
against a fixed list of LLVM's keyword attributes, which has no key-value ones, so the
attribute goes into the attribute set directly; it is written into the function's
definition as LLVM IR text, where a quoted key-value attribute is valid.
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic

PREFERRED_WIDTH = '"prefer-vector-width"="512"'


@intrinsic
def wide_vectors(typing_context):
    """Mark the calling function to be vectorised with 512-bit vectors (see the module
    docstring); no code."""
    signature = types.void()

    def codegen(context, builder, sig, arguments):
        # set.add: the attribute set's own `add` accepts keyword attributes only
        set.add(builder.function.attributes, PREFERRED_WIDTH)
        return context.get_dummy_value()
    return signature, codegen
