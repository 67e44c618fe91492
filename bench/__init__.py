"""rshop-bench: the benchmark harness of RecurrentShop IR (`python -m bench`).

    sizes.py        problem sizes (presets, B,T,I,H parsing)
    suites.py       the benchmarked models and their inputs
    backend_base.py what a backend is; RunSettings
    backends.py     Keras reference, keras.layers built-ins, XLA, rshop_ir compiled
    peers.py        optional peers: ONNX Runtime, PyTorch, JAX
    machine.py      machine description, one thread setting for all libraries
    runner.py       the method: correctness gate, warm-up, interleaved medians
    report.py       table, JSON (schema), PNG plot
    cli.py          the command line;  demo.py  the `make demo` main job

Installed as `rshop_ir.bench` (console script `rshop-bench`); imports inside are
relative so that both names work.
"""
