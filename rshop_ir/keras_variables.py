"""Watching the Keras variables behind a compiled layer, cheaply, before every call.

A compiled Keras layer must see weight changes (training, `set_weights`) on its next
call, so each call asks its `VariableWatcher` whether the variables changed.

On the TensorFlow backend the watcher reads all the variables with one raw
`_ReadVariablesOp` (~20 us for 9 variables; one ReadVariableOp costs ~7 us per
variable, `variable.numpy()` ~35 us through Keras and tf.Variable). The tensor a
read returns shares the variable's buffer, and TensorFlow keeps such a tensor an
immutable snapshot: while it is alive, every write (assign, assign_add, an optimizer
step, an XLA-compiled train step, `set_weights`) gives the variable a NEW buffer (copy
on write; tests/test_kernel_keras.py checks each of these paths). So the watcher keeps
the arrays of its last read, and a variable changed exactly when a fresh read no longer
shares the kept buffer: no element-wise comparison of megabytes of weights per call.
On other backends it falls back to reading and comparing every value.
"""

from __future__ import annotations

import numpy as np


class VariableWatcher:
    """`watcher()` -> name -> current array; `watcher.poll()` -> that dict when any
    variable changed since the last poll or call, else None.

    Args:
        variables: param name -> keras.Variable.
    """

    def __init__(self, variables: dict):
        self._variables = dict(variables)
        self._names = list(self._variables)
        self._read_all = self._raw_reader()
        self._kept = None      # the arrays of the last read, in `_names` order

    def _raw_reader(self):
        """A function () -> the arrays of every variable (in `_names` order) reading them
        through ONE eager TF op (`_ReadVariablesOp`: ~17 us for 8 variables, against ~7 us
        per variable with a ReadVariableOp each), or one op per variable where that op
        is missing; None on other backends."""
        names = self._names
        try:
            from tensorflow.python.eager import context, execute

            handles = [self._variables[name]._value.handle for name in names]
            dtypes = [self._variables[name]._value.dtype.as_datatype_enum for name in names]
        except (ImportError, AttributeError):
            return None
        run_op, eager_context = execute.quick_execute, context.context
        attributes = ("N", len(names), "dtypes", dtypes)

        def read_all():
            if not names:
                return []
            tensors = run_op("_ReadVariablesOp", len(names), handles, attributes,
                             eager_context())
            # `_numpy()` is the array view `np.asarray` would give, without its checks.
            return [tensor._numpy() for tensor in tensors]

        def read_each():
            return [run_op("ReadVariableOp", 1, [handle], ("dtype", dtype),
                           eager_context())[0]._numpy()
                    for handle, dtype in zip(handles, dtypes)]

        try:
            read_all()
        except Exception:   # a TensorFlow build or device without the op
            return read_each
        return read_all

    def _read(self) -> list:
        if self._read_all is None:
            return [np.asarray(self._variables[name].numpy()) for name in self._names]
        return self._read_all()

    def __call__(self) -> dict:
        self._kept = self._read()
        return dict(zip(self._names, self._kept))

    def poll(self):
        """The current weights if any variable changed since the last read, else None.
        Costs one read and no dict while nothing changed (it runs before every call)."""
        kept = self._kept
        if kept is None:
            return self()
        fresh = self._read()
        if self._read_all is None:
            same = all(np.array_equal(new, old) for new, old in zip(fresh, kept))
        else:
            # Both buffers are alive, so they overlap exactly when they are the same one
            # (a write gives the variable a new buffer while the kept one lives).
            same = all(np.may_share_memory(new, old) for new, old in zip(fresh, kept))
        if same:
            return None
        self._kept = fresh
        return dict(zip(self._names, fresh))
