"""A tour of the layer API: build a network from combinators, init it, run it on both backends.

Run: python examples/layers_tour.py   (a few seconds; JAX part skipped if jax is absent)
"""
import numpy as np

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl


def tiny_lm(vocab_size: int = 32, d_model: int = 16, mode: str = 'eval') -> tl.Layer:
    """Embedding -> positions -> one pre-LN residual MLP block -> logits."""
    return tl.Serial(                                   # stack: token ids [B, L]
        tl.ShiftRight(mode=mode),
        tl.Embedding(vocab_size, d_model),              # [B, L, d]
        tl.PositionalEncoding(max_len=64, mode=mode),
        tl.Residual(tl.LayerNorm(), tl.Dense(4 * d_model), tl.Relu(), tl.Dense(d_model),
                    tl.Dropout(0.1, mode=mode)),        # x + MLP(LN(x))
        tl.LayerNorm(),
        tl.Dense(vocab_size),                           # logits [B, L, V]
    )


def main() -> None:
    tokens = np.random.default_rng(0).integers(1, 32, size=(2, 8)).astype(np.int32)
    model = tiny_lm()
    print(model)
    print('n_in, n_out:', model.n_in, model.n_out)
    print('output signature:', model.output_signature(shapes.signature(tokens)))

    with fastmath.use_backend('numpy'):
        weights, state = model.init(shapes.signature(tokens), rng=fastmath.random.get_prng(0))
        logits_np, _ = model.pure_fn(tokens, weights, state)
    n_params = sum(np.size(w) for w in fastmath.tree_leaves(weights))
    print(f'{n_params} parameters; NumPy logits[0, 0, :4] = {np.round(logits_np[0, 0, :4], 4)}')

    loss = tl.CrossEntropyLoss(pad_id=0)
    with fastmath.use_backend('numpy'):
        print('NumPy loss:', round(float(loss((logits_np, tokens))), 4))

    if not fastmath.jax_available():
        print('jax is not installed: skipping the JAX part')
        return
    with fastmath.use_backend('jax'):
        step = fastmath.jit(model.pure_fn)
        logits_jax, _ = step(tokens, weights, state, fastmath.random.get_prng(1))
        grads = fastmath.grad(lambda w: loss((model.pure_fn(tokens, w, state)[0], tokens)))(weights)
    diff = float(np.max(np.abs(np.asarray(logits_jax) - logits_np)))
    print(f'JAX (jit) logits equal NumPy logits: max |diff| = {diff:.2e}')
    print('gradient norm of the embedding table:',
          round(float(np.linalg.norm(np.asarray(grads[1][0]))), 4))

    # A Branch / Parallel / Select tour on plain values.
    with fastmath.use_backend('numpy'):
        inc = tl.Fn('Inc', lambda x: x + 1)
        both = tl.Serial(tl.Branch(inc, None), tl.Parallel(inc, None), tl.Swap())
        a, b = both(np.array([1.0, 2.0], np.float32))
    print('Branch(Inc, None) -> Parallel(Inc, None) -> Swap on [1, 2]:', a, b)


if __name__ == '__main__':
    main()
