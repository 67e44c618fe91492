"""Frontends (imported as `rshop_ir.frontends`); the Keras API itself is `recurrentshop`."""
