"""Loading a generated kernel's machine code from Numba's disk cache, without first
loading every implementation Numba has.

Before Numba loads a function from its disk cache it refreshes its target context:
it imports and registers all of its typing and lowering implementations (the NumPy
and linear-algebra ones, with SciPy's, among them) and initialises its runtime. A
compile needs the implementations; a load does not: the machine code, its Python
wrapper and its environment come from the cache, and the runtime is all they call
into. Measured on the 2-core development machine (LSTM (1, 100, 32, 64), a fresh
process with a warm cache, ad-hoc script, five runs each): the kernel's first call
took 0.21-0.31 s with the refresh and 0.05-0.07 s without it.

`load_quickly(module)` gives the Numba functions a generated module defines a cache
that only initialises the runtime before loading. A compile (a cache miss, or any
other function compiled later in the process) still refreshes the context itself
(Numba's compiler does it before every compilation), so nothing compiled later
misses an implementation.
"""

from __future__ import annotations

from numba.core.caching import FunctionCache
from numba.core.dispatcher import Dispatcher
from numba.core.runtime import nrt


class QuickLoadingCache(FunctionCache):
    """Numba's function cache, loading without the target context's refresh."""

    def load_overload(self, sig, target_context):
        nrt.rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)


def load_quickly(module) -> None:
    """Give every cached Numba function `module` defines (not the ones it imports) a
    QuickLoadingCache."""
    for value in vars(module).values():
        if isinstance(value, Dispatcher) \
                and getattr(value.py_func, "__module__", None) == module.__name__ \
                and type(value._cache) is FunctionCache:
            value._cache = QuickLoadingCache(value.py_func)
