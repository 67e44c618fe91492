"""Watching the Keras variables behind a compiled layer, cheaply, before every call.

A compiled Keras layer must see weight changes (training, `set_weights`) on its next
call, so each call asks its `VariableWatcher` whether the variables changed.

On the TensorFlow backend the watcher reads each variable with one raw ReadVariableOp
(~6 us; `variable.numpy()` costs ~35 us through Keras and tf.Variable). The tensor a
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
        self._read_one = self._raw_reader()
        self._kept = None

    def _raw_reader(self):
        """A function name -> array reading through one eager TF op, or None elsewhere."""
        try:
            from tensorflow.python.eager import context, execute

            reads = {name: ([variable._value.handle],
                            ("dtype", variable._value.dtype.as_datatype_enum))
                     for name, variable in self._variables.items()}
        except (ImportError, AttributeError):
            return None
        run_op, eager_context = execute.quick_execute, context.context

        def read(name):
            handles, attributes = reads[name]
            # `_numpy()` is the array view `np.asarray` would give, without its checks.
            return run_op("ReadVariableOp", 1, handles, attributes, eager_context())[0]._numpy()

        return read

    def __call__(self) -> dict:
        if self._read_one is None:
            current = {name: np.asarray(variable.numpy())
                       for name, variable in self._variables.items()}
        else:
            current = {name: self._read_one(name) for name in self._variables}
        self._kept = current
        return dict(current)

    def poll(self):
        """The current weights if any variable changed since the last read, else None."""
        kept = self._kept
        if kept is None:
            return self()
        if self._read_one is None:
            current = self()
            same = all(np.array_equal(current[name], kept[name]) for name in kept)
            return None if same else current
        read = self._read_one
        for name, array in kept.items():
            fresh = read(name)
            # Both buffers are alive, so they overlap exactly when they are the same one.
            if fresh.shape != array.shape or not np.may_share_memory(fresh, array):
                return self()
        return None
