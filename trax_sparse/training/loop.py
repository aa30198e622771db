"""The training loop: jit'd data-parallel steps, evals, metrics, checkpoints, resume.

`Loop(model, TrainTask(...), eval_tasks=[EvalTask(...)], output_dir=DIR).run(n)` trains
`model` for n steps on the JAX backend. Each step is one jit'd function: value_and_grad
of model.pure_fn + loss layer, an optax update, the model state threaded through, and
rng = fold_in(key(seed), step), so a run is a function of the seed, the data and the step.
Batches are sharded over all devices (or n_devices), weights replicated.

With an output_dir the loop writes metrics.jsonl, TensorBoard files (train/, eval/) and
checkpoints (checkpoints/, see checkpoint.py) every n_steps_per_checkpoint steps and at
the end of run(); a new Loop on the same dir resumes from the newest valid checkpoint:
weights, model and optimizer state, step, seed and data position, so the resumed run
computes exactly what an uninterrupted run would. A non-finite loss or gradient stops
training with NonFiniteLossError naming the step; no checkpoint is written after it.

Example:
    >>> import numpy as np
    >>> from trax_sparse import layers as tl
    >>> x = np.arange(8, dtype=np.int32).reshape(2, 4) % 5
    >>> model = tl.Serial(tl.Embedding(5, 8), tl.Dense(5))
    >>> loop = Loop(model, TrainTask(iter(lambda: (x, x), None)), random_seed=0)
    >>> loop.run(2)
    >>> loop.step
    2
"""
import collections
import logging
import math
import os
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.fastmath import BackendError
from trax_sparse.fastmath import numpy as xnp
from trax_sparse.fastmath import tree_leaves, tree_map, tree_structure
from trax_sparse.training import checkpoint as ckpt
from trax_sparse.training.distributed import DataParallel, is_primary
from trax_sparse.training.metrics_writer import MetricsWriter, ProgressBar
from trax_sparse.training.tasks import BatchFeed, EvalTask, TrainTask

log = logging.getLogger('trax_sparse.training')
TIMING_METRICS = ('tokens_per_second', 'steps_per_second')
_FIRST = ('loss', 'accuracy', 'log_perplexity')  # the order of metrics in train records


class NonFiniteLossError(FloatingPointError):
    """Training stopped because the loss or the gradient became NaN or infinite."""


class OutputDirError(ValueError):
    """The output directory cannot be created or written."""


def prepare_output_dir(path: str) -> str:
    """Creates `path` if needed and checks it is writable; returns its absolute path."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=ckpt.TEMP_PREFIX + 'probe-')
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OutputDirError(f'output_dir {path} is not a writable directory: '
                             f'{e.strerror or e}') from e
    return path


# ---- the data stack ---------------------------------------------------------------------------
def _from_stack(items: Sequence, n: int) -> Any:
    return items[0] if n == 1 else tuple(items[:n])


def _to_stack(outputs: Any, n: int) -> list:
    return [outputs] if n == 1 else list(outputs)


def _is_prediction_stack(stack: Sequence) -> bool:
    """(logits [..., V], int targets [...], weights [...]) on top: accuracy applies."""
    return (len(stack) >= 3 and len(stack[0].shape) == len(stack[1].shape) + 1
            and np.issubdtype(stack[1].dtype, np.integer))


def _every(n: int) -> Callable[[int], bool]:
    return lambda step: step % n == 0


def _check_same_tree(name: str, got: Any, expected: Any, source: str) -> None:
    if tree_structure(got) != tree_structure(expected):
        raise ckpt.CheckpointError(f'{source}: the {name} tree does not have the structure of '
                                   f'the model (a checkpoint of another model?)')
    for i, (a, b) in enumerate(zip(tree_leaves(got), tree_leaves(expected))):
        if tuple(np.shape(a)) != tuple(np.shape(b)) or np.dtype(a.dtype) != np.dtype(b.dtype):
            raise ckpt.CheckpointError(
                f'{source}: {name} leaf {i} is {np.dtype(a.dtype)}{list(np.shape(a))}, the model '
                f'has {np.dtype(b.dtype)}{list(np.shape(b))}')


def _forget_tracers(layer: tl.Layer) -> None:
    """Drops weights/state/rng that a traced (jit'd) init left on `layer` and its sublayers."""
    for sub in layer.sublayers:
        _forget_tracers(sub)
    for attr in ('weights', 'state', 'rng'):
        if not all(fastmath.is_concrete(x) for x in tree_leaves(getattr(layer, attr))):
            setattr(layer, attr, None)


class Loop:
    """Trains `model` on one TrainTask; evaluates an eval-mode model on the eval tasks.

    eval_model: the model in 'eval' mode with the same weights tree (default: `model`).
    eval_at / checkpoint_at: step -> bool (default: step 1 and every
    n_steps_per_checkpoint steps / every n_steps_per_checkpoint steps).
    random_seed: None draws one (recorded in checkpoints, reused on resume).
    n_devices: devices for data parallelism (default: all); use_jit=False for debugging.
    progress_bar: None shows a bar only on a terminal. config_text: stored in checkpoints.
    Train records average the steps since the previous record; tokens_per_second is over
    that interval's wall time (so the first record includes compilation).
    """

    def __init__(self, model: tl.Layer, tasks: TrainTask | Sequence[TrainTask],
                 eval_model: tl.Layer | None = None,
                 eval_tasks: EvalTask | Sequence[EvalTask] | None = None,
                 output_dir: str | None = None, random_seed: int | None = 0,
                 eval_at: Callable[[int], bool] | None = None,
                 checkpoint_at: Callable[[int], bool] | None = None, keep_checkpoints: int = 3,
                 n_devices: int | None = None, use_jit: bool = True,
                 progress_bar: bool | None = None, config_text: str | None = None):
        if not fastmath.jax_available():
            raise BackendError('training needs the JAX backend (gradients): pip install jax optax')
        tasks = [tasks] if isinstance(tasks, TrainTask) else list(tasks)
        if len(tasks) != 1 or not isinstance(tasks[0], TrainTask):
            raise ValueError(f'Loop trains exactly one TrainTask, got {len(tasks)} tasks')
        eval_tasks = [eval_tasks] if isinstance(eval_tasks, EvalTask) else list(eval_tasks or [])
        names = [t.name for t in eval_tasks]
        if len(set(names)) != len(names) or 'train' in names:
            raise ValueError(f"eval task names must be distinct and not 'train', got {names}")
        if keep_checkpoints < 1:
            raise ValueError(f'Loop: keep_checkpoints must be >= 1, got {keep_checkpoints}')
        self._model = tl.Serial(model) if not isinstance(model, tl.Layer) else model
        self._eval_model = eval_model if eval_model is not None else self._model
        self._task, self._eval_tasks = tasks[0], eval_tasks
        every = self._task.n_steps_per_checkpoint
        self._checkpoint_at = checkpoint_at or _every(every)
        self._eval_at = eval_at or (lambda step: step == 1 or step % every == 0)
        self._keep = int(keep_checkpoints)
        self._use_jit, self._progress_bar = use_jit, progress_bar
        self._config_text = config_text
        self._output_dir = prepare_output_dir(output_dir) if output_dir else None
        self.history: list[dict] = []
        self._in_flight: collections.deque = collections.deque()
        self._accumulated: list[dict] = []
        self._tokens = 0
        self._last_loss: float | None = None
        self._last_saved_step = self._last_eval_step = -1
        self._last_checkpoint: str | None = None
        self._diverged = False
        with fastmath.use_backend('jax'):
            self._setup(random_seed, n_devices)

    # ---- public --------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        """Number of training steps done (restored from the checkpoint on resume)."""
        return self._step

    @property
    def model(self) -> tl.Layer:
        """The trained model; it holds the trained weights and state after run()."""
        return self._model

    @property
    def eval_model(self) -> tl.Layer:
        return self._eval_model

    @property
    def tasks(self) -> list[TrainTask]:
        return [self._task]

    @property
    def eval_tasks(self) -> list[EvalTask]:
        return list(self._eval_tasks)

    @property
    def output_dir(self) -> str | None:
        return self._output_dir

    @property
    def checkpoint_dir(self) -> str | None:
        return os.path.join(self._output_dir, 'checkpoints') if self._output_dir else None

    @property
    def last_checkpoint(self) -> str | None:
        """The JSON path of the newest checkpoint written or restored."""
        return self._last_checkpoint

    @property
    def n_devices(self) -> int:
        return self._parallel.n_devices

    @property
    def random_seed(self) -> int:
        return self._seed

    @property
    def weights(self) -> Any:
        """The trained weights as NumPy arrays."""
        return self._parallel.to_host(self._weights)

    @property
    def state(self) -> Any:
        """The train model's state as NumPy arrays."""
        return self._parallel.to_host(self._state)

    def learning_rate(self, step: int) -> float:
        """The schedule's learning rate at `step` (computed on the host)."""
        with fastmath.use_backend('numpy'):
            return float(self._task.lr_schedule(step))

    def run(self, n_steps: int = 1) -> None:
        """Runs n_steps more training steps, with reports, evals and checkpoints on the way."""
        if self._diverged:
            raise NonFiniteLossError('this Loop stopped on a non-finite loss; start a new Loop '
                                     '(it resumes from the last good checkpoint)')
        if n_steps <= 0:
            return
        with fastmath.use_backend('jax'):
            bar = ProgressBar(n_steps, enabled=self._progress_bar)
            self._interval_start = time.perf_counter()
            try:
                for _ in range(int(n_steps)):
                    self._train_one_step()
                    bar.update(self._last_loss)
                    at_checkpoint = self._output_dir is not None and self._checkpoint_at(self._step)
                    at_eval = bool(self._eval_tasks) and self._eval_at(self._step)
                    if at_checkpoint or self._eval_at(self._step):
                        self._report_train()
                    if at_eval:
                        self.run_evals()
                    if at_checkpoint:
                        self.save_checkpoint()
                self._report_train()
                if self._eval_tasks and self._last_eval_step != self._step:
                    self.run_evals()
                if self._output_dir is not None and self._last_saved_step != self._step:
                    self.save_checkpoint()
            finally:
                bar.close()
            self._model.weights, self._model.state = self.weights, self.state

    def run_evals(self) -> list[dict]:
        """Evaluates every eval task now with the current weights; returns the records."""
        records = []
        with fastmath.use_backend('jax'):
            for index, (task, feed) in enumerate(zip(self._eval_tasks, self._eval_feeds)):
                if feed.resumable:
                    feed.restore(self._eval_starts[index])
                sums, total = None, 0.0
                for b in range(task.n_eval_batches):
                    batch = self._parallel.shard_batch(feed.next())
                    values, weight = self._parallel.to_host(self._eval_steps[index](
                        self._weights, self._eval_state, batch, self._eval_key,
                        np.int32(self._step), np.int32(b)))
                    weight = float(weight)
                    values = [float(v) * weight for v in values]
                    sums = values if sums is None else [s + v for s, v in zip(sums, values)]
                    total += weight
                record = {'step': self._step, 'split': task.name}
                for name, value in zip(task.metric_names, sums):
                    record[name] = value / max(total, 1e-9)
                if 'loss' in record and isinstance(task.metrics[task.metric_names.index('loss')],
                                                   tl.CrossEntropyLoss):
                    record['log_perplexity'] = record['loss']
                self._write(record)
                records.append(record)
        self._last_eval_step = self._step
        return records

    def save_checkpoint(self) -> str | None:
        """Writes the checkpoint of the current step (on process 0); returns its JSON path."""
        if self._output_dir is None:
            raise ValueError('Loop.save_checkpoint needs an output_dir')
        with fastmath.use_backend('jax'):
            self._drain(0)
            if self._diverged:
                raise NonFiniteLossError('refusing to save weights after a non-finite loss')
            self._last_saved_step = self._step
            if not is_primary():
                return None
            opt_leaves, opt_treedef = fastmath.backend().tree_flatten(
                self._parallel.to_host(self._opt_state))
            metadata = {
                'rng': {'seed': self._seed},
                'data_position': {
                    'train': self._train_feed.position(),
                    'eval': {t.name: start if f.resumable else f.position() for t, f, start
                             in zip(self._eval_tasks, self._eval_feeds, self._eval_starts)}},
                'gin_config': self._config_text,
                'optimizer': {'name': self._task.optimizer.name,
                              'hyper_parameters': self._task.optimizer.hyper_parameters,
                              'clip_gradient_norm': self._task.optimizer.clip_gradient_norm},
                'model': self._model.name, 'n_devices': self.n_devices,
            }
            self._last_checkpoint = ckpt.save_checkpoint(
                self.checkpoint_dir, self._step, self.weights, self.state, opt_leaves,
                str(opt_treedef), metadata, keep=self._keep)
            log.info('step %d: saved checkpoint %s', self._step, self._last_checkpoint)
            return self._last_checkpoint

    # ---- setup ----------------------------------------------------------------------------------
    def _setup(self, random_seed: int | None, n_devices: int | None) -> None:
        restored = None
        if self._output_dir is not None:
            ckpt.remove_temp_files(self.checkpoint_dir)
            restored = ckpt.load_latest(self.checkpoint_dir)
        if restored is not None:
            self._seed = int(restored.metadata['rng']['seed'])
            if random_seed is not None and random_seed != self._seed:
                log.warning('resuming with the checkpoint seed %d, not random_seed=%s',
                            self._seed, random_seed)
        elif random_seed is None:
            self._seed = int.from_bytes(os.urandom(4), 'little')
        else:
            self._seed = int(random_seed)
        with fastmath.use_backend('numpy'):  # the same uint32[2] key as jax.random.PRNGKey
            base_key = fastmath.random.get_prng(self._seed)

        self._train_feed = BatchFeed(self._task.labeled_data, 'TrainTask.labeled_data')
        self._eval_feeds = [BatchFeed(t.labeled_data, f'EvalTask({t.name}).labeled_data')
                            for t in self._eval_tasks]
        if restored is not None:
            position = restored.metadata.get('data_position', {})
            self._train_feed.restore(position.get('train', {'batches': restored.step}))
            for task, feed in zip(self._eval_tasks, self._eval_feeds):
                feed.restore(position.get('eval', {}).get(task.name, {'batches': 0}))
        # Evals of resumable streams start from here each time (same batches every eval).
        self._eval_starts = [feed.position() for feed in self._eval_feeds]

        first = self._train_feed.peek()
        if len(first) < self._model.n_in:
            raise ValueError(f'the model takes {self._model.n_in} inputs but batches have '
                             f'{len(first)} items')
        eval_firsts = [feed.peek() for feed in self._eval_feeds]
        if eval_firsts and len(eval_firsts[0]) < self._eval_model.n_in:
            raise ValueError(f'the eval model takes {self._eval_model.n_in} inputs but eval '
                             f'batches have {len(eval_firsts[0])} items')
        self._accuracy, self._cross_entropy = tl.Accuracy(), tl.CrossEntropyLoss()
        self._tx = self._task.optimizer.transform(self._task.lr_schedule)
        jit = fastmath.jit if self._use_jit else (lambda f, **kwargs: f)
        initialize = jit(lambda key: self._initialize(key, shapes.signature(first),
                                                      [shapes.signature(b) for b in eval_firsts]))
        init = initialize(base_key)
        for layer in [self._model, self._eval_model, self._task.loss_layer] + \
                [m for t in self._eval_tasks for m in t.metrics]:
            _forget_tracers(layer)
        self._train_key, self._eval_key = init['train_key'], init['eval_key']
        self._loss_weights, self._loss_state = init['loss']
        self._metric_weights = init['metrics']
        weights, state, opt_state = init['weights'], init['state'], init['opt_state']
        self._step = 0
        if restored is not None:
            weights, state, opt_state = self._restore(restored, weights, state, opt_state)
            self._step = self._last_saved_step = restored.step
            self._last_eval_step = restored.step
            self._last_checkpoint = restored.path
            log.info('resumed from %s (step %d)', restored.path, restored.step)
        self._model.rng = init['init_key']  # the model gets the weights at the end of run()

        self._parallel = DataParallel(n_devices)
        self._weights = self._parallel.replicate(weights)
        self._state = self._parallel.replicate(state)
        self._opt_state = self._parallel.replicate(opt_state)
        self._eval_state = self._parallel.replicate(init['eval_state'])
        self._train_step = jit(self._train_step_fn, donate_argnums=(0, 1, 2))
        self._eval_steps = [jit(self._make_eval_step(t)) for t in self._eval_tasks]
        writer_dir = self._output_dir if is_primary() else None
        self._writer = MetricsWriter(writer_dir, resume_step=self._step)

    def _initialize(self, base_key: Any, batch_sig: tuple, eval_batch_sigs: list) -> dict:
        """Keys, weights, states and optimizer state (traced once under jit)."""
        init_key, train_key, eval_key = fastmath.random.split(base_key, 3)
        model, n_in = self._model, self._model.n_in
        input_sig = _from_stack(batch_sig, n_in)
        weights, state = model.init(input_sig, rng=init_key)
        out_sig = model.abstract_forward(input_sig, weights, state, init_key)
        stack_sig = _to_stack(out_sig, model.n_out) + list(batch_sig[n_in:])
        loss = self._task.loss_layer
        values = {'init_key': init_key, 'train_key': train_key, 'eval_key': eval_key,
                  'weights': weights, 'state': state, 'opt_state': self._tx.init(weights),
                  'loss': loss.init(_from_stack(stack_sig, loss.n_in), rng=init_key),
                  'eval_state': (), 'metrics': []}
        if not eval_batch_sigs:
            return values
        model, n_in = self._eval_model, self._eval_model.n_in
        input_sig = _from_stack(eval_batch_sigs[0], n_in)
        eval_weights, values['eval_state'] = model.init(input_sig, rng=eval_key)
        try:
            _check_same_tree('weights', eval_weights, weights, 'eval_model')
        except ckpt.CheckpointError as e:
            raise ValueError(f'eval_model must have the weights tree of the trained model '
                             f'(the same model in eval mode): {e}') from None
        for task, batch_sig in zip(self._eval_tasks, eval_batch_sigs):
            out_sig = model.abstract_forward(_from_stack(batch_sig, n_in), weights,
                                             values['eval_state'], eval_key)
            stack_sig = _to_stack(out_sig, model.n_out) + list(batch_sig[n_in:])
            values['metrics'].append([m.init(_from_stack(stack_sig, m.n_in), rng=eval_key)
                                      for m in task.metrics])
        return values

    def _restore(self, restored: ckpt.Checkpoint, weights: Any, state: Any, opt_state: Any):
        source = f'checkpoint {restored.path}'
        _check_same_tree('weights', restored.weights, weights, source)
        _check_same_tree('state', restored.state, state, source)
        template, treedef = fastmath.backend().tree_flatten(opt_state)
        _check_same_tree('optimizer state', restored.opt_state_leaves, template, source)
        saved_treedef = restored.metadata['trees']['opt_state'].get('treedef')
        if saved_treedef and saved_treedef != str(treedef):
            raise ckpt.CheckpointError(f'{source}: the optimizer state has another structure '
                                       f'than {self._task.optimizer.name} makes (optimizer '
                                       f'changed?)')
        return (restored.weights, restored.state,
                fastmath.backend().tree_unflatten(treedef, restored.opt_state_leaves))

    # ---- steps ----------------------------------------------------------------------------------
    def _train_step_fn(self, weights, state, opt_state, batch, train_key, step):
        model, loss = self._model, self._task.loss_layer
        rng = fastmath.random.fold_in(train_key, step)
        n_in = model.n_in

        def loss_fn(w):
            outputs, new_state = model.pure_fn(_from_stack(batch, n_in), w, state, rng)
            stack = _to_stack(outputs, model.n_out) + list(batch[n_in:])
            value, _ = loss.pure_fn(_from_stack(stack, loss.n_in), self._loss_weights,
                                    self._loss_state, rng)
            return value, (new_state, stack)

        (value, (new_state, stack)), grads = fastmath.value_and_grad(loss_fn, has_aux=True)(
            weights)
        updates, opt_state = self._tx.update(grads, opt_state, weights)
        weights = tree_map(lambda w, u: w + u.astype(w.dtype), weights, updates)
        grad_norm = xnp.sqrt(sum(xnp.sum(xnp.square(g.astype(xnp.float32)))
                                 for g in tree_leaves(grads)))
        metrics = {'loss': value, 'grad_norm': grad_norm}
        if _is_prediction_stack(stack):
            top = tuple(stack[:3])
            metrics['accuracy'] = self._accuracy.pure_fn(top, (), (), rng)[0]
            metrics['log_perplexity'] = self._cross_entropy.pure_fn(top, (), (), rng)[0]
        return weights, new_state, opt_state, metrics

    def _make_eval_step(self, task: EvalTask) -> Callable:
        index = self._eval_tasks.index(task)
        model = self._eval_model

        def eval_step(weights, eval_state, batch, eval_key, step, batch_index):
            rng = fastmath.random.fold_in(fastmath.random.fold_in(eval_key, step), batch_index)
            outputs, _ = model.pure_fn(_from_stack(batch, model.n_in), weights, eval_state, rng)
            stack = _to_stack(outputs, model.n_out) + list(batch[model.n_in:])
            values = [m.pure_fn(_from_stack(stack, m.n_in), w, s, rng)[0]
                      for m, (w, s) in zip(task.metrics, self._metric_weights[index])]
            weight = xnp.sum(stack[2]) if len(stack) >= 3 else xnp.ones(())
            return values, weight
        return eval_step

    def _train_one_step(self) -> None:
        step = self._step + 1
        batch = self._train_feed.next()
        n_tokens = int(np.prod(batch[1].shape))
        self._weights, self._state, self._opt_state, metrics = self._train_step(
            self._weights, self._state, self._opt_state, self._parallel.shard_batch(batch),
            self._train_key, np.int32(step))
        self._step = step
        self._in_flight.append((step, metrics, n_tokens))
        self._drain(keep=1)  # check the previous step while this one runs

    def _drain(self, keep: int) -> None:
        while len(self._in_flight) > keep:
            step, metrics, n_tokens = self._in_flight.popleft()
            values = {k: float(v) for k, v in self._parallel.to_host(metrics).items()}
            if not (math.isfinite(values['loss']) and math.isfinite(values['grad_norm'])):
                self._diverged = True
                self._in_flight.clear()
                self._write({'step': step, 'split': 'train', **values})
                if self._last_checkpoint:
                    kept = f'the last good checkpoint is {self._last_checkpoint}'
                else:
                    kept = 'no checkpoint was written'
                raise NonFiniteLossError(
                    f"training stopped at step {step}: non-finite loss {values['loss']} "
                    f"(gradient norm {values['grad_norm']}); nothing after step "
                    f'{self._last_saved_step if self._last_saved_step >= 0 else 0} is saved; '
                    f'{kept}. Lower the learning rate, clip gradients (clip_gradient_norm) or '
                    f'check the data.')
            self._accumulated.append(values)
            self._tokens += n_tokens
            self._last_loss = values['loss']

    def _report_train(self) -> None:
        self._drain(0)
        if not self._accumulated:
            return
        now = time.perf_counter()
        elapsed = max(now - self._interval_start, 1e-9)
        record = {'step': self._step, 'split': 'train'}
        measured = self._accumulated[0]
        names = [n for n in _FIRST if n in measured] + sorted(set(measured) - set(_FIRST))
        for name in names:
            record[name] = float(np.mean([v[name] for v in self._accumulated]))
        record['learning_rate'] = self.learning_rate(self._step)
        record['tokens_per_second'] = self._tokens / elapsed
        record['steps_per_second'] = len(self._accumulated) / elapsed
        self._accumulated, self._tokens, self._interval_start = [], 0, now
        self._write(record)

    def _write(self, record: dict) -> None:
        self.history.append(record)
        self._writer.write(record)

    def close(self) -> None:
        """Flushes and closes the metric files."""
        self._writer.close()


__all__ = ['Loop', 'NonFiniteLossError', 'OutputDirError', 'TIMING_METRICS',
           'prepare_output_dir']
