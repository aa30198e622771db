"""Greedy decoding of an 800M-shaped model (d_model 1024, d_ff 4096, 16 heads, vocab 32000;
2 layers) with its weights split 8-way over 8 forced CPU devices gives one device's tokens and
logits (a subprocess: XLA_FLAGS must precede jax). NumPy decoding refuses a mesh."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.training.conftest import subprocess_env
from trax_sparse import decoding, fastmath, models, shapes
from trax_sparse import layers as tl

# {'data': 1, 'model': 8}: pure tensor parallelism, every big weight split 8-way over 'model'
# (16 heads, d_ff 4096 and vocab 32000 all divide by 8), K/V caches over the heads.
# {'data': 2, 'model': 4} with fsdp: weights split 4-way by the rules and 2-way more over
# 'data', the caches over the batch (2 rows) and the heads: both cache splits are exercised.
SCRIPT = textwrap.dedent('''
import json
import numpy as np
from trax_sparse import decoding, fastmath, models, shapes

D_MODEL, D_FF, HEADS, VOCAB, LAYERS, BATCH, STEPS = 1024, 4096, 16, 32000, 2, 2, 6

def run(model, mesh):
    state = decoding.init_predict_state(model, shapes.ShapeDtype((BATCH, 1), np.int32))
    weights, shardings = model.weights, None
    if mesh is not None:
        weights, state, shardings = decoding.place_for_decoding(
            mesh, model, weights, state, None, BATCH)
    step = decoding.predict_step(model, True, mesh, shardings)
    rng = fastmath.random.get_prng(0)
    prompt = np.array([[0, 5, 17], [0, 900, 3]], np.int32)
    logits, state, _ = decoding.start_decoding(model, step, prompt, weights, state, rng, STEPS)
    all_logits, tokens = [], []
    for _ in range(STEPS):
        all_logits.append(np.asarray(logits))
        ids = np.argmax(all_logits[-1], -1).astype(np.int32)
        tokens.append(ids)
        logits, state = step(ids[:, None], weights, state, rng)
    return np.stack(tokens, 1), np.stack(all_logits, 1), weights, state

out = {}
with fastmath.use_backend('jax'):
    model = models.TransformerLM(VOCAB, d_model=D_MODEL, d_ff=D_FF, n_layers=LAYERS,
                                 n_heads=HEADS, max_len=16, mode='predict')
    model.init(shapes.ShapeDtype((BATCH, 1), np.int32))
    tok1, log1, _, _ = run(model, None)
    for name, shape, fsdp in (('tp8', {'data': 1, 'model': 8}, False),
                              ('dp2tp4_fsdp', {'data': 2, 'model': 4}, True)):
        mesh = decoding.DecodingMesh(shape, fsdp=fsdp)
        tok, logits, weights, state = run(model, mesh)
        big = max(fastmath.tree_leaves(weights), key=lambda w: w.size)
        caches = [x for x in fastmath.tree_leaves(state) if x.ndim == 4]
        out[name] = {
            'same_tokens': bool((tok == tok1).all()),
            'max_logit_diff': float(np.abs(logits - log1).max()),
            'big_weight_shards': len({str(s.index) for s in big.addressable_shards}),
            'big_weight_shape': list(big.shape),
            'cache_specs': sorted({str(x.sharding.spec) for x in caches}),
            'cache_shards': sorted({len({str(s.index) for s in x.addressable_shards})
                                    for x in caches}),
            'sampled_same': bool((decoding.autoregressive_sample(
                model, batch_size=BATCH, temperature=0.0, max_length=STEPS,
                prompt=np.array([[5, 17], [900, 3]], np.int32), mesh=mesh) == tok1).all()),
        }
print('RESULT ' + json.dumps(out))''')


def test_sharded_greedy_decoding_equals_one_device():
    env = subprocess_env(XLA_FLAGS='--xla_force_host_platform_device_count=8')
    result = subprocess.run([sys.executable, '-c', SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.split('RESULT ')[1])
    for name, cache_spec in (('tp8', "P(None, 'model', None, None)"),
                             ('dp2tp4_fsdp', "P('data', 'model', None, None)")):
        run = out[name]
        assert run['same_tokens'] and run['sampled_same'], name
        assert run['max_logit_diff'] < 1e-5, (name, run['max_logit_diff'])
        assert run['big_weight_shape'] == [32000, 1024]
        assert run['big_weight_shards'] == 8, name          # 8 distinct shards: really split
        assert run['cache_specs'] == [cache_spec], name
        assert run['cache_shards'] == [8], name


def test_numpy_decoding_refuses_a_mesh():
    with fastmath.use_backend('numpy'):
        model = tl.Serial(tl.Embedding(5, 4), tl.Dense(5))
        model.init(shapes.ShapeDtype((1, 1), np.int32))
        with pytest.raises(ValueError, match='needs the JAX backend'):
            decoding.autoregressive_sample(model, max_length=2, mesh={'data': 1})


def test_cache_spec_splits_only_what_divides():
    mesh = {'data': 2, 'model': 4}
    assert decoding.cache_spec((4, 8, 16, 32), True, mesh) == ('data', 'model', None, None)
    assert decoding.cache_spec((3, 6, 16, 32), True, mesh) == (None, None, None, None)
    assert decoding.cache_spec((), False, mesh) == ()               # a position counter
    assert decoding.cache_spec((4, 8, 16, 32), False, mesh) == (None, None, None, None)


def test_one_device_mesh_decodes_like_no_mesh():
    """In-process (one device): sampling and beam search with a mesh equal those without."""
    with fastmath.use_backend('jax'):
        model = models.TransformerLM(11, d_model=16, d_ff=32, n_layers=1, n_heads=2,
                                     max_len=8, mode='predict')
        model.init(shapes.ShapeDtype((1, 1), np.int32))
        mesh = decoding.DecodingMesh({'data': 1, 'model': 1})
        kwargs = dict(batch_size=2, temperature=0.0, max_length=5)
        np.testing.assert_array_equal(decoding.autoregressive_sample(model, mesh=mesh, **kwargs),
                                      decoding.autoregressive_sample(model, **kwargs))
        seqs, scores = decoding.beam_search(model, beam_size=2, max_length=4, mesh=mesh)
        seqs_1, scores_1 = decoding.beam_search(model, beam_size=2, max_length=4)
        np.testing.assert_array_equal(seqs, seqs_1)
        np.testing.assert_allclose(scores, scores_1, rtol=1e-6)
