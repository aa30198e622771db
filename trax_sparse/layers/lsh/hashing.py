"""LSH hashing for LSHSelfAttention: rotations, buckets, key normalization.

- `hash_rotations`: random rotations R ~ N(0, 1) [H, d_qk, n_hashes, Σ f_i/2]
  drawn from a key, for bucket factors (f_1, ...) (one factor: n_buckets). They come from a counter-based hash computed with `xnp`
  integer ops, so the same key gives the same rotations on NumPy and JAX (the
  backends' own RNGs differ) and under jit.
- `hash_vectors`: bucket = argmax([xR; -xR]) per head and round; with several
  factors each gets its own argmax over its slice of R, combined as
  b_1 + f_1·b_2 + f_1·f_2·b_3 + ... (Π f_i buckets, Trax's factorized hash).
- `bucket_factors`: the factors for `n_buckets` = an int, a list, or None (chosen
  from the length as Trax does: 2·L/chunk_len buckets, split in two factors
  above 128).
- `normalize_keys`: the shared-QK keys, unit-normalised queries.

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath
    >>> with fastmath.use_backend('numpy'):
    ...     rot = hash_rotations(np.array([0, 1], np.uint32), n_heads=2, d_qk=4, n_hashes=3,
    ...                          n_buckets=8)
    ...     buckets = hash_vectors(np.ones((1, 2, 5, 4), np.float32), rot)
    >>> rot.shape, buckets.shape, str(buckets.dtype)
    ((2, 4, 3, 4), (1, 2, 3, 5), 'int32')
"""
import math
from typing import Any

from trax_sparse.fastmath import numpy as xnp
from trax_sparse.precision import cast_like, float32_stats

# Tags mixed into the key so that each use of a key draws its own bits.
_ROTATION_STREAM = 0x4C534852          # 'LSHR'
ATTENTION_DROPOUT_STREAM = 0x4C534841  # 'LSHA'
OUTPUT_DROPOUT_STREAM = 0x4C53484F     # 'LSHO'


def check_n_buckets(layer_name: str, n_buckets: Any) -> tuple[int, ...] | None:
    """n_buckets (an int, a list of factors, or None) as a tuple of factors, or None.

    Raises a ValueError unless every factor is even and >= 2 (the hash takes the argmax
    over f/2 random directions and their negations).
    """
    if n_buckets is None:
        return None
    factors = tuple(n_buckets) if isinstance(n_buckets, (list, tuple)) else (n_buckets,)
    if not factors or any(isinstance(f, bool) or int(f) != f or f < 2 or int(f) % 2
                          for f in factors):
        raise ValueError(f'{layer_name}: n_buckets must be None, an even number >= 2, or a list '
                         f'of them (factorized buckets), got {n_buckets!r}')
    return tuple(int(f) for f in factors)


def bucket_factors(factors: tuple[int, ...] | None, padded_length: int,
                   chunk_len: int) -> tuple[int, ...]:
    """The factors to hash a sequence of `padded_length` with (None: chosen from the length).

    None gives n_b = 2·max(1, L/chunk_len) buckets (about chunk_len/2 positions per
    bucket), split above 128 into (2^⌈log2 √n_b⌉, n_b / that), as Trax does.

    Example:
        >>> bucket_factors(None, 1024, 64), bucket_factors(None, 16384, 64)
        ((32,), (32, 16))
    """
    if factors is not None:
        return factors
    n_b = 2 * max(1, padded_length // chunk_len)
    if n_b <= 128:
        return (n_b,)
    first = 2 ** math.ceil(math.log2(math.sqrt(n_b)))
    return first, max(2, (n_b // first) // 2 * 2)


def _fmix32(h: Any) -> Any:
    """MurmurHash3's 32-bit finalizer on uint32 arrays (wraps modulo 2**32)."""
    h = h ^ (h >> 16)
    h = h * xnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * xnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def random_bits(key: Any, n: int, stream: int) -> Any:
    """n uint32 words, a pure function of (key, stream, index): same on every backend."""
    key = xnp.asarray(key).astype(xnp.uint32).reshape(-1)       # [2]
    k0, k1 = key[0:1], key[1:2]                                  # arrays, not scalars
    counter = xnp.arange(n, dtype=xnp.uint32)                    # [n]
    h = _fmix32(counter * xnp.uint32(0x9E3779B9) + _fmix32(k0 ^ xnp.uint32(stream)))
    return _fmix32(h ^ _fmix32(k1 + xnp.uint32(0x6A09E667)))


def portable_normal(key: Any, shape: tuple, stream: int = _ROTATION_STREAM) -> Any:
    """float32 N(0, 1) samples of `shape` (Box-Muller on `random_bits`)."""
    n = max(1, math.prod(shape))
    bits = random_bits(key, 2 * n, stream)
    uniform = ((bits >> 8).astype(xnp.float32) + 0.5) * (1.0 / 2 ** 24)  # in (0, 1)
    radius = xnp.sqrt(-2.0 * xnp.log(uniform[:n]))
    angle = (2.0 * math.pi) * uniform[n:]
    return (radius * xnp.cos(angle)).astype(xnp.float32)[:math.prod(shape)].reshape(shape)


def portable_bernoulli(key: Any, p: float, shape: tuple, stream: int) -> Any:
    """bool array of `shape`, True with probability p; the same on every backend.

    Used for dropout masks: cheap to compile (integer hashing, unlike threefry)
    and identical on NumPy and JAX for the same key.
    """
    n = max(1, math.prod(shape))
    uniform = ((random_bits(key, n, stream) >> 8).astype(xnp.float32) + 0.5) * (1.0 / 2 ** 24)
    return (uniform < p)[:math.prod(shape)].reshape(shape)


def hash_rotations(key: Any, n_heads: int, d_qk: int, n_hashes: int, n_buckets: Any) -> Any:
    """Random rotations [H, d_qk, n_hashes, Σ f_i/2], R ~ N(0, 1), from `key`.

    n_buckets: an int or a tuple of bucket factors.
    """
    factors = n_buckets if isinstance(n_buckets, tuple) else (int(n_buckets),)
    return portable_normal(key, (n_heads, d_qk, n_hashes, sum(f // 2 for f in factors)))


def hash_vectors(vectors: Any, rotations: Any, factors: tuple[int, ...] | None = None) -> Any:
    """vectors [B, H, L, d_qk], rotations [H, d_qk, R, Σ f/2] -> buckets [B, H, R, L] int32.

    One factor (default: 2·rotations' last axis): bucket = argmax over n_b of
    [xR; -xR] (ties: the lowest index, on both backends). Several: one argmax per
    factor's slice of R, combined as b_1 + f_1·b_2 + f_1·f_2·b_3 + ...
    """
    vectors = float32_stats(vectors)                 # hashed in float32: no bf16 ties
    rotated = xnp.einsum('bhld,hdrk->bhrlk', vectors, rotations.astype(vectors.dtype))
    factors = factors or (2 * rotations.shape[-1],)
    buckets, scale, start = 0, 1, 0
    for f in factors:
        part = rotated[..., start:start + f // 2]                   # [B, H, R, L, f/2]
        both = xnp.concatenate([part, -part], axis=-1)              # [B, H, R, L, f]
        buckets = buckets + scale * xnp.argmax(both, axis=-1).astype(xnp.int32)
        scale, start = scale * f, start + f // 2
    return buckets.astype(xnp.int32)


def normalize_keys(qk: Any) -> Any:
    """Shared-QK keys: qk / sqrt(sum(qk²) + d·1e-6), i.e. unit length (Trax's RMS norm / √d)."""
    d = qk.shape[-1]
    wide = float32_stats(qk)
    mean_square = xnp.mean(wide * wide, axis=-1, keepdims=True)   # [..., 1] (float32)
    return cast_like(wide / (xnp.sqrt(mean_square + 1e-6) * math.sqrt(d)), qk)


__all__ = ['ATTENTION_DROPOUT_STREAM', 'OUTPUT_DROPOUT_STREAM', 'bucket_factors', 'check_n_buckets',
           'hash_rotations', 'hash_vectors', 'normalize_keys', 'portable_bernoulli',
           'portable_normal', 'random_bits']
