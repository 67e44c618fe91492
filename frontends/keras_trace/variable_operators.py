"""Operators between a Keras variable and a traced value, written as keras.ops calls.

A layer's call() re-traced on KerasTensors (walk.retrace_layer_call) may write a weight
on the left of an operator: `self.gamma * inputs`, `self.bias + inputs`,
`self.kernel @ inputs`. Keras's `Variable` implements those operators with the
backend's own functions (TensorFlow's `multiply` on the variable's value), which refuse
a KerasTensor, so such a layer could only run in Keras. With the operand on the right
(`inputs * self.gamma`) the KerasTensor's operator runs, a keras.ops call that traces.

`symbolic_variable_operators()` is a scope in which the operators of `keras.Variable`
whose other operand is a KerasTensor call the keras.ops function instead (the same
function the backend would run, so the same numbers); any other operand goes to Keras's
own operator. The scope patches the class, so it is counted: nested and concurrent
traces share one patch, removed when the last scope ends.
"""

from __future__ import annotations

import contextlib
import threading

import keras
from keras import ops

# operator -> (keras.ops function, whether the variable is its second operand)
_OPERATORS = {
    "__add__": (ops.add, False), "__radd__": (ops.add, True),
    "__sub__": (ops.subtract, False), "__rsub__": (ops.subtract, True),
    "__mul__": (ops.multiply, False), "__rmul__": (ops.multiply, True),
    "__truediv__": (ops.true_divide, False), "__rtruediv__": (ops.true_divide, True),
    "__floordiv__": (ops.floor_divide, False), "__rfloordiv__": (ops.floor_divide, True),
    "__mod__": (ops.mod, False), "__rmod__": (ops.mod, True),
    "__pow__": (ops.power, False), "__rpow__": (ops.power, True),
    "__matmul__": (ops.matmul, False), "__rmatmul__": (ops.matmul, True),
    "__lt__": (ops.less, False), "__le__": (ops.less_equal, False),
    "__gt__": (ops.greater, False), "__ge__": (ops.greater_equal, False),
}

_lock = threading.Lock()
_active = 0
_saved = {}     # operator -> the entry of keras.Variable's own __dict__ it replaced, or None


def _symbolic_operator(name, function, reflected, keras_operator):
    def operator(variable, other):
        if isinstance(other, keras.KerasTensor):
            return function(other, variable) if reflected else function(variable, other)
        return keras_operator(variable, other)
    operator.__name__ = name
    return operator


@contextlib.contextmanager
def symbolic_variable_operators():
    """A scope in which `variable <op> keras_tensor` traces as a keras.ops call."""
    global _active
    with _lock:
        if _active == 0:
            for name, (function, reflected) in _OPERATORS.items():
                _saved[name] = keras.Variable.__dict__.get(name)
                setattr(keras.Variable, name, _symbolic_operator(
                    name, function, reflected, getattr(keras.Variable, name)))
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                for name, own in _saved.items():
                    if own is None:
                        delattr(keras.Variable, name)
                    else:
                        setattr(keras.Variable, name, own)
                _saved.clear()
