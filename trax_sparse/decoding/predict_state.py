"""The predict-mode contract as the decoding functions use it (docs/predict_mode.md).

- `init_predict_state(model, signature)`: a fresh state for one decoding step's
  inputs, built from `model.state_signature` (every predict state starts at
  zero), without running or re-initializing the model.
- `predict_step(model)`: (inputs, weights, state, rng) -> (logits [B, V], new
  state); on JAX every call (the prefix too) is jit-compiled with the state
  donated, so caches update in place; on NumPy the model runs as a flat
  program of leaf calls built once per model (`layers.flat.FlatForward`).
- `start_decoding(...)`: runs the prefix call, after checking on the host that
  the caches hold the prefix plus the steps to come (a clear error, never NaN).
- `later_inputs(inputs)`: encoder inputs of the calls after the first: empty.

Decoding threads the state explicitly through `pure_fn`; it never writes to
`model.state`, so a model can be decoded twice in a row (Trax #1713).

Example:
    >>> import numpy as np
    >>> from trax_sparse import fastmath, shapes, layers as tl
    >>> with fastmath.use_backend('numpy'):
    ...     model = tl.Serial(tl.Embedding(5, 4), tl.PositionalEncoding(8, mode='predict'))
    ...     _ = model.init(shapes.ShapeDtype((1, 1), np.int32))
    ...     state = init_predict_state(model, shapes.ShapeDtype((3, 1), np.int32))
    >>> state
    ((), array(0, dtype=int32))
"""
import weakref
from typing import Any, Callable


from trax_sparse import fastmath, shapes
from trax_sparse.decoding.storage import with_cache_dtype
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.layers.base import Layer, recording_predict_use
from trax_sparse.layers.flat import FlatForward

_compiled_steps: 'weakref.WeakKeyDictionary[Layer, Callable]' = weakref.WeakKeyDictionary()
_flat_programs: 'weakref.WeakKeyDictionary[Layer, FlatForward]' = weakref.WeakKeyDictionary()
_sharded_steps: 'weakref.WeakKeyDictionary[Layer, dict]' = weakref.WeakKeyDictionary()


def check_predict_model(model: Layer) -> None:
    if model.weights is None:
        raise ValueError(f'decoding: {model.name} is not initialized; call '
                         f'model.init(signature of one step of inputs) and set model.weights first')


def init_predict_state(model: Layer, input_signature: Any, cache_dtype: str | None = None
                       ) -> Any:
    """A fresh predict state (zeros of `model.state_signature`) on the live backend; with
    `cache_dtype` ('bfloat16', ...) its attention K/V caches are made in that dtype
    (`storage.with_cache_dtype`)."""
    signature = with_cache_dtype(model, model.state_signature(input_signature), cache_dtype)
    return fastmath.tree_map(lambda sig: xnp.zeros(sig.shape, sig.dtype), signature)


def fresh_state(model: Layer, state: Any = None, input_signature: Any = None,
                cache_dtype: str | None = None) -> Any:
    """A private copy of `state` (default: a new initial state for `input_signature`), its
    K/V caches in `cache_dtype` if given.

    The copy is safe to update in place (NumPy caches) or to donate (JAX).
    """
    check_predict_model(model)
    if state is None:
        return init_predict_state(model, input_signature, cache_dtype)
    state = fastmath.tree_map(lambda a: xnp.array(a, copy=True), state)
    return with_cache_dtype(model, state, cache_dtype)


class PredictStep:
    """(inputs, weights, state, rng) -> (logits of the last position [B, V], new_state).

    With `accelerate` (the default) the step runs fast on either backend:
    - JAX: every call is jit-compiled (one compilation per input shape, kept for
      the model's lifetime) with the state donated, so caches are written in
      place (`compiled` is True);
    - NumPy: the model runs as a flat program of leaf calls
      (`layers.flat.FlatForward`, built once per model): the same numbers as
      `pure_fn`, without its tree walk and per-call checks.
    With a `mesh` (a `decoding.DecodingMesh`, JAX) and the state's shardings the jit
    keeps the state split as given (its output shardings) and returns replicated logits.
    """

    def __init__(self, model: Layer, accelerate: bool = True, mesh: Any = None,
                 state_shardings: Any = None):
        # The compiled cache is keyed weakly by the model: its value must not hold the model
        # (else no decoded model is ever freed); this step object holds it instead.
        model_ref = weakref.ref(model)
        self._model = model

        def step(inputs, weights, state, rng):
            out, new_state = model_ref().pure_fn(inputs, weights, state, rng)
            return _last_logits(out), new_state

        self.eager = step
        self.compiled = bool(accelerate and fastmath.is_jax())
        if self.compiled and mesh is not None:
            self._run = _sharded_step(model, step, mesh, state_shardings)
        elif self.compiled:
            if model not in _compiled_steps:
                _compiled_steps[model] = fastmath.jit(step, donate_argnums=(2,))
            self._run = _compiled_steps[model]
        elif accelerate:
            self._run = self._flat_step(model)
        else:
            self._run = step

    @staticmethod
    def _flat_step(model: Layer) -> Callable:
        if model not in _flat_programs:
            _flat_programs[model] = FlatForward(model)
        program, memo = _flat_programs[model], {}   # memo: this decoding run's slots

        def flat_step(inputs, weights, state, rng):
            with fastmath.blas_scope():      # BLAS threads set once per step, not per call
                out, new_state = program(inputs, weights, state, rng, memo)
            return _last_logits(out), new_state
        return flat_step

    def __call__(self, inputs: Any, weights: Any, state: Any, rng: Any) -> tuple[Any, Any]:
        return self._run(inputs, weights, state, rng)


def _sharded_step(model: Layer, step: Callable, mesh: Any, state_shardings: Any) -> Callable:
    """The step jitted for one mesh and state shardings (kept for the model's lifetime)."""
    steps = _sharded_steps.setdefault(model, {})
    key = (mesh.key, tuple(fastmath.tree_leaves(state_shardings)),
           str(fastmath.tree_structure(state_shardings)))
    if key not in steps:
        steps[key] = fastmath.jit(step, donate_argnums=(2,),
                                  out_shardings=(mesh.replicated, state_shardings))
    return steps[key]


def _last_logits(out: Any) -> Any:
    logits = out[0] if isinstance(out, (tuple, list)) else out   # [B, L, V]
    return logits[:, -1, :]


def predict_step(model: Layer, accelerate: bool = True, mesh: Any = None,
                 state_shardings: Any = None) -> PredictStep:
    """The decoding step of `model` (see `PredictStep`)."""
    return PredictStep(model, accelerate, mesh, state_shardings)


def later_inputs(inputs: Any) -> Any:
    """Encoder inputs of the predict calls after the first: an empty [B, 0] array."""
    return None if inputs is None else inputs[:, :0]


def _signature(tree: Any) -> Any:
    return fastmath.tree_map(shapes.signature, tree)


def positions_left(uses: list) -> int | None:
    """How many more one-token steps the caches hold after the recorded prefix call."""
    left = [use.capacity - use.n_new for use in uses]
    return min(left) if left else None


def _check_room(model: Layer, uses: list, n_steps: int | None) -> None:
    for use in uses:
        if use.n_new > use.capacity or (n_steps is not None
                                        and use.n_new + n_steps > use.capacity):
            total = use.n_new + (n_steps or 0)
            raise ValueError(
                f'decoding: {model.name} cannot decode that far: its layer {use.layer} holds '
                f'{use.capacity} positions, but the prefix call takes {use.n_new} and '
                f'{n_steps or 0} more steps follow ({total} in all); decode fewer tokens, '
                f'or build the model with a larger max_len')


def start_decoding(model: Layer, step: PredictStep, prefix_inputs: Any, weights: Any,
                   state: Any, rng: Any, n_steps: int | None) -> tuple[Any, Any, int | None]:
    """Runs the prefix call, checking first that the caches hold it plus `n_steps` steps.

    Returns (logits [B, V], new state, steps the caches still hold). Under jit
    the check traces the model abstractly (`recording_predict_use`), so an
    overflow is an error before anything runs; eagerly it records the real
    prefix call and raises before any token is produced.
    """
    if step.compiled:
        with recording_predict_use() as uses:
            fastmath.abstract_eval(lambda x, w, s, r: step.eager(x, w, s, r)[0])(
                _signature(prefix_inputs), _signature(weights), _signature(state),
                _signature(rng))
        _check_room(model, uses, n_steps)
        logits, state = step(prefix_inputs, weights, state, rng)
    else:
        with recording_predict_use() as uses:
            logits, state = step(prefix_inputs, weights, state, rng)
        _check_room(model, uses, n_steps)
    return logits, state, positions_left(uses)


def batch_leaf_mask(model: Layer, signature_for_batch: Callable[[int], Any],
                    batch_size: int) -> list[bool]:
    """For each state leaf: does its leading axis run over the batch?

    Found by comparing the state signatures at batch sizes B and B+1 (no
    guessing from shapes that happen to coincide). `signature_for_batch(b)`
    gives the signature of one decoding step's inputs at batch size b.
    """
    a = fastmath.tree_leaves(model.state_signature(signature_for_batch(batch_size)))
    b = fastmath.tree_leaves(model.state_signature(signature_for_batch(batch_size + 1)))
    return [bool(x.shape and y.shape and x.shape[0] != y.shape[0]) for x, y in zip(a, b)]


def reorder_state(state: Any, mask: list[bool], index: Any) -> Any:
    """Gathers batch rows `index` [B'] of every batch-indexed state leaf."""
    leaves = fastmath.tree_leaves(state)
    new = [xnp.take(leaf, index, axis=0) if is_batch else leaf
           for leaf, is_batch in zip(leaves, mask)]
    return fastmath.tree_unflatten_like(state, new)
