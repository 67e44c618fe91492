"""The op table. Importing this package registers every op; see registry.py."""

from rshop_ir.ops import elementwise, fused, linalg, reductions, scan, structure  # noqa: F401
from rshop_ir.ops.linalg import is_row_norm
from rshop_ir.ops.registry import OPS, REQUIRED, OpDef, get_op, register
from rshop_ir.ops.scan import ScanLayout

__all__ = ["OPS", "REQUIRED", "OpDef", "ScanLayout", "get_op", "is_row_norm", "register"]
