"""recurrentshop: write ONE timestep of an RNN as a Keras functional model, get a layer.

The Keras 3 frontend of RecurrentShop IR. The compiler lives in `rshop_ir`.
"""

from recurrentshop.backends import BACKEND_NAMES
from recurrentshop.builtin_cells import GRUCell, LSTMCell, SimpleRNNCell
from recurrentshop.cells import ExtendedRNNCell, RNNCell, RNNCellFromModel
from recurrentshop.recurrent_model import RecurrentModel
from recurrentshop.recurrent_sequential import RecurrentSequential
from recurrentshop.rhn_cell import RHNCell
from recurrentshop.slicing import get_slices

__all__ = [
    "BACKEND_NAMES",
    "ExtendedRNNCell",
    "GRUCell",
    "LSTMCell",
    "RHNCell",
    "RNNCell",
    "RNNCellFromModel",
    "RecurrentModel",
    "RecurrentSequential",
    "SimpleRNNCell",
    "get_slices",
]
