"""Each pass on a small hand-built program: golden IR text after the pass, the verifier
accepts the result, and the interpreter gives the same numbers before and after."""

import numpy as np

from rshop_ir import ProgramBuilder, interpret, verify
from rshop_ir.examples import random_inputs, random_weights
from rshop_ir.passes import (PIPELINE, cse, dce, fold_constants, fuse_elementwise, hoist,
                             merge_gemms, optimize, precompute_weights,
                             reassociate_products, simplify, sink_output_projection,
                             sink_slices, split_concat_matmul)


def normalized(text: str) -> str:
    return " ".join(text.split())


def check_pass(pass_fn, program, expected: str, seeds=(0, 1)):
    """Golden text + verifier + identical interpreter output on random inputs."""
    verify(program)
    after = verify(pass_fn(program))
    assert normalized(str(after)) == normalized(expected), f"\n{after}"
    for seed in seeds:
        inputs = random_inputs(program, seed=seed)
        weights = random_weights(program, seed=seed)
        before_values = interpret(program, *inputs, weights=weights)
        after_values = interpret(after, *inputs, weights=weights)
        if not isinstance(before_values, list):
            before_values, after_values = [before_values], [after_values]
        for before, result in zip(before_values, after_values):
            assert before.dtype == result.dtype
            np.testing.assert_allclose(result, before, rtol=1e-6, atol=1e-6)
    return after


def test_simplify_table_to_fixpoint():
    b = ProgramBuilder()
    x = b.input("float32", ("B", 4))
    w = b.param("w", "float32", (4, 4))
    plain = b.apply("mul", 1.0, b.apply("sub", x, 0.0))
    dropped = b.apply("dropout", b.apply("linear", plain), rate=0.5)
    twice = b.apply("transpose", b.apply("transpose", dropped, perm=(1, 0)), perm=(1, 0))
    cast = b.apply("cast", twice, dtype="float32")
    reshaped = b.apply("reshape", b.apply("reshape", cast, shape=("B", 2, 2)), shape=("B", 4))
    times_zero = b.apply("mul", reshaped, 0.0)                               # NaN: kept
    promoted = b.apply("add", b.apply("cast", x, dtype="int32"), 0.0)        # type: kept
    signed = b.apply("add", x, 0.0)                # -0.0 + 0.0 is +0.0: kept
    program = b.build([b.apply("matmul", times_zero, w), promoted, signed])
    after = check_pass(simplify, program, """
    { params a:f32[4,4]=w
      inputs b:f32[B,4]
      let
        c:f32[4,B] = transpose b [perm=(1, 0)]
        d:f32[B,2,2] = reshape b [shape=('B', 2, 2)]
        e:f32[B,4] = mul b 0.0:f32
        f:i32[B,4] = cast b [dtype='int32']
        g:f64[B,4] = add f 0.0:f32
        h:f32[B,4] = add b 0.0:f32
        i:f32[B,4] = matmul e a
      in (i, g, h) }""")
    nan_input = [np.full((2, 4), np.nan, "float32")]
    result = interpret(after, *nan_input, weights={"w": np.ones((4, 4), "float32")})[0]
    assert np.isnan(result).all()   # x * 0 was not folded to 0


def test_fold_constants():
    b = ProgramBuilder()
    x = b.input("float32", ("B", 3))
    six = b.apply("mul", b.literal(2.0, "float32"), b.literal(3.0, "float32"))
    table = b.apply("constant", value=(1.0, 2.0, 3.0), dtype="float32", shape=(3,))
    scaled = b.apply("mul", table, six)
    one = b.apply("exp", b.apply("neg", b.literal(0.0, "float32")))
    big = b.apply("add", b.apply("fill", shape=(16, 16), value=1.0, dtype="float32"), 1.0)
    y = b.apply("mul", b.apply("add", x, scaled), one)
    check_pass(lambda p: dce(fold_constants(p)), b.build([y, big]), """
    { inputs a:f32[B,3]
      let
        b:f32[3] = constant [dtype='float32', shape=(3,), value=(6.0, 12.0, 18.0)]
        c:f32[16,16] = fill [dtype='float32', shape=(16, 16), value=1.0]
        d:f32[16,16] = add c 1.0:f32
        e:f32[B,3] = add a b
        f:f32[B,3] = mul e 1.0:f32
      in (f, d) }""")


def test_cse_commutative_and_params():
    b = ProgramBuilder()
    x, y = b.input("float32", ("B", 4)), b.input("float32", ("B", 4))
    t1 = b.apply("tanh", b.apply("mul", x, y))
    t2 = b.apply("tanh", b.apply("mul", y, x))
    out = b.apply("add", b.apply("add", t1, 2.0), b.apply("add", t2, 3.0))
    check_pass(cse, b.build([out, b.apply("sub", x, y), b.apply("sub", y, x)]), """
    { inputs a:f32[B,4], b:f32[B,4]
      let
        c:f32[B,4] = mul a b
        d:f32[B,4] = tanh c
        e:f32[B,4] = add d 2.0:f32
        f:f32[B,4] = add d 3.0:f32
        g:f32[B,4] = add e f
        h:f32[B,4] = sub a b
        i:f32[B,4] = sub b a
      in (g, h, i) }""")


def build_two_sequence_scan():
    body = ProgramBuilder()
    x, z = body.input("float32", ("B", 3)), body.input("float32", ("B", 3))
    h, carried = body.input("float32", ("B", 2)), body.input("float32", ("B", 2))
    w, unused_weight = body.input("float32", (3, 2)), body.input("float32", (2, 2))
    body.apply("tanh", body.apply("matmul", z, w))                          # dead
    new_h = body.apply("add", body.apply("matmul", x, w), h)
    b = ProgramBuilder()
    xs, zs = b.input("float32", ("B", "T", 3)), b.input("float32", ("B", "T", 3))
    h0, s0 = b.input("float32", ("B", 2)), b.input("float32", ("B", 2))
    weights = [b.param("W", "float32", (3, 2)), b.param("U", "float32", (2, 2))]
    y, _, _ = b.scan(body.build([new_h, new_h, carried]), sequences=[xs, zs], states=[h0, s0],
                     constants=weights)
    b.apply("exp", y)                                                        # dead
    return b.build([y])


def test_dce_prunes_body_eqns_and_unused_scan_inputs_but_not_states():
    check_pass(dce, build_two_sequence_scan(), """
    { params a:f32[3,2]=W, b:f32[2,2]=U
      inputs c:f32[B,T,3], d:f32[B,T,3], e:f32[B,2], f:f32[B,2]
      let
        g:f32[B,2] h:f32[B,2] i:f32[B,2] = scan c e f a [go_backwards=False, length=None,
          masked=False, num_constants=1, num_sequences=1, num_states=2, readout=False,
          return_sequences=False]
            body={ inputs j:f32[B,3], k:f32[B,2], l:f32[B,2], m:f32[3,2]
                   let
                     n:f32[B,2] = matmul j m
                     o:f32[B,2] = add n k
                   in (o, o, l) }
      in (g) }""")


def test_merge_gemms_sharing_left_operand():
    b = ProgramBuilder()
    x = b.input("float32", ("B", 8))
    w1, w2 = b.param("w1", "float32", (8, 4)), b.param("w2", "float32", (8, 2))
    w3 = b.param("w3", "float64", (8, 2))
    first = b.apply("tanh", b.apply("matmul", x, w1))
    program = b.build([first, b.apply("matmul", x, w2), b.apply("matmul", x, w3)])
    check_pass(merge_gemms, program, """
    { params a:f32[8,4]=w1, b:f32[8,2]=w2, c:f64[8,2]=w3
      inputs d:f32[B,8]
      let
        e:f32[8,6] = concatenate a b [axis=1]
        f:f32[B,6] = matmul d e
        g:f32[B,4] = slice f [axis=-1, start=0, stop=4]
        h:f32[B,2] = slice f [axis=-1, start=4, stop=6]
        i:f32[B,4] = tanh g
        j:f64[B,2] = matmul d c
      in (i, h, j) }""")


def test_simplify_broadcasts_instead_of_repeating_a_size_one_axis():
    """`add(x, repeat(expand_dims(h)))` reads the expand_dims (broadcast); a repeat that
    sets the result's shape (the other operand has size 1 there too) or repeats a
    longer axis is kept."""
    b = ProgramBuilder()
    x = b.input("float32", ("B", 4, 3))
    h = b.input("float32", ("B", 3))
    pair = b.input("float32", ("B", 2, 3))
    one = b.apply("expand_dims", h, axis=1)
    broadcast = b.apply("add", x, b.apply("repeat", one, repeats=4, axis=1))
    shaping = b.apply("mul", b.apply("repeat", one, repeats=4, axis=1), one)
    longer = b.apply("sub", x, b.apply("repeat", pair, repeats=2, axis=1))
    program = b.build([broadcast, shaping, longer])
    check_pass(simplify, program, """
    { inputs a:f32[B,4,3], b:f32[B,3], c:f32[B,2,3]
      let
        d:f32[B,1,3] = expand_dims b [axis=1]
        e:f32[B,4,3] = repeat d [axis=1, repeats=4]
        f:f32[B,4,3] = add a d
        g:f32[B,4,3] = repeat d [axis=1, repeats=4]
        h:f32[B,4,3] = mul g d
        i:f32[B,4,3] = repeat c [axis=1, repeats=2]
        j:f32[B,4,3] = sub a i
      in (f, h, j) }""")


def build_projection_scan():
    body = ProgramBuilder()
    x, h = body.input("float32", ("B", 8)), body.input("float32", ("B", 4))
    w, u = body.input("float32", (4, 8)), body.input("float32", (4, 4))
    bias = body.input("float32", (4,))
    projected = body.apply("matmul", x, body.apply("transpose", w, perm=(1, 0)))
    shifted = body.apply("bias_add", projected, bias)
    new_h = body.apply("tanh", body.apply("add", shifted, body.apply("matmul", h, u)))
    b = ProgramBuilder()
    xs, h0 = b.input("float32", ("B", "T", 8)), b.input("float32", ("B", 4))
    weights = [b.param("W", "float32", (4, 8)), b.param("U", "float32", (4, 4)),
               b.param("b", "float32", (4,))]
    y, _ = b.scan(body.build([new_h, new_h]), sequences=[xs], states=[h0], constants=weights,
                  go_backwards=True)
    return b.build([y])


def test_hoist_invariants_and_input_projection():
    check_pass(hoist, build_projection_scan(), """
    { params a:f32[4,8]=W, b:f32[4,4]=U, c:f32[4]=b
      inputs d:f32[B,T,8], e:f32[B,4]
      let
        f:f32[8,4] = transpose a [perm=(1, 0)]
        g:f32[B,T,4] = matmul d f
        h:f32[B,T,4] = bias_add g c
        i:f32[B,4] j:f32[B,4] = scan d h e a b c [go_backwards=True, length=None,
          masked=False, num_constants=3, num_sequences=2, num_states=1, readout=False,
          return_sequences=False]
            body={ inputs k:f32[B,8], l:f32[B,4], m:f32[B,4], n:f32[4,8], o:f32[4,4], p:f32[4]
                   let
                     q:f32[B,4] = matmul m o
                     r:f32[B,4] = add l q
                     s:f32[B,4] = tanh r
                   in (s, s) }
      in (i) }""")


def build_layer_norm_scan(axis=-1):
    """A layer-normalised step: LN(x_t @ W) + h @ U, the LN over `axis` of (B, 4)."""
    body = ProgramBuilder()
    x, h = body.input("float32", ("B", 8)), body.input("float32", ("B", 4))
    w, u = body.input("float32", (8, 4)), body.input("float32", (4, 4))
    gamma, beta = body.input("float32", (4,)), body.input("float32", (4,))
    normal = body.apply("layer_norm", body.apply("matmul", x, w), gamma, beta, axis=axis)
    new_h = body.apply("tanh", body.apply("add", normal, body.apply("matmul", h, u)))
    b = ProgramBuilder()
    xs, h0 = b.input("float32", ("B", "T", 8)), b.input("float32", ("B", 4))
    weights = [b.param("W", "float32", (8, 4)), b.param("U", "float32", (4, 4)),
               b.param("gamma", "float32", (4,)), b.param("beta", "float32", (4,))]
    y, _ = b.scan(body.build([new_h, new_h]), sequences=[xs], states=[h0], constants=weights)
    return b.build([y])


def test_hoist_layer_norm_of_the_input_projection_over_the_last_axis():
    """axis=1 of a (B, 4) slice is the last axis: hoisted, written as -1 (over (B, T, 4)
    axis 1 would be T)."""
    for axis in (-1, 1):
        check_pass(hoist, build_layer_norm_scan(axis), """
        { params a:f32[8,4]=W, b:f32[4,4]=U, c:f32[4]=gamma, d:f32[4]=beta
          inputs e:f32[B,T,8], f:f32[B,4]
          let
            g:f32[B,T,4] = matmul e a
            h:f32[B,T,4] = layer_norm g c d [axis=-1, epsilon=0.001]
            i:f32[B,4] j:f32[B,4] = scan e h f a b c d [go_backwards=False, length=None,
              masked=False, num_constants=4, num_sequences=2, num_states=1, readout=False,
              return_sequences=False]
                body={ inputs k:f32[B,8], l:f32[B,4], m:f32[B,4], n:f32[8,4], o:f32[4,4],
                       p:f32[4], q:f32[4]
                       let
                         r:f32[B,4] = matmul m o
                         s:f32[B,4] = add l r
                         t:f32[B,4] = tanh s
                       in (t, t) }
          in (i) }""")


def test_hoist_keeps_a_layer_norm_over_the_batch_axis():
    after = hoist(build_layer_norm_scan(axis=0))
    body = after.eqns[-1].params["body"]
    assert "layer_norm" in [eqn.op for eqn in body.eqns]
    assert "layer_norm" not in [eqn.op for eqn in after.eqns]


def build_concat_scan(extra_matmul_of_h: bool, output_concatenation: bool = False):
    """h' = tanh(concatenate(x_t, h) @ W [+ h @ V]); y = h' (or the concatenation)."""
    body = ProgramBuilder()
    x, h = body.input("float32", ("B", 2)), body.input("float32", ("B", 3))
    w, v = body.input("float32", (5, 3)), body.input("float32", (3, 3))
    joined = body.apply("concatenate", x, h, axis=-1)
    total = body.apply("matmul", joined, w)
    if extra_matmul_of_h:
        total = body.apply("add", total, body.apply("matmul", h, v))
    new_h = body.apply("tanh", total)
    b = ProgramBuilder()
    xs, h0 = b.input("float32", ("B", "T", 2)), b.input("float32", ("B", 3))
    weights = [b.param("W", "float32", (5, 3)), b.param("V", "float32", (3, 3))]
    y, _ = b.scan(body.build([joined if output_concatenation else new_h, new_h]),
                  sequences=[xs], states=[h0], constants=weights)
    return b.build([y])


def test_split_concat_matmul_then_the_x_part_is_hoisted():
    program = build_concat_scan(extra_matmul_of_h=False)
    split = check_pass(split_concat_matmul, program, """
    { params a:f32[5,3]=W, b:f32[3,3]=V
      inputs c:f32[B,T,2], d:f32[B,3]
      let
        e:f32[B,3] f:f32[B,3] = scan c d a b [go_backwards=False, length=None,
          masked=False, num_constants=2, num_sequences=1, num_states=1, readout=False,
          return_sequences=False]
            body={ inputs g:f32[B,2], h:f32[B,3], i:f32[5,3], j:f32[3,3]
                   let
                     k:f32[2,3] = slice i [axis=0, start=0, stop=2]
                     l:f32[3,3] = slice i [axis=0, start=2, stop=5]
                     m:f32[B,5] = concatenate g h [axis=-1]
                     n:f32[B,3] = matmul g k
                     o:f32[B,3] = matmul h l
                     p:f32[B,3] = add n o
                     q:f32[B,3] = tanh p
                   in (q, q) }
      in (e) }""")
    optimized = check_pass(lambda p: optimize(p, passes=PIPELINE[:-1]), program, """
    { params a:f32[5,3]=W, b:f32[3,3]=V
      inputs c:f32[B,T,2], d:f32[B,3]
      precompute
        e:f32[2,3] = slice a [axis=0, start=0, stop=2]
        f:f32[3,3] = slice a [axis=0, start=2, stop=5]
        -> (e, f)
      let
        g:f32[B,T,3] = matmul c e
        h:f32[B,3] i:f32[B,3] = scan g d f [go_backwards=False, length=None,
          masked=False, num_constants=1, num_sequences=1, num_states=1, readout=False,
          return_sequences=False]
            body={ inputs j:f32[B,3], k:f32[B,3], l:f32[3,3]
                   let
                     m:f32[B,3] = matmul k l
                     n:f32[B,3] = add j m
                     o:f32[B,3] = tanh n
                   in (o, o) }
      in (h) }""")
    assert split is not program and optimized is not program


def test_split_concat_matmul_merges_the_state_part_with_another_product():
    """Without a sequence part, the split still pays when a part meets another matmul of
    the same left operand: one GEMM h @ [V | W_h] per step, no concatenation copied."""
    program = build_concat_scan(extra_matmul_of_h=True)
    optimized = optimize(program, passes=PIPELINE[:-1])
    scan_body = optimized.eqns[-1].params["body"]
    products = [eqn for eqn in scan_body.eqns if eqn.op == "matmul"]
    assert [eqn.inputs[1].shape for eqn in products] == [(3, 6)]
    assert "concatenate" not in [eqn.op for eqn in scan_body.eqns]
    for seed in (0, 1):
        inputs = random_inputs(program, seed=seed)
        weights = random_weights(program, seed=seed)
        np.testing.assert_allclose(interpret(optimized, *inputs, weights=weights),
                                   interpret(program, *inputs, weights=weights),
                                   rtol=1e-5, atol=1e-6)


def test_split_concat_matmul_leaves_a_concatenation_read_elsewhere():
    program = build_concat_scan(extra_matmul_of_h=False, output_concatenation=True)
    assert split_concat_matmul(program) is program


def test_precompute_weights_prologue():
    program = dce(hoist(build_projection_scan()))
    after = check_pass(precompute_weights, program, """
    { params a:f32[4,8]=W, b:f32[4,4]=U, c:f32[4]=b
      inputs d:f32[B,T,8], e:f32[B,4]
      precompute
        f:f32[8,4] = transpose a [perm=(1, 0)]
        -> (f)
      let
        g:f32[B,T,4] = matmul d f
        h:f32[B,T,4] = bias_add g c
        i:f32[B,4] j:f32[B,4] = scan h e b [go_backwards=True, length=None, masked=False,
          num_constants=1, num_sequences=1, num_states=1, readout=False,
          return_sequences=False]
            body={ inputs k:f32[B,4], l:f32[B,4], m:f32[4,4]
                   let
                     n:f32[B,4] = matmul l m
                     o:f32[B,4] = add k n
                     p:f32[B,4] = tanh o
                   in (p, p) }
      in (i) }""")
    assert [name for name, _ in after.prologue.params] == ["W"]


def test_precomputed_prologue_values_are_used_when_given():
    from rshop_ir import run_prologue
    from rshop_ir.interpret import bind_weights

    program = precompute_weights(dce(hoist(build_projection_scan())))
    weights = random_weights(program)
    inputs = random_inputs(program)
    cached = run_prologue(program, bind_weights(program, weights))
    np.testing.assert_array_equal(cached[0], weights["W"].T)
    reference = interpret(program, *inputs, weights=weights)
    np.testing.assert_array_equal(interpret(program, *inputs, weights=weights,
                                            precomputed=cached), reference)
    stale = interpret(program, *inputs, weights=weights, precomputed=(0 * cached[0],))
    assert np.abs(stale - reference).max() > 1e-3   # the cache really is what runs


def test_fuse_elementwise_regions():
    b = ProgramBuilder()
    x, y = b.input("float32", ("B", 4)), b.input("float32", ("B", 4))
    w = b.param("w", "float32", (4, 4))
    gate = b.apply("sigmoid", x)
    squashed = b.apply("tanh", y)
    product = b.apply("matmul", b.apply("mul", gate, squashed), w)
    out = b.apply("add", b.apply("exp", product), squashed)
    check_pass(fuse_elementwise, b.build([out, gate]), """
    { params a:f32[4,4]=w
      inputs b:f32[B,4], c:f32[B,4]
      let
        d:f32[B,4] = sigmoid b
        e:f32[B,4] = tanh c
        f:f32[B,4] = mul d e
        g:f32[B,4] = matmul f a
        h:f32[B,4] = fused g e
            body={ inputs i:f32[B,4], j:f32[B,4]
                   let
                     k:f32[B,4] = exp i
                     l:f32[B,4] = add k j
                   in (l) }
      in (h, d) }""")


def test_sink_slices_through_a_cascade_of_elementwise_eqns():
    """The gates' slices of `(x + h @ w) + bias` become slices of x, of the product and
    of the bias; the adds move to each gate (the add too: after the bias_add moved,
    only slices read it). A slice reading the product stays a slice of the product."""
    b = ProgramBuilder()
    x, h = b.input("float32", ("B", 6)), b.input("float32", ("B", 3))
    w, bias = b.param("w", "float32", (3, 6)), b.param("bias", "float32", (6,))
    total = b.apply("bias_add", b.apply("add", x, b.apply("matmul", h, w)), bias)
    first = b.apply("sigmoid", b.apply("slice", total, axis=1, start=0, stop=2))
    second = b.apply("tanh", b.apply("slice", total, axis=-1, start=2, stop=6))
    check_pass(sink_slices, b.build([first, second]), """
    { params a:f32[3,6]=w, b:f32[6]=bias
      inputs c:f32[B,6], d:f32[B,3]
      let
        e:f32[B,6] = matmul d a
        f:f32[B,2] = slice c [axis=1, start=0, stop=2]
        g:f32[B,2] = slice e [axis=1, start=0, stop=2]
        h:f32[B,2] = add f g
        i:f32[B,4] = slice c [axis=1, start=2, stop=6]
        j:f32[B,4] = slice e [axis=1, start=2, stop=6]
        k:f32[B,4] = add i j
        l:f32[2] = slice b [axis=0, start=0, stop=2]
        m:f32[B,2] = bias_add h l
        n:f32[4] = slice b [axis=0, start=2, stop=6]
        o:f32[B,4] = bias_add k n
        p:f32[B,2] = sigmoid m
        q:f32[B,4] = tanh o
      in (p, q) }""")


def test_sink_slices_leaves_shared_overlapping_and_escaping_values():
    """No move when another eqn reads the whole value, when two slices overlap (an
    element would be computed twice), when the value is a program output, or when
    the slices cut different axes; an operand of size 1 along the cut broadcasts."""
    b = ProgramBuilder()
    x, column = b.input("float32", ("B", 4)), b.input("float32", ("B", 1))
    read_whole = b.apply("exp", x)
    overlapping = b.apply("tanh", x)
    escaping = b.apply("neg", x)
    two_axes = b.apply("sigmoid", b.input("float32", (4, 4)))
    broadcast = b.apply("mul", x, column)
    outputs = [b.apply("slice", read_whole, axis=1, start=0, stop=2), read_whole,
               b.apply("slice", overlapping, axis=1, start=0, stop=3),
               b.apply("slice", overlapping, axis=1, start=2, stop=4),
               b.apply("slice", escaping, axis=1, start=0, stop=2), escaping,
               b.apply("slice", two_axes, axis=0, start=0, stop=2),
               b.apply("slice", two_axes, axis=1, start=0, stop=2),
               b.apply("slice", broadcast, axis=1, start=1, stop=3)]
    after = check_pass(sink_slices, b.build(outputs), """
    { inputs a:f32[B,4], b:f32[B,1], c:f32[4,4]
      let
        d:f32[B,4] = exp a
        e:f32[B,4] = tanh a
        f:f32[B,4] = neg a
        g:f32[4,4] = sigmoid c
        h:f32[B,2] = slice a [axis=1, start=1, stop=3]
        i:f32[B,2] = mul h b
        j:f32[B,2] = slice d [axis=1, start=0, stop=2]
        k:f32[B,3] = slice e [axis=1, start=0, stop=3]
        l:f32[B,2] = slice e [axis=1, start=2, stop=4]
        m:f32[B,2] = slice f [axis=1, start=0, stop=2]
        n:f32[2,4] = slice g [axis=0, start=0, stop=2]
        o:f32[4,2] = slice g [axis=1, start=0, stop=2]
      in (j, d, k, l, m, f, n, o, i) }""")
    assert sum(eqn.op == "mul" for eqn in after.eqns) == 1


def test_fuse_a_whole_dag_with_one_exit():
    b = ProgramBuilder()
    x, y = b.input("float32", ("B", 4)), b.input("float32", (4,))
    shared = b.apply("sigmoid", x)
    out = b.apply("add", b.apply("mul", shared, y), b.apply("tanh", shared))
    check_pass(fuse_elementwise, b.build([out]), """
    { inputs a:f32[B,4], b:f32[4]
      let
        c:f32[B,4] = fused a b
            body={ inputs d:f32[B,4], e:f32[4]
                   let
                     f:f32[B,4] = sigmoid d
                     g:f32[B,4] = mul f e
                     h:f32[B,4] = tanh f
                     i:f32[B,4] = add g h
                   in (i) }
      in (c) }""")


def build_output_layer_scan(return_sequences=True, masked=False, readout=False,
                            y_read_twice=False):
    """h' = tanh(x_t @ U + h @ V); y = relu(h' @ W + b) * 2 (an output layer only y reads)."""
    body = ProgramBuilder()
    x, h = body.input("float32", ("B", 2)), body.input("float32", ("B", 3))
    previous = body.input("float32", ("B", 4)) if readout else None
    u, v = body.input("float32", (2, 3)), body.input("float32", (3, 3))
    w, bias = body.input("float32", (3, 4)), body.input("float32", (4,))
    new_h = body.apply("tanh", body.apply("add", body.apply("matmul", x, u),
                                          body.apply("matmul", h, v)))
    if readout:
        new_h = body.apply("add", new_h, body.apply("reduce_sum", previous, axes=(-1,),
                                                    keepdims=True))
    y = body.apply("mul", body.apply("relu", body.apply("bias_add",
                                                        body.apply("matmul", new_h, w),
                                                        bias)), 2.0)
    new_state = new_h
    if y_read_twice:      # the next state reads y too
        new_state = body.apply("add", new_h, body.apply("slice", y, axis=-1, start=0, stop=3))
    b = ProgramBuilder()
    xs, h0 = b.input("float32", ("B", "T", 2)), b.input("float32", ("B", 3))
    readout0 = b.input("float32", ("B", 4)) if readout else None
    mask = b.input("bool", ("B", "T")) if masked else None
    weights = [b.param(name, "float32", shape)
               for name, shape in (("U", (2, 3)), ("V", (3, 3)), ("W", (3, 4)), ("b", (4,)))]
    y_seq, _ = b.scan(body.build([y, new_state]), sequences=[xs], states=[h0],
                      readout=readout0, constants=weights, mask=mask,
                      return_sequences=return_sequences)
    return b.build([y_seq])


def test_sink_output_projection_moves_the_output_layer_after_the_loop():
    after = check_pass(sink_output_projection, build_output_layer_scan(), """
    { params a:f32[2,3]=U, b:f32[3,3]=V, c:f32[3,4]=W, d:f32[4]=b
      inputs e:f32[B,T,2], f:f32[B,3]
      let
        g:f32[B,T,3] h:f32[B,3] = scan e f a b c d [go_backwards=False, length=None,
          masked=False, num_constants=4, num_sequences=1, num_states=1, readout=False,
          return_sequences=True]
            body={ inputs i:f32[B,2], j:f32[B,3], k:f32[2,3], l:f32[3,3], m:f32[3,4],
                          n:f32[4]
                   let
                     o:f32[B,3] = matmul i k
                     p:f32[B,3] = matmul j l
                     q:f32[B,3] = add o p
                     r:f32[B,3] = tanh q
                     s:f32[B,4] = matmul r m
                     t:f32[B,4] = bias_add s n
                     u:f32[B,4] = relu t
                     v:f32[B,4] = mul u 2.0:f32
                   in (r, r) }
        w:f32[B,T,4] = matmul g c
        x:f32[B,T,4] = bias_add w d
        y:f32[B,T,4] = relu x
        z:f32[B,T,4] = mul y 2.0:f32
      in (z) }""")
    # dce then drops the body's dead output layer; the whole pipeline keeps the numbers
    body = dce(after).eqns[0].params["body"]
    assert [eqn.op for eqn in body.eqns] == ["matmul", "matmul", "add", "tanh"]
    check_pass(optimize, build_output_layer_scan(),
               str(optimize(build_output_layer_scan())))


def test_sink_output_projection_leaves_scans_whose_y_is_needed_in_the_loop():
    """No sequence of y (last y only), a mask (a masked step repeats y, zeros before the
    first), a readout (y is fed back) or y read by another body output: unchanged."""
    for program in (build_output_layer_scan(return_sequences=False),
                    build_output_layer_scan(masked=True),
                    build_output_layer_scan(readout=True),
                    build_output_layer_scan(y_read_twice=True)):
        assert sink_output_projection(program) is program


def build_memory_read_scan(length=5, kind="einsum", read_twice=False):
    """h' = tanh(read @ W + h) over `length` steps, where read is the attention read of
    a memory (B, 2, 6), einsum(softmax(h @ Q), memory), or (kind "matmul") h @ R;
    y = h' (or the read itself)."""
    body = ProgramBuilder()
    h = body.input("float32", ("B", 3))
    memory = body.input("float32", ("B", 2, 6))
    q, w, r = (body.input("float32", shape) for shape in ((3, 2), (6, 3), (3, 6)))
    if kind == "einsum":
        attention = body.apply("softmax", body.apply("matmul", h, q), axis=-1)
        read = body.apply("einsum", attention, memory, equation="bc,bce->be")
    elif kind == "memory first":
        attention = body.apply("softmax", body.apply("matmul", h, q), axis=-1)
        read = body.apply("einsum", memory, attention, equation="bce,bc->be")
    else:
        read = body.apply("matmul", h, r)
    new_h = body.apply("tanh", body.apply("add", body.apply("matmul", read, w), h))
    b = ProgramBuilder()
    memory0, h0 = b.input("float32", ("B", 2, 6)), b.input("float32", ("B", 3))
    weights = [b.param(name, "float32", shape)
               for name, shape in (("Q", (3, 2)), ("W", (6, 3)), ("R", (3, 6)))]
    y, _ = b.scan(body.build([read if read_twice else new_h, new_h]), states=[h0],
                  constants=[memory0, *weights], length=length, return_sequences=True)
    return b.build([y])


def test_reassociate_an_attention_read_by_a_weight():
    """einsum(a, memory) @ W -> einsum(a, memory @ W); hoist.py then computes memory @ W
    once, before the loop, and each step contracts 2 x 3 numbers instead of 2 x 6 plus
    a 6 x 3 matmul."""
    program = build_memory_read_scan()
    check_pass(reassociate_products, program, """
    { params a:f32[3,2]=Q, b:f32[6,3]=W, c:f32[3,6]=R
      inputs d:f32[B,2,6], e:f32[B,3]
      let
        f:f32[B,5,3] g:f32[B,3] = scan e d a b c [go_backwards=False, length=5,
          masked=False, num_constants=4, num_sequences=0, num_states=1, readout=False,
          return_sequences=True]
            body={ inputs h:f32[B,3], i:f32[B,2,6], j:f32[3,2], k:f32[6,3], l:f32[3,6]
                   let
                     m:f32[B,2] = matmul h j
                     n:f32[B,2] = softmax m [axis=-1]
                     o:f32[B,2,3] = matmul i k
                     p:f32[B,3] = einsum n o [equation='bc,bce->be']
                     q:f32[B,3] = add p h
                     r:f32[B,3] = tanh q
                   in (r, r) }
      in (f) }""")
    check_pass(lambda p: optimize(p, passes=PIPELINE[:-1]), program, """
    { params a:f32[3,2]=Q, b:f32[6,3]=W, c:f32[3,6]=R
      inputs d:f32[B,2,6], e:f32[B,3]
      let
        f:f32[B,2,3] = matmul d b
        g:f32[B,5,3] h:f32[B,3] = scan e a f [go_backwards=False, length=5,
          masked=False, num_constants=2, num_sequences=0, num_states=1, readout=False,
          return_sequences=True]
            body={ inputs i:f32[B,3], j:f32[3,2], k:f32[B,2,3]
                   let
                     l:f32[B,2] = matmul i j
                     m:f32[B,2] = softmax l [axis=-1]
                     n:f32[B,3] = einsum m k [equation='bc,bce->be']
                     o:f32[B,3] = add n i
                     p:f32[B,3] = tanh o
                   in (p, p) }
      in (g) }""")


def test_reassociate_two_dense_layers_into_one_precomputed_kernel():
    """(h @ R) @ W -> h @ (R @ W): both are weights, so the product is computed once per
    weight version (precompute_weights.py)."""
    check_pass(lambda p: optimize(p, passes=PIPELINE[:-1]),
               build_memory_read_scan(kind="matmul"), """
    { params a:f32[3,2]=Q, b:f32[6,3]=W, c:f32[3,6]=R
      inputs d:f32[B,2,6], e:f32[B,3]
      precompute
        f:f32[3,3] = matmul c b
        -> (f)
      let
        g:f32[B,5,3] h:f32[B,3] = scan e f [go_backwards=False, length=5,
          masked=False, num_constants=1, num_sequences=0, num_states=1, readout=False,
          return_sequences=True]
            body={ inputs i:f32[B,3], j:f32[3,3]
                   let
                     k:f32[B,3] = matmul i j
                     l:f32[B,3] = add k i
                     m:f32[B,3] = tanh l
                   in (m, m) }
      in (g) }""")


def test_reassociate_leaves_reads_used_twice_or_too_few_steps():
    """The read is also y (it must still be computed), or one step cannot pay for
    memory @ W (2 x 6 x 3 multiply-adds once against 24 saved a step): unchanged.
    Two steps pay (48 > 36)."""
    for program in (build_memory_read_scan(read_twice=True),
                    build_memory_read_scan(length=1)):
        assert reassociate_products(program) is program
    assert "o:f32[B,2,3] = matmul i k" in str(
        check_pass(reassociate_products, build_memory_read_scan(length=2),
                   str(reassociate_products(build_memory_read_scan(length=2)))))


def test_reassociate_an_attention_read_with_the_memory_first():
    """einsum("bce,bc->be", memory, a) @ W: the memory's position is kept."""
    after = check_pass(reassociate_products, build_memory_read_scan(kind="memory first"),
                       str(reassociate_products(build_memory_read_scan(kind="memory first"))))
    body = after.eqns[0].params["body"]
    einsum = next(eqn for eqn in body.eqns if eqn.op == "einsum")
    assert [atom.shape for atom in einsum.inputs] == [("B", 2, 3), ("B", 2)]


def _broadcast_weight():
    """broadcast_to(w, (B, 3)) depends on the batch: the prologue cannot hold it."""
    builder = ProgramBuilder()
    x = builder.input("float32", ("B", 3))
    weight = builder.param("w", "float32", (3,))
    return builder.build([builder.apply("add", x, builder.apply(
        "broadcast_to", weight, shape=("B", 3)))])


def _vector_times_matrix_in_a_step():
    """einsum(p, r) @ W with r a vector constant: R @ W would be no matmul."""
    body = ProgramBuilder()
    x_t, h = body.input("float64", ("B", 4)), body.input("float64", ("B", 4))
    r, w = body.input("float64", (4,)), body.input("float64", (4, 4))
    outer = body.apply("einsum", body.apply("reduce_sum", x_t, axes=-1), r,
                       equation="b,e->be")
    h_new = body.apply("tanh", body.apply("add", body.apply("matmul", outer, w), h))
    builder = ProgramBuilder()
    xs, h0 = builder.input("float64", ("B", 9, 4)), builder.input("float64", ("B", 4))
    constants = [builder.param("r", "float64", (4,)), builder.param("w", "float64", (4, 4))]
    return builder.build(builder.scan(body.build([h_new, h_new]), sequences=[xs],
                                      states=[h0], constants=constants))


def _squeeze_every_axis():
    builder = ProgramBuilder()
    x = builder.input("float32", (1,))
    return builder.build([builder.apply("squeeze", builder.apply("expand_dims", x, axis=0),
                                        axis=None)])


def _empty_slice_of_a_sum():
    builder = ProgramBuilder()
    x, y = builder.input("float32", ("B", 1)), builder.input("float32", ("B", 1))
    return builder.build([builder.apply("slice", builder.apply("add", x, y), axis=-1,
                                        start=0, stop=0)])


def test_the_pipeline_keeps_the_numbers_of_programs_it_once_broke():
    """Each of these made optimize() raise (the prologue sized by B; a vector taken
    for a matrix; squeeze(axis=None) read as an axis; an empty slice sunk into an
    element-wise op of width 1)."""
    for make in (_broadcast_weight, _vector_times_matrix_in_a_step, _squeeze_every_axis,
                 _empty_slice_of_a_sum):
        program = make()
        inputs = random_inputs(program, seed=3)
        weights = random_weights(program, seed=3)
        before, after = (value if isinstance(value, list) else [value] for value in (
            interpret(program, *inputs, weights=weights),
            interpret(verify(optimize(program)), *inputs, weights=weights)))
        for one, other in zip(before, after, strict=True):
            np.testing.assert_allclose(one, other, rtol=1e-12, atol=1e-12)
