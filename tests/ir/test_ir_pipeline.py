"""The standard pipeline on the hand-built LSTM: the golden optimised IR, the same numbers
as the unoptimised program, and the RSHOP_DEBUG switch."""

import numpy as np

import rshop_ir
from rshop_ir import BoundProgram, interpret, optimize, verify
from rshop_ir.examples import (decoder_program, lstm_program, nested_program, random_inputs,
                               random_weights, readout_program)
from rshop_ir.passes.pipeline import PIPELINE

LSTM_OPTIMIZED = """
    { params a:f32[3,4]=lstm/Wi, b:f32[3,4]=lstm/Wf, c:f32[3,4]=lstm/Wc, d:f32[3,4]=lstm/Wo,
        e:f32[4,4]=lstm/Ui, f:f32[4,4]=lstm/Uf, g:f32[4,4]=lstm/Uc, h:f32[4,4]=lstm/Uo,
        i:f32[4]=lstm/bi, j:f32[4]=lstm/bf, k:f32[4]=lstm/bc, l:f32[4]=lstm/bo
      inputs m:f32[B,T,3], n:f32[B,4]=0.0, o:f32[B,4]=0.0
      precompute
        p:f32[3,16] = concatenate a b c d [axis=1]
        q:f32[4,16] = concatenate e f g h [axis=1]
        -> (p, q)
      let
        r:f32[B,T,16] = matmul m p
        s:f32[B,4] t:f32[B,4] u:f32[B,4] = scan r n o i j k l q [go_backwards=False,
            length=None, masked=False, num_constants=5, num_sequences=1, num_states=2,
            readout=False, return_sequences=False]
            body={ inputs v:f32[B,16], w:f32[B,4], x:f32[B,4], y:f32[4], z:f32[4], ba:f32[4],
                bb:f32[4], bc:f32[4,16]
                   let
                     bd:f32[B,4] = slice v [axis=-1, start=0, stop=4]
                     be:f32[B,4] = slice v [axis=-1, start=4, stop=8]
                     bf:f32[B,4] = slice v [axis=-1, start=8, stop=12]
                     bg:f32[B,4] = slice v [axis=-1, start=12, stop=16]
                     bh:f32[B,16] = matmul w bc
                     bi:f32[B,4] = slice bh [axis=-1, start=0, stop=4]
                     bj:f32[B,4] = slice bh [axis=-1, start=4, stop=8]
                     bk:f32[B,4] = slice bh [axis=-1, start=8, stop=12]
                     bl:f32[B,4] = slice bh [axis=-1, start=12, stop=16]
                     bm:f32[B,4] = fused bd bi y be bj z bf bk ba x
                         body={ inputs bn:f32[B,4], bo:f32[B,4], bp:f32[4], bq:f32[B,4],
                             br:f32[B,4], bs:f32[4], bt:f32[B,4], bu:f32[B,4], bv:f32[4],
                             bw:f32[B,4]
                                let
                                  bx:f32[B,4] = add bn bo
                                  by:f32[B,4] = bias_add bx bp
                                  bz:f32[B,4] = add bq br
                                  ca:f32[B,4] = bias_add bz bs
                                  cb:f32[B,4] = add bt bu
                                  cc:f32[B,4] = bias_add cb bv
                                  cd:f32[B,4] = sigmoid by
                                  ce:f32[B,4] = sigmoid ca
                                  cf:f32[B,4] = tanh cc
                                  cg:f32[B,4] = mul ce bw
                                  ch:f32[B,4] = mul cd cf
                                  ci:f32[B,4] = add cg ch
                                in (ci) }
                     cj:f32[B,4] = fused bg bl bb bm
                         body={ inputs ck:f32[B,4], cl:f32[B,4], cm:f32[4], cn:f32[B,4]
                                let
                                  co:f32[B,4] = add ck cl
                                  cp:f32[B,4] = bias_add co cm
                                  cq:f32[B,4] = sigmoid cp
                                  cr:f32[B,4] = tanh cn
                                  cs:f32[B,4] = mul cq cr
                                in (cs) }
                   in (cj, cj, bm) }
      in (s, t, u) }
"""


def normalized(text):
    return " ".join(text.split())


def count_ops(program, op):
    """Occurrences of `op`, in nested bodies and the prologue too."""
    total = sum(1 for eqn in program.eqns if eqn.op == op)
    if program.prologue is not None:
        total += count_ops(program.prologue, op)
    for eqn in program.eqns:
        total += sum(count_ops(body, op) for body in eqn.nested_programs())
    return total


def test_lstm_golden_after_optimize():
    program = lstm_program(3, 4)
    optimized = optimize(program)
    assert normalized(str(optimized)) == normalized(LSTM_OPTIMIZED), "\n" + str(optimized)
    assert count_ops(program, "matmul") == 8
    assert count_ops(optimized, "matmul") == 2       # one hoisted input GEMM, one per step
    body = optimized.eqns[-1].params["body"]
    assert [eqn.op for eqn in body.eqns].count("matmul") == 1


def test_optimize_keeps_numbers_for_lstm_variants():
    for options in ({}, {"return_sequences": True}, {"go_backwards": True, "masked": True},
                    {"masked": True, "return_sequences": True}):
        program = lstm_program(5, 6, **options)
        optimized = verify(optimize(program))
        weights = random_weights(program, seed=2)
        for seed in range(2):
            inputs = random_inputs(program, batch=4, steps=7, seed=seed)
            expected = interpret(program, *inputs, weights=weights)
            actual = interpret(optimized, *inputs, weights=weights)
            for want, got in zip(expected, actual):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_optimize_keeps_numbers_for_readout_decoder_and_nested_rnns():
    programs = [readout_program(), readout_program(masked=True), decoder_program(),
                nested_program()]
    for program in programs:
        optimized = verify(optimize(program))
        weights = random_weights(program, seed=6)
        inputs = random_inputs(program, seed=6)
        expected = interpret(program, *inputs, weights=weights)
        for want, got in zip(expected, interpret(optimized, *inputs, weights=weights)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    decoder = optimize(decoder_program())
    assert decoder.eqns[0].op == "matmul"          # encoded @ W left the loop
    nested = optimize(nested_program())
    assert str(nested.eqns[0].outputs[0].type) == "f64[B,T,5,4]"   # through both loops


def test_float64_lstm_matches_to_1e_10_and_optimize_is_idempotent():
    program = lstm_program(3, 4, "float64", return_sequences=True)
    once = optimize(program)
    twice = verify(optimize(once))
    assert normalized(str(twice)) == normalized(str(once))
    weights = random_weights(program, seed=5)
    inputs = random_inputs(program, steps=100, seed=5)
    expected = interpret(program, *inputs, weights=weights)
    for want, got in zip(expected, interpret(twice, *inputs, weights=weights)):
        assert np.abs(got - want).max() < 1e-10


def test_bound_program_optimizes_with_its_weights():
    program = lstm_program(3, 4)
    bound = BoundProgram(program, random_weights(program))
    optimized = optimize(bound)
    assert isinstance(optimized, BoundProgram)
    inputs = random_inputs(program)
    np.testing.assert_allclose(optimized(*inputs)[0], bound(*inputs)[0], rtol=1e-5, atol=1e-6)


def test_pipeline_is_one_named_list():
    names = [name for name, _ in PIPELINE]
    assert len(names) == len(set(names))
    assert {"fold_constants", "simplify", "cse", "dce", "merge_gemms", "hoist",
            "precompute_weights", "fuse_elementwise"} <= set(names)


def test_rshop_debug_prints_ir_after_each_pass(monkeypatch, capsys):
    monkeypatch.setenv("RSHOP_DEBUG", "1")
    optimize(lstm_program(3, 4))
    errors = capsys.readouterr().err
    for name, _ in PIPELINE:
        assert f"--- IR after {name} (" in errors
    monkeypatch.setenv("RSHOP_DEBUG", "0")
    optimize(lstm_program(3, 4))
    assert capsys.readouterr().err == ""


def test_public_api_exports():
    for name in ("Program", "Var", "ProgramBuilder", "optimize", "interpret", "verify", "save",
                 "load", "UnsupportedError", "OPS", "get_op"):
        assert hasattr(rshop_ir, name)
