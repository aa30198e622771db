"""The training loop: jit'd data-parallel steps, evals, metrics, checkpoints, resume.

`Loop(model, TrainTask(...), eval_tasks=[EvalTask(...)], output_dir=DIR).run(n)` trains
`model` for n steps on the JAX backend. It wires three parts that read alone:
train_step.py (the pure, jit'd step and its TrainState), checkpointer.py (save, restore,
corrupt checkpoints moved aside, directory checks) and reporter.py (train records,
metrics.jsonl / TensorBoard, log lines with an ETA, progress bar). rng = fold_in(key(seed),
step), so a run is a function of the seed, the data and the step. Batches are split over the
mesh's 'data' axis (default: all devices, weights replicated); with mesh_shape / fsdp the
weights and optimizer state are split too (placement.py); token ids are checked on the host.

With an output_dir the loop writes metrics.jsonl, TensorBoard files (train/, eval/) and
checkpoints/ every n_steps_per_checkpoint and at the end of run(); a new Loop on the same dir
resumes exactly from the newest valid checkpoint (weights, states, step, seed, data position),
or refuses to start when all are unusable (unless restart=True). SIGTERM/SIGINT end run() after
the current step with a checkpoint. A non-finite loss or gradient raises NonFiniteLossError.

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
import os
from typing import Any, Callable, Sequence

import numpy as np

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse.fastmath import BackendError
from trax_sparse.training import checkpoint as ckpt
from trax_sparse.training import peers
from trax_sparse.training import train_step as ts
from trax_sparse.training.checkpointer import (Checkpointer, OutputDir, OutputDirError,
                                               choose_seed, prepare_output_dir,
                                               restore_train_state, tree_bytes)
from trax_sparse.training.distributed import any_process, is_primary
from trax_sparse.training.evaluator import Evaluator
from trax_sparse.training.interrupt import StopOnSignal
from trax_sparse.training.metrics_writer import METRICS_FILE
from trax_sparse.training.placement import Placement, initialize_on_mesh, run_info
from trax_sparse.training.reporter import (TIMING_METRICS, NonFiniteLossError, Reporter,
                                           is_finite_step, non_finite_error)
from trax_sparse.training.tasks import BatchFeed, EvalTask, TrainTask, check_tasks
from trax_sparse.training.token_check import TokenRanges

log = logging.getLogger('trax_sparse.training')


class Loop:
    """Trains `model` on one TrainTask; evaluates an eval-mode model on the eval tasks.

    eval_model: the model in 'eval' mode with the same weights tree (default: `model`).
    eval_at / checkpoint_at: step -> bool (default: step 1 and every
    n_steps_per_checkpoint steps / every n_steps_per_checkpoint steps).
    random_seed: None draws one (recorded in checkpoints, reused on resume).
    n_devices: devices to use (default: all); use_jit=False for debugging. mesh_shape
    ({'data': 2, 'model': 4}), axis_rules, fsdp: how weights are split (placement.Placement).
    progress_bar: None shows a bar only on a terminal. config_text: stored in checkpoints.
    restart: when every checkpoint in output_dir is unusable, move them into
    checkpoints/corrupt/ (and the old metrics into previous-run/) and start from step 0
    (without it the Loop refuses to start). log_every: log a line with an ETA every N steps.
    Train records average the steps since the previous record; their tokens_per_second and
    steps_per_second leave out the first (compiling) step, evals and checkpoints.
    """

    def __init__(self, model: tl.Layer, tasks: TrainTask | Sequence[TrainTask],
                 eval_model: tl.Layer | None = None,
                 eval_tasks: EvalTask | Sequence[EvalTask] | None = None,
                 output_dir: str | None = None, random_seed: int | None = 0,
                 eval_at: Callable[[int], bool] | None = None,
                 checkpoint_at: Callable[[int], bool] | None = None, keep_checkpoints: int = 3,
                 n_devices: int | None = None, use_jit: bool = True,
                 progress_bar: bool | None = None, config_text: str | None = None,
                 restart: bool = False, log_every: int | None = None,
                 mesh_shape: dict | None = None, axis_rules: Any = None, fsdp: bool = False):
        if not fastmath.jax_available():
            raise BackendError('training needs the JAX backend (gradients): pip install jax optax')
        self._task, self._eval_tasks = check_tasks(tasks, eval_tasks)
        self._model = tl.Serial(model) if not isinstance(model, tl.Layer) else model
        self._eval_model = eval_model if eval_model is not None else self._model
        every = self._task.n_steps_per_checkpoint
        self._checkpoint_at = checkpoint_at or (lambda step: step % every == 0)
        self._eval_at = eval_at or (lambda step: step == 1 or step % every == 0)
        self._use_jit, self._config_text = use_jit, config_text
        self._output_dir = prepare_output_dir(output_dir) if output_dir else None
        self._checkpointer = Checkpointer(
            os.path.join(self._output_dir or '', 'checkpoints'), keep_checkpoints, restart,
            write=is_primary()) if self._output_dir else None
        self._in_flight: collections.deque = collections.deque()
        self._last_saved_step = self._last_eval_step = -1
        self._last_checkpoint, self._diverged = None, False
        self.interrupted: str | None = None  # the signal that ended the last run()
        with fastmath.use_backend('jax'):
            self._parallel = Placement(mesh_shape, axis_rules, fsdp, n_devices)
            self._setup(random_seed, progress_bar, log_every)

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
    def history(self) -> list[dict]:
        """Every record written so far (train, eval), as in metrics.jsonl."""
        return self._reporter.history

    @property
    def output_dir(self) -> str | None:
        return self._output_dir

    @property
    def checkpoint_dir(self) -> str | None:
        return self._checkpointer.directory if self._checkpointer else None

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
        return self._parallel.to_host(self._train_state.weights)

    @property
    def state(self) -> Any:
        """The train model's state as NumPy arrays."""
        return self._parallel.to_host(self._train_state.state)

    def learning_rate(self, step: int) -> float:
        """The schedule's learning rate at `step` (computed on the host)."""
        with fastmath.use_backend('numpy'):
            return float(self._task.lr_schedule(step))

    def run(self, n_steps: int = 1) -> None:
        """Runs n_steps more training steps, with reports, evals and checkpoints on the way.

        SIGTERM / SIGINT end it early, after the current step, with a checkpoint.
        """
        if self._diverged:
            raise NonFiniteLossError('this Loop stopped on a non-finite loss; start a new Loop '
                                     '(it resumes from the last good checkpoint)')
        if n_steps <= 0:
            return
        self.interrupted = None
        with fastmath.use_backend('jax'), StopOnSignal() as stop:
            self._reporter.start_run(self._step, self._step + int(n_steps))
            try:
                for _ in range(int(n_steps)):
                    self._train_one_step()
                    self._after_step()
                    if any_process(stop.requested is not None):  # all stop at one step
                        self.interrupted = stop.requested or 'a signal to another process'
                        break
                self._finish_run()
            finally:
                self._reporter.end_run()
            self._model.weights, self._model.state = self.weights, self.state

    def run_evals(self) -> list[dict]:
        """Evaluates every eval task now with the current weights; returns the records."""
        records = []
        with fastmath.use_backend('jax'):
            for index in range(len(self._eval_tasks)):
                records.append(self._evaluator.evaluate(index, self._run_eval_step,
                                                        self._check_eval_ids, self._step))
                self._reporter.write(records[-1])
        self._last_eval_step = self._step
        return records

    def save_checkpoint(self) -> str | None:
        """Writes the checkpoint of the current step, each process its own pieces (nothing is
        gathered), process 0 the commit record; returns its JSON path (None elsewhere)."""
        if self._checkpointer is None:
            raise ValueError('Loop.save_checkpoint needs an output_dir')
        with fastmath.use_backend('jax'):
            self._drain(0)
            if self._diverged:
                raise NonFiniteLossError('refusing to save weights after a non-finite loss')
            self._last_saved_step = self._step
            train = self._train_state
            opt_leaves, treedef = fastmath.backend().tree_flatten(train.opt_state)
            path = self._checkpointer.save(
                self._step, train.weights, train.state, opt_leaves, str(treedef),
                self._checkpoint_metadata(), pieces=self._parallel.pieces,
                process=self._parallel.process_index, exchange=self._parallel.exchange,
                on_commit=lambda json_path: peers.note_checkpoint(self._step, json_path))
            peers.note_checkpoint(self._step, path)
            if path is not None:
                self._last_checkpoint = path
                log.info('step %d: saved checkpoint %s', self._step, path)
            return path

    def run_info(self) -> dict:
        """The mesh, processes and devices, and the bytes of the weights and optimizer state
        (total, per device) and of the train step's temporaries per device (XLA's memory
        analysis of the compiled step: jit only), as the trainer writes to run_info.json."""
        with fastmath.use_backend('jax'):
            args = (self._train_state, self._parallel.shard_batch(self._train_feed.peek()),
                    self._train_key, np.int32(self._step + 1))
            return run_info(self._parallel, self._specs, args,
                            self._train_step if self._use_jit else None)

    def close(self) -> None:
        """Flushes and closes the metric files."""
        self._reporter.close()

    # ---- setup ----------------------------------------------------------------------------------
    def _setup(self, random_seed: int | None, progress_bar: bool | None,
               log_every: int | None) -> None:
        restored = None
        if self._checkpointer is not None:
            self._checkpointer.prepare()
            restored = self._checkpointer.restore(
                [METRICS_FILE, 'train'] + [t.name for t in self._eval_tasks],
                self._parallel.exchange, self._parallel.process_index)
        self._seed = choose_seed(restored, random_seed)
        self._make_feeds(restored)
        init = self._initialize()
        self._step = 0
        trees = ts.TrainState(init['weights'], init['state'], init['opt_state'])
        if restored is not None:
            trees = restore_train_state(restored, trees, self._task.optimizer.name)
            self._step = self._last_saved_step = self._last_eval_step = restored.step
            self._last_checkpoint = restored.path
            peers.note_checkpoint(restored.step, restored.path if is_primary() else None)
            log.info('resumed from %s (step %d)', restored.path, restored.step)
        if self._checkpointer is not None:
            self._checkpointer.check_space(tree_bytes(*trees))
        self._place(init, trees)
        writer_dir = self._output_dir if is_primary() else None
        self._reporter = Reporter(writer_dir, resume_step=self._step, log_every=log_every,
                                  progress_bar=progress_bar)

    def _make_feeds(self, restored: ckpt.Checkpoint | None) -> None:
        self._train_feed = BatchFeed(self._task.labeled_data, 'TrainTask.labeled_data')
        position = restored.metadata.get('data_position', {}) if restored else None
        own = is_primary()  # checkpoints hold the stream states of process 0
        if restored is not None:
            self._train_feed.restore(position.get('train', {'batches': restored.step}), own)
        self._evaluator = Evaluator(self._eval_tasks, None if position is None else
                                    position.get('eval', {}), own)

    def _initialize(self) -> dict:
        """Keys, weights and states from the first batches (jit'd), and the token ranges."""
        first = self._train_feed.peek()
        if len(first) < self._model.n_in:
            raise ValueError(f'the model takes {self._model.n_in} inputs but batches have '
                             f'{len(first)} items')
        eval_firsts = self._evaluator.first_batches()
        if eval_firsts and len(eval_firsts[0]) < self._eval_model.n_in:
            raise ValueError(f'the eval model takes {self._eval_model.n_in} inputs but eval '
                             f'batches have {len(eval_firsts[0])} items')
        self._tx = self._task.optimizer.transform(self._task.lr_schedule)
        with fastmath.use_backend('numpy'):  # the same uint32[2] key as jax.random.PRNGKey
            base_key = fastmath.random.get_prng(self._seed)
        info: dict = {}
        init, self._specs = initialize_on_mesh(self._parallel, self._model, lambda key: (
            ts.initialize(self._model, self._task.loss_layer, self._tx, key,
                          shapes.signature(first), self._eval_model,
                          [t.metrics for t in self._eval_tasks],
                          [shapes.signature(b) for b in eval_firsts], info=info)),
            base_key, self._jit)
        loss = self._task.loss_layer  # its padding id may lie outside [0, vocab)
        pad_id = getattr(loss, 'pad_id', getattr(loss, '_pad_id', None))
        self._token_ranges = TokenRanges(info, first, self._model.n_in, pad_id)
        return init

    def _jit(self, fn: Callable, **kwargs: Any) -> Callable:
        return fastmath.jit(fn, **kwargs) if self._use_jit else fn

    def _place(self, init: dict, trees: ts.TrainState) -> None:
        """Devices: the train state split as its specs say, jit'd step functions."""
        self._model.rng = init['init_key']  # the model gets the weights at the end of run()
        self._train_key, self._eval_key = init['train_key'], init['eval_key']
        shardings = ts.TrainState(*(self._parallel.shardings(s) for s in self._specs))
        self._train_state = self._parallel.place(trees, shardings)
        self._eval_state = self._parallel.replicate(init['eval_state'])
        self._train_step = self._jit(
            ts.make_train_step(self._model, self._task.loss_layer, init['loss'], self._tx),
            donate_argnums=(0,), out_shardings=(shardings, self._parallel.replicated))
        self._evaluator.build([self._jit(ts.make_eval_step(self._eval_model, t.metrics, w))
                               for t, w in zip(self._eval_tasks, init['metrics'])])

    def _checkpoint_metadata(self) -> dict:
        optimizer = self._task.optimizer
        return {
            'rng': {'seed': self._seed},
            'data_position': {
                'train': self._train_feed.position(),
                'eval': self._evaluator.positions()},
            'gin_config': self._config_text,
            'optimizer': {'name': optimizer.name,
                          'hyper_parameters': optimizer.hyper_parameters,
                          'clip_gradient_norm': optimizer.clip_gradient_norm},
            'model': self._model.name, 'n_devices': self.n_devices,
            'mesh': self._parallel.describe(),
        }

    # ---- steps ----------------------------------------------------------------------------------
    def _train_one_step(self) -> None:
        step = self._step + 1
        batch = self._train_feed.next()
        self._token_ranges.check(batch, self._model.n_in, f"TrainTask '{self._task.name}', "
                                 f'batch {self._train_feed.consumed}')
        n_tokens = int(np.prod(batch[1].shape)) * self._parallel.n_processes  # global batch
        self._train_state, metrics = self._train_step(
            self._train_state, self._parallel.shard_batch(batch), self._train_key,
            np.int32(step))
        self._step = step
        self._in_flight.append((step, metrics, n_tokens))
        self._drain(keep=1)  # check the previous step while this one runs

    def _after_step(self) -> None:
        step = self._step
        at_checkpoint = self._checkpointer is not None and self._checkpoint_at(step)
        at_eval = bool(self._eval_tasks) and self._eval_at(step)
        if at_checkpoint or self._eval_at(step):
            self._report_train()
        if at_eval or at_checkpoint:
            self._reporter.pause()
            if at_eval:
                self.run_evals()
            if at_checkpoint:
                self.save_checkpoint()
            self._reporter.resume()

    def _finish_run(self) -> None:
        self._report_train()
        self._reporter.pause()
        if self._eval_tasks and self._last_eval_step != self._step and not self.interrupted:
            self.run_evals()
        if self._checkpointer is not None and self._last_saved_step != self._step:
            self.save_checkpoint()
        if self.interrupted:
            log.warning('%s: stopped at step %d; %s', self.interrupted, self._step,
                        f'saved {self._last_checkpoint}' if self._checkpointer else
                        'no output_dir, nothing saved')

    def _run_eval_step(self, eval_step: Callable, batch: tuple, batch_index: int) -> Any:
        return self._parallel.to_host(eval_step(
            self._train_state.weights, self._eval_state, self._parallel.shard_batch(batch),
            self._eval_key, np.int32(self._step), np.int32(batch_index)))

    def _check_eval_ids(self, batch: tuple, where: str) -> None:
        self._token_ranges.check(batch, self._eval_model.n_in, where)

    def _drain(self, keep: int) -> None:
        while len(self._in_flight) > keep:
            step, metrics, n_tokens = self._in_flight.popleft()
            values = {k: float(v) for k, v in self._parallel.to_host(metrics).items()}
            if not is_finite_step(values):
                self._diverged = True
                self._in_flight.clear()
                self._reporter.write({'step': step, 'split': 'train', **values})
                raise non_finite_error(step, values, self._last_saved_step,
                                       self._last_checkpoint)
            self._reporter.step_done(step, values, n_tokens)

    def _report_train(self) -> None:
        self._drain(0)
        self._reporter.train_record(self._step, self.learning_rate(self._step))


__all__ = ['Loop', 'NonFiniteLossError', 'OutputDir', 'OutputDirError', 'TIMING_METRICS',
           'prepare_output_dir']
