"""The state of one trace: the program being built, its weights, and the masks.

A `TraceContext` wraps a `ProgramBuilder`. Keras variables become program params the
first time a rule asks for them (`param_for`), named by their Keras path, so weights are
never baked into the program. A scan body is traced in a child context: there a
variable becomes a body input (a scan constant) fed from the parent's param.
"""

import numpy as np

from rshop_ir.builder import ProgramBuilder
from rshop_ir.errors import UnsupportedError


class TraceContext:
    def __init__(self, parent=None, float_dtype="float32"):
        self.builder = ProgramBuilder()
        self.parent = parent
        self.float_dtype = float_dtype if parent is None else parent.float_dtype
        # id(keras variable) -> Var in this program.
        self._vars_for_variables = {}
        # Root only: param name -> keras variable (to read current weights).
        self.variables_by_name = {} if parent is None else parent.variables_by_name
        # Child only: the parent's Vars to pass as scan constants, in body input order.
        self.outer_constants = []
        # id(Var) -> boolean mask Var (B, T) propagated like Keras's `_keras_mask`.
        self.masks = {}

    def child(self):
        return TraceContext(parent=self)

    # ------------------------------------------------------------------- weights
    def param_for(self, variable):
        """The Var holding keras `variable` in this program."""
        key = id(variable)
        if key in self._vars_for_variables:
            return self._vars_for_variables[key]
        dtype = np.dtype(variable.dtype).name
        shape = tuple(int(d) for d in variable.shape)
        if self.parent is None:
            var = self.builder.param(self._unique_name(variable), dtype, shape)
        else:
            outer = self.parent.param_for(variable)
            var = self.builder.input(dtype, shape, name=f"const/{len(self.outer_constants)}")
            self.outer_constants.append(outer)
        self._vars_for_variables[key] = var
        return var

    def constant_input(self, outer_var, name):
        """Declare a body input fed by `outer_var` of the parent (a scan constant)."""
        var = self.builder.input(outer_var.dtype, outer_var.shape, name=name)
        self.outer_constants.append(outer_var)
        return var

    def _unique_name(self, variable):
        base = getattr(variable, "path", None) or variable.name
        name = base
        index = 1
        while name in self.variables_by_name:
            name = f"{base}_{index}"
            index += 1
        self.variables_by_name[name] = variable
        return name

    # --------------------------------------------------------------------- emit
    def apply(self, op, *inputs, **params):
        return self.builder.apply(op, *inputs, **params)

    def emit(self, op, inputs, **params):
        return self.builder.emit(op, inputs, **params)

    def constant(self, array):
        """A numpy array as a `constant` eqn: its values, dtype and shape."""
        array = np.asarray(array)
        return self.apply("constant", value=tuple(array.ravel().tolist()),
                          dtype=array.dtype.name, shape=array.shape)

    def mask_of(self, value):
        return self.masks.get(id(value))

    def set_mask(self, value, mask):
        if mask is not None:
            self.masks[id(value)] = mask


def unsupported(layer, what):
    """An `UnsupportedError` naming the layer (by its Keras name) and what failed."""
    name = getattr(layer, "name", repr(layer))
    return UnsupportedError(
        f"Layer {name!r} ({type(layer).__name__}) cannot be compiled: "
        f"{str(what).rstrip('.')}. With "
        "backend='auto' or rshop_ir.accelerate it runs in Keras instead."
    )
