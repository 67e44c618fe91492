"""rshop_ir: the RecurrentShop compiler (typed graph IR, passes, Numba kernels).

The Keras-independent core (this package minus frontends) imports only numpy and scipy:

    Program, Var, Literal, Eqn, TensorType   the IR data model (ir.py)
    ProgramBuilder                           building programs with shape inference
    OPS, OpDef, get_op, register             the one op table (ops/)
    verify                                   the verifier
    interpret, BoundProgram                  the numpy reference interpreter
    optimize, PIPELINE                       the standard pass pipeline (passes/)
    save, load                               portable JSON + .npz form
    trace                                    Keras -> IR (imports Keras on first use)
"""

from rshop_ir.bound import BoundProgram
from rshop_ir.builder import ProgramBuilder
from rshop_ir.errors import IRFormatError, IRVerificationError, UnsupportedError
from rshop_ir.interpret import interpret, run_prologue
from rshop_ir.ir import Eqn, Literal, Params, Program, TensorType, Var
from rshop_ir.ops import OPS, OpDef, get_op, register
from rshop_ir.passes.pipeline import PIPELINE, optimize
from rshop_ir.serialize import load, save
from rshop_ir.verify import verify



def trace(layer_or_model):
    """Trace a recurrent layer or a Keras model into an unoptimised `BoundProgram`.

    The tracer lives in the Keras frontend, imported only here, so that loading and
    interpreting programs never imports Keras or TensorFlow.
    """
    from rshop_ir.frontends.keras_trace import trace as trace_keras

    return trace_keras(layer_or_model)


__all__ = [
    "BoundProgram", "Eqn", "IRFormatError", "IRVerificationError", "Literal", "OPS",
    "OpDef", "PIPELINE", "Params", "Program", "ProgramBuilder", "TensorType",
    "UnsupportedError", "Var", "get_op", "interpret", "load", "optimize", "register",
    "run_prologue", "save", "trace", "verify",
]

# The public compile entry point (rshop_ir/compile.py; kernels in rshop_ir.kernels).
from rshop_ir.compile import compile  # noqa: E402,F401  (shadows the submodule name)

__all__.append("compile")
from rshop_ir.accelerate import AcceleratedModel, accelerate  # noqa: E402

__all__ += ["AcceleratedModel", "accelerate"]
