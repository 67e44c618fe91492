"""Passes: plain `Program -> Program` functions, composed in pipeline.PIPELINE."""

from rshop_ir.passes.cse import cse
from rshop_ir.passes.dce import dce
from rshop_ir.passes.fold_constants import fold_constants
from rshop_ir.passes.fuse_elementwise import fuse_elementwise
from rshop_ir.passes.hoist import hoist
from rshop_ir.passes.merge_gemms import merge_gemms
from rshop_ir.passes.pipeline import PIPELINE, optimize
from rshop_ir.passes.precompute_weights import precompute_weights
from rshop_ir.passes.reassociate_products import reassociate_products
from rshop_ir.passes.simplify import simplify
from rshop_ir.passes.sink_output_projection import sink_output_projection
from rshop_ir.passes.sink_slices import sink_slices
from rshop_ir.passes.split_concat_matmul import split_concat_matmul

__all__ = ["PIPELINE", "cse", "dce", "fold_constants", "fuse_elementwise", "hoist",
           "merge_gemms", "optimize", "precompute_weights", "reassociate_products", "simplify",
           "sink_output_projection", "sink_slices", "split_concat_matmul"]
