"""Code generators and runtimes (imported as `rshop_ir.kernels`)."""
