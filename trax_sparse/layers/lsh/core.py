"""The LSH attention algorithm on arrays (no weights state, no layer): sort, chunk, attend.

Given the buckets of every position in every hash round:
1. per round, sort positions by (bucket, position) with `fastmath.sort_key_val`;
2. cut the sorted order into chunks of `chunk_len`; each chunk attends to
   itself, `n_chunks_before` previous and `n_chunks_after` next chunks of the
   same round (wrapping around; the window is clamped to the number of chunks,
   so no chunk is visited twice);
3. mask: causal (key after query), padding (invalid key), and the query's own
   position gets a -1e5 score, so it is used only when nothing else is there;
4. undo the sort and combine the rounds with the softmax of their log-sum-exps:
   o = Σ_r softmax_r(lse_r) · o_r.

Scores per head: n_hashes · L · chunk_len · (1 + before + after); never L x L.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath
    >>> qk = np.random.default_rng(0).normal(size=(1, 1, 8, 4)).astype(np.float32)
    >>> buckets = np.zeros((1, 1, 2, 8), np.int32)          # 2 rounds, one bucket
    >>> with fastmath.use_backend('numpy'):
    ...     o_rounds, lse = lsh_attention_rounds(qk, qk, buckets, np.ones((1, 8), bool),
    ...                                          causal=True, chunk_len=4)
    ...     o, weights = combine_rounds(o_rounds, lse)
    >>> o.shape, weights.shape
    ((1, 1, 8, 4), (1, 1, 2, 8))
"""
import dataclasses
import functools
import math
from typing import Any, Callable

from trax_sparse import fastmath
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.precision import cast_like, float32_stats
from trax_sparse.layers.attention_core import MASK_VALUE
from trax_sparse.layers.lsh.hashing import (ATTENTION_DROPOUT_STREAM, OUTPUT_DROPOUT_STREAM,
                                            bucket_factors, hash_rotations, hash_vectors,
                                            normalize_keys,
                                            portable_bernoulli)
from trax_sparse.layers.lsh.permute import gather_rounds, permute

# Score of a masked key: attention_core.MASK_VALUE (finite: a row with every key masked stays
# NaN-free). Score of the query's own position: used only when every other key is masked.
SELF_VALUE = -1e5


@dataclasses.dataclass(frozen=True)
class LSHSettings:
    """The hyper-parameters of one LSHSelfAttention (hashable: keys the compiled functions).

    Dropout rates are those of the layer's mode (0 outside train).
    """
    layer_name: str
    n_heads: int
    d_qk: int
    n_hashes: int
    bucket_factors: tuple[int, ...] | None     # None: chosen from the length (for_length)
    causal: bool
    chunk_len: int
    n_chunks_before: int
    n_chunks_after: int
    attention_dropout: float
    output_dropout: float
    mem_len: int
    budget: int
    heads_in_turn: bool = False    # one head at a time (see `heads_in_turn`)

    def for_length(self, padded: int) -> 'LSHSettings':
        """These settings with the bucket factors resolved for a padded length."""
        factors = bucket_factors(self.bucket_factors, padded, self.chunk_len)
        return self if factors == self.bucket_factors else dataclasses.replace(
            self, bucket_factors=factors)

    @property
    def n_buckets(self) -> int:
        """Buckets per round (the product of the factors); needs resolved factors."""
        if self.bucket_factors is None:
            raise ValueError(f'{self.layer_name}: n_buckets=None is chosen per length: call '
                             f'settings.for_length(padded_length) first')
        return math.prod(self.bucket_factors)


def _bind(fn: Callable, settings: LSHSettings) -> Callable:
    return functools.partial(fn, settings=settings)


def with_settings(fn: Callable, settings: LSHSettings) -> Callable:
    """fn(..., settings=settings); on JAX compiled once per settings (and input shapes).

    Eager JAX would otherwise compile each of the ~100 array operations on its
    first call; under an outer jit the compiled function is simply inlined.
    """
    return fastmath.cached_jit(_bind, fn, settings)


def window_sizes(n_chunks: int, n_chunks_before: int, n_chunks_after: int) -> tuple[int, int]:
    """(before, after) clamped so the window holds each of the n_chunks chunks at most once."""
    before = min(int(n_chunks_before), n_chunks - 1)
    after = min(int(n_chunks_after), n_chunks - 1 - before)
    return before, after


def look_adjacent(chunks: Any, before: int, after: int, axis: int = 3) -> Any:
    """Concatenates each chunk with its `before` previous and `after` next chunks (wrapping).

    chunks [..., n_chunks, c, ...] (chunk axis `axis`) -> [..., n_chunks, (1+b+a)·c, ...].
    """
    shifted = [xnp.roll(chunks, shift, axis=axis) for shift in range(before, -after - 1, -1)]
    return xnp.concatenate(shifted, axis=axis + 1)


def sort_by_bucket(buckets: Any) -> tuple[Any, Any]:
    """buckets [..., L] -> (positions sorted by (bucket, position), the inverse permutation).

    Keys bucket·L + position are unique, so stable and unstable sorts agree.
    """
    length = buckets.shape[-1]
    positions = xnp.broadcast_to(xnp.arange(length, dtype=xnp.int32), buckets.shape)
    sort_keys = buckets.astype(xnp.int32) * length + positions
    _, sorted_positions = fastmath.sort_key_val(sort_keys, positions, -1)
    _, inverse = fastmath.sort_key_val(sorted_positions, positions, -1)
    return sorted_positions, inverse


def lsh_attention_rounds(qk: Any, v: Any, buckets: Any, valid: Any, causal: bool,
                         chunk_len: int, n_chunks_before: int = 1, n_chunks_after: int = 0,
                         dropout: float = 0.0, rng: Any = None) -> tuple[Any, Any]:
    """Chunked shared-QK attention of every hash round, in the original position order.

    qk [B, H, L, d_qk] (queries; keys are their unit-normalised copies), v
    [B, H, L, d_v], buckets [B, H, R, L] int, valid [B, L] bool (False = a
    padding key), L a multiple of chunk_len. Returns (o_rounds [B, H, R, L, d_v],
    lse [B, H, R, L]): each round's output and the log-sum-exp of its scores.
    `dropout` (with `rng`) drops attention probabilities.
    """
    batch, n_heads, length, _ = qk.shape
    n_rounds = buckets.shape[2]
    if length % chunk_len:
        raise ValueError(f'lsh_attention_rounds: length {length} is not a multiple of '
                         f'chunk_len {chunk_len}')
    n_chunks = length // chunk_len
    before, after = window_sizes(n_chunks, n_chunks_before, n_chunks_after)
    sorted_positions, inverse = sort_by_bucket(buckets)                 # [B, H, R, L] x2

    chunked = (batch, n_heads, n_rounds, n_chunks, chunk_len)
    # Permutation gathers: their gradients gather by the inverse (no scatter into zeros).
    sq = gather_rounds(qk, sorted_positions, inverse).reshape(chunked + (-1,))  # [B,H,R,nc,c,dk]
    sk = normalize_keys(sq)
    sv = gather_rounds(v, sorted_positions, inverse).reshape(chunked + (-1,))   # [B,H,R,nc,c,dv]
    valid_bhl = xnp.broadcast_to(valid[:, None, None, :], buckets.shape)
    s_valid = xnp.take_along_axis(valid_bhl, sorted_positions, axis=3).reshape(chunked)
    q_pos = sorted_positions.reshape(chunked)                            # [B,H,R,nc,c]

    k_window = look_adjacent(sk, before, after)                          # [B,H,R,nc,w,dk]
    v_window = look_adjacent(sv, before, after)                          # [B,H,R,nc,w,dv]
    kv_pos = look_adjacent(q_pos, before, after)[..., None, :]           # [B,H,R,nc,1,w]
    kv_valid = look_adjacent(s_valid, before, after)[..., None, :]       # [B,H,R,nc,1,w]
    q_pos = q_pos[..., None]                                             # [B,H,R,nc,c,1]

    scores = float32_stats(xnp.matmul(sq, xnp.swapaxes(k_window, -1, -2)))   # [B,H,R,nc,c,w]
    scores = xnp.where(kv_pos == q_pos, SELF_VALUE, scores)
    masked = ~kv_valid
    if causal:
        masked = masked | (kv_pos > q_pos)
    scores = xnp.where(masked, MASK_VALUE, scores)
    lse = fastmath.logsumexp(scores, axis=-1, keepdims=True)             # [B,H,R,nc,c,1]
    probs = cast_like(xnp.exp(scores - lse), sq)          # statistics in float32
    if dropout > 0.0:
        keep = portable_bernoulli(rng, 1.0 - dropout, probs.shape, ATTENTION_DROPOUT_STREAM)
        probs = xnp.where(keep, probs / (1.0 - dropout), 0.0)
    o_sorted = xnp.matmul(probs, v_window)                               # [B,H,R,nc,c,dv]

    o_sorted = o_sorted.reshape((batch, n_heads, n_rounds, length, -1))  # [B,H,R,L,dv]
    o_rounds = permute(o_sorted, inverse, sorted_positions)
    lse = permute(lse.reshape(buckets.shape), inverse, sorted_positions)     # [B,H,R,L]
    return o_rounds, lse


def combine_rounds(o_rounds: Any, lse: Any) -> tuple[Any, Any]:
    """o = Σ_r w_r · o_r with w = softmax_r(lse_r): returns (o [B,H,L,d_v], w [B,H,R,L]).

    lse is shifted by its max over rounds first: a position whose only key is
    itself has lse ≈ -1e5, where float32 cannot hold log(2) exactly.
    """
    shifted = lse - fastmath.stop_gradient(xnp.max(lse, axis=2, keepdims=True))  # [B,H,R,L]
    unnormalized = xnp.exp(shifted)
    weights = unnormalized / xnp.sum(unnormalized, axis=2, keepdims=True)
    return cast_like(xnp.sum(weights[..., None] * o_rounds, axis=2), o_rounds), weights


def project_qkv(x: Any, w_qk: Any, w_v: Any) -> tuple[Any, Any]:
    """x [B, L, d] -> (qk [B, H, L, d_qk], v [B, H, L, d_v]) with per-head weights."""
    w_qk, w_v = cast_like(w_qk, x), cast_like(w_v, x)
    return xnp.einsum('bld,hdk->bhlk', x, w_qk), xnp.einsum('bld,hdk->bhlk', x, w_v)


def project_output(o: Any, w_o: Any) -> Any:
    """o [B, H, L, d_v], w_o [H, d_v, d] -> Σ_h o_h W_o,h [B, L, d] (head outputs summed)."""
    return xnp.einsum('bhlv,hvd->bld', o, cast_like(w_o, o))


def output_dropout(y: Any, rate: float, rng: Any) -> Any:
    """Inverted dropout on every element of y (rate 0: identity)."""
    if rate == 0.0:
        return y
    keep = portable_bernoulli(rng, 1.0 - rate, y.shape, OUTPUT_DROPOUT_STREAM)
    return xnp.where(keep, y / (1.0 - rate), 0.0)


def lsh_self_attention(x: Any, weights: tuple, buckets: Any, valid: Any, causal: bool,
                       chunk_len: int, n_chunks_before: int = 1, n_chunks_after: int = 0,
                       attention_dropout: float = 0.0, output_dropout_rate: float = 0.0,
                       rng: Any = None) -> Any:
    """The full LSHSelfAttention computation for given buckets (no hashing, plain autodiff).

    x [B, L, d] with L a multiple of chunk_len, weights (W_qk [H, d, d_qk],
    W_v [H, d, d_v], W_o [H, d_v, d]), buckets [B, H, R, L] int, valid [B, L]
    bool. rng is needed only for dropout: the attention and output masks are two
    streams of it (hashing.portable_bernoulli). Returns y [B, L, d].
    """
    w_qk, w_v, w_o = weights
    qk, v = project_qkv(x, w_qk, w_v)                                    # [B,H,L,dk], [B,H,L,dv]
    o_rounds, lse = lsh_attention_rounds(qk, v, buckets, valid, causal, chunk_len,
                                         n_chunks_before, n_chunks_after, attention_dropout, rng)
    o, _ = combine_rounds(o_rounds, lse)                                 # [B, H, L, d_v]
    return output_dropout(project_output(o, w_o), output_dropout_rate, rng)


def padded_length(length: int, chunk_len: int) -> int:
    """length rounded up to a multiple of chunk_len."""
    return -(-length // chunk_len) * chunk_len


def _pad_to_chunks(x: Any, valid: Any, chunk_len: int) -> tuple[Any, Any]:
    """x [B, L, d], valid [B, L] -> both padded along L to a multiple of chunk_len."""
    extra = padded_length(x.shape[1], chunk_len) - x.shape[1]
    return (xnp.pad(x, ((0, 0), (0, extra), (0, 0))),                # [B, Lp, d]
            xnp.pad(valid, ((0, 0), (0, extra))))                      # [B, Lp], False = padding


def hash_buckets(x: Any, valid: Any, w_qk: Any, rng: Any, *, settings: LSHSettings) -> Any:
    """Buckets [B, H, R, Lp] of x [B, L, d] (padded to chunks; padding gets bucket n_buckets).

    The rotations are drawn from `rng` (hashing.hash_rotations).
    """
    s = settings
    x_pad, valid_pad = _pad_to_chunks(x, valid, s.chunk_len)
    qk = xnp.einsum('bld,hdk->bhlk', fastmath.stop_gradient(x_pad),
                    fastmath.stop_gradient(cast_like(w_qk, x_pad)))      # [B, H, Lp, d_qk]
    rotations = hash_rotations(rng, s.n_heads, s.d_qk, s.n_hashes, s.bucket_factors)
    buckets = hash_vectors(qk, rotations, s.bucket_factors)            # [B, H, R, Lp]
    return xnp.where(valid_pad[:, None, None, :], buckets, s.n_buckets)


def heads_in_turn(settings: LSHSettings) -> bool:
    """True when the heads are computed one after another (a scan): asked for
    (settings.heads_in_turn), without attention dropout (its mask is drawn over all heads at
    once) and with more than one head."""
    return settings.heads_in_turn and settings.attention_dropout == 0.0 and settings.n_heads > 1


def _per_head(weights: tuple, buckets: Any) -> tuple:
    """(W_qk, W_v, W_o) [H, ...] and buckets [B, H, R, Lp] as scan inputs, one head each:
    weights [H, 1, ...], buckets [H, B, 1, R, Lp]."""
    return tuple(w[:, None] for w in weights) + (xnp.swapaxes(buckets, 0, 1)[:, :, None],)


def _one_head(x_pad: Any, valid_pad: Any, head: tuple, s: LSHSettings, rng: Any) -> Any:
    """Head h's term of the summed output [B, Lp, d] (no dropout): head = (W_qk, W_v, W_o,
    buckets) of that head."""
    return lsh_self_attention(x_pad, head[:3], head[3], valid_pad, s.causal, s.chunk_len,
                              s.n_chunks_before, s.n_chunks_after, 0.0, 0.0, rng)


def attend_given_buckets(x: Any, valid: Any, weights: tuple, buckets: Any, rng: Any, *,
                         settings: LSHSettings) -> Any:
    """y [B, L, d] of x [B, L, d] for buckets [B, H, R, Lp]: pads, attends, un-pads.

    With `heads_in_turn` the heads run one after another and their outputs are summed
    (the same y): only one head's scores are alive at a time.
    """
    s = settings
    x_pad, valid_pad = _pad_to_chunks(x, valid, s.chunk_len)
    if heads_in_turn(s):
        def add_head(total, head):
            return total + _one_head(x_pad, valid_pad, head, s, rng), None
        # The sum starts from x_pad * 0, not a constant zero: XLA:CPU allocates (copies of)
        # constant loop inits at the start of the step and keeps them until the loop runs.
        y, _ = fastmath.scan(add_head, x_pad * 0.0, _per_head(weights, buckets))
        y = output_dropout(y, s.output_dropout, rng)
    else:
        y = lsh_self_attention(x_pad, weights, buckets, valid_pad, s.causal, s.chunk_len,
                               s.n_chunks_before, s.n_chunks_after, s.attention_dropout,
                               s.output_dropout, rng)
    return y[:, :x.shape[1]]


def hash_and_attend(x: Any, valid: Any, weights: tuple, rng: Any, *,
                    settings: LSHSettings) -> tuple[Any, Any]:
    """(y [B, L, d], buckets [B, H, R, Lp]): a forward pass that hashes with `rng`."""
    buckets = hash_buckets(x, valid, weights[0], rng, settings=settings)
    return attend_given_buckets(x, valid, weights, buckets, rng, settings=settings), buckets


def attend_backward(x: Any, valid: Any, weights: tuple, buckets: Any, rng: Any, grad: Any, *,
                    settings: LSHSettings) -> tuple[Any, Any]:
    """(x_grad, weights_grad) of `attend_given_buckets` for output cotangent grad [B, L, d].

    Recomputes the forward with the given buckets under fastmath.vjp (JAX), so
    nothing of the forward pass (no attention matrix) has to be kept. With
    `heads_in_turn`, one head at a time (a scan: recompute and pull back head h,
    add its input gradient), so only one head's scores and probabilities are
    alive: the largest buffers of a long-input training step (docs/RESULTS.md,
    section 2).
    """
    if not heads_in_turn(settings):
        def attend(x_, w_):
            return attend_given_buckets(x_, valid, w_, buckets, rng, settings=settings)
        _, pullback = fastmath.vjp(attend, x, weights)
        return pullback(grad)
    s = settings
    x_pad, valid_pad = _pad_to_chunks(x, valid, s.chunk_len)
    grad_pad = xnp.pad(grad, ((0, 0), (0, x_pad.shape[1] - x.shape[1]), (0, 0)))
    grad_pad = output_dropout(grad_pad, s.output_dropout, rng)    # through the output dropout

    def add_head_grad(x_grad, head):
        def attend_head(x_, w_):
            return _one_head(x_, valid_pad, w_ + head[3:], s, rng)
        _, pullback = fastmath.vjp(attend_head, x_pad, head[:3])
        head_x_grad, head_w_grad = pullback(grad_pad)
        return x_grad + head_x_grad, head_w_grad
    x_grad, w_grads = fastmath.scan(add_head_grad, grad_pad[:, :, :1] * x_pad * 0.0,  # see above
                                    _per_head(weights, buckets))
    return x_grad[:, :x.shape[1]], tuple(w[:, 0] for w in w_grads)


__all__ = ['LSHSettings', 'SELF_VALUE', 'attend_backward', 'attend_given_buckets',
           'combine_rounds', 'hash_and_attend', 'hash_buckets', 'heads_in_turn', 'look_adjacent',
           'lsh_attention_rounds', 'lsh_self_attention', 'output_dropout', 'padded_length',
           'project_output', 'project_qkv', 'sort_by_bucket', 'window_sizes', 'with_settings']
