"""`train(...)`: the root that the gin trainer binary configures (Trax's trainer_lib.train).

It builds the train- and eval-mode models, the tasks and a Loop on `output_dir`, resumes
from the newest checkpoint there, and trains until `steps` steps are done. Arguments that
gin passes as configurables are accepted either built or as factories:
`model=@TransformerLM` (called with mode='train' and mode='eval'), `optimizer=@Adam`,
`lr_schedule=@multifactor` (a factory with no required argument is called),
`inputs=@my_stream` (a function returning a batch iterator is called). In a multi-host
run a stream factory that takes `shard_index` and `shard_count` (as the data pipelines do)
gets process_index() and process_count(): each process reads its own examples and feeds
its part of the global batch. At the end it writes `loss.png` (plot.py) when matplotlib is
installed.

Example:
    >>> import numpy as np, tempfile
    >>> from trax_sparse import layers as tl
    >>> x = np.arange(8, dtype=np.int32).reshape(2, 4) % 5
    >>> loop = train(tempfile.mkdtemp(), model=tl.Serial(tl.Embedding(5, 8), tl.Dense(5)),
    ...              inputs=iter(lambda: (x, x), None), steps=3, checkpoint_every=2)
    >>> loop.step
    3
"""
import functools
import inspect
import json
import logging
import os
from typing import Any, Callable, Iterable

import numpy as np

from trax_sparse import fastmath
from trax_sparse import layers as tl
from trax_sparse.io_utils import atomic_write_text
from trax_sparse.training.config_diff import diff_lines
from trax_sparse.training.output_lock import OutputLock
from trax_sparse.training import optimizers as opt
from trax_sparse.training import distributed, schedules
from trax_sparse.training import plot as plot_lib
from trax_sparse.training.loop import Loop, prepare_output_dir
from trax_sparse.training.tasks import EvalTask, TrainTask, is_stream_factory, open_stream

log = logging.getLogger('trax_sparse.training')
CONFIG_FILE = 'config.gin'
RUN_INFO_FILE = 'run_info.json'   # the mesh, devices and bytes per device (Loop.run_info)
MAX_STEPS = 2**31 - 1  # the step is an int32 in the jitted train step


def _is_factory(fn: Any) -> bool:
    """A callable whose parameters all have defaults (so it is not a step -> lr schedule)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in parameters)


def _models(model: Any) -> tuple[tl.Layer, tl.Layer]:
    if model is None:
        raise ValueError('train: a model is required (gin: train.model = @TransformerLM)')
    if isinstance(model, tl.Layer):
        return model, model
    if not callable(model):
        raise ValueError(f'train: model must be a Layer or a function mode -> Layer, got '
                         f'{type(model).__name__}')
    return model(mode='train'), model(mode='eval')


def _takes_shards(factory: Any) -> bool:
    """Whether `factory` (a class or function) accepts shard_index= and shard_count=."""
    try:
        fn = factory.__init__ if isinstance(factory, type) else factory
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return {'shard_index', 'shard_count'} <= set(parameters) or any(
        p.kind == p.VAR_KEYWORD for p in parameters.values())


def _stream(data: Any, what: str) -> Iterable:
    """The batch stream of `data`; on multi-host, a factory is asked for this process's shard."""
    if data is None:
        raise ValueError(f'train: {what} is required (an iterator of (inputs, targets, weights) '
                         f'batches, or a function returning one)')
    with fastmath.use_backend('jax'):  # the process index of a jax.distributed run
        index, n_processes = distributed.process_index(), distributed.process_count()
    if n_processes > 1:
        if is_stream_factory(data) and _takes_shards(data):
            data = functools.partial(data, shard_index=index, shard_count=n_processes)
        else:
            log.warning('train: %s is not a stream factory taking shard_index/shard_count: '
                        'all %d processes read the same examples', what, n_processes)
    return open_stream(data)


def _built(value: Any, kind: type, default: Callable, what: str) -> Any:
    if value is None:
        return default()
    if isinstance(value, kind):
        return value
    if callable(value):
        value = value()
    if not isinstance(value, kind):
        raise ValueError(f'train: {what} must be a {kind.__name__}, got {type(value).__name__}')
    return value


def train(output_dir: str, model: Any = None, inputs: Any = None, eval_inputs: Any = None,
          loss: Any = None, optimizer: Any = None, lr_schedule: Any = None, steps: int = 1000,
          eval_steps: int = 10, eval_every: int | None = None, checkpoint_every: int = 100,
          keep_checkpoints: int = 3, random_seed: int | None = 0, n_devices: int | None = None,
          use_jit: bool = True, operative_config: Callable[[], str] | None = None,
          restart: bool = False, log_every: int | None = None, plot: bool = True,
          mesh_shape: dict | None = None, axis_rules: Any = None, fsdp: bool = False) -> Loop:
    """Trains `model` until `steps` steps are done in `output_dir` (resuming there); returns
    the Loop.

    inputs / eval_inputs: batch iterators (or functions returning one); no eval without
    eval_inputs. loss: a loss layer (default CrossEntropyLoss); optimizer default Adam();
    lr_schedule default multifactor(). eval_steps batches are evaluated every eval_every
    steps (default: checkpoint_every). operative_config: returns the config text written
    to output_dir/config.gin and stored in checkpoints (the trainer passes gin's).
    restart, log_every: see Loop. `loop.interrupted` names a signal that stopped it early.
    plot: write output_dir/loss.png at the end (when matplotlib is installed).
    mesh_shape ({'data': 2, 'model': 4}; default all devices on 'data'), axis_rules (logical
    axis -> mesh axis) and fsdp: how the weights are split (docs/sharding.md); the mesh, the
    devices and the bytes per device go to output_dir/run_info.json.
    """
    steps = whole_number('train.steps', steps, minimum=0)
    checkpoint_every = whole_number('train.checkpoint_every', checkpoint_every)
    keep_checkpoints = whole_number('train.keep_checkpoints', keep_checkpoints)
    eval_steps = whole_number('train.eval_steps', eval_steps)
    output_dir = prepare_output_dir(output_dir)
    with fastmath.use_backend('jax'):
        primary = distributed.is_primary()
    lock = OutputLock(output_dir)
    if primary:
        lock.acquire()
    try:
        return _train(output_dir, primary, model, inputs, eval_inputs, loss, optimizer,
                      lr_schedule, steps, eval_steps, eval_every, checkpoint_every,
                      keep_checkpoints, random_seed, n_devices, use_jit, operative_config,
                      restart, log_every, plot, {'mesh_shape': mesh_shape,
                                                 'axis_rules': axis_rules, 'fsdp': fsdp})
    finally:
        lock.release()


def whole_number(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int in [minimum, MAX_STEPS]; ValueError naming the binding otherwise.

        >>> whole_number('train.steps', 2.5)
        Traceback (most recent call last):
        ...
        ValueError: train.steps = 2.5: expected a whole number >= 1 (no decimal point)
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f'{name} = {value!r}: expected a whole number >= {minimum} (no '
                         f'decimal point)')
    if not minimum <= int(value) <= MAX_STEPS:
        raise ValueError(f'{name} = {value}: expected a whole number in [{minimum}, '
                         f'{MAX_STEPS}] (steps are counted in int32)')
    return int(value)


def _train(output_dir, primary, model, inputs, eval_inputs, loss, optimizer, lr_schedule,
           steps, eval_steps, eval_every, checkpoint_every, keep_checkpoints, random_seed,
           n_devices, use_jit, operative_config, restart, log_every, plot, mesh) -> Loop:
    train_model, eval_model = _models(model)
    loss_layer = _built(loss, tl.Layer, tl.CrossEntropyLoss, 'loss')
    optimizer = _built(optimizer, opt.Optimizer, opt.Adam, 'optimizer')
    if lr_schedule is None:
        lr_schedule = schedules.multifactor()
    elif _is_factory(lr_schedule):
        lr_schedule = lr_schedule()
    eval_every = int(eval_every or checkpoint_every)
    task = TrainTask(_stream(inputs, 'inputs'), loss_layer, optimizer, lr_schedule,
                     n_steps_per_checkpoint=checkpoint_every)
    eval_tasks = []
    if eval_inputs is not None:
        eval_tasks.append(EvalTask(_stream(eval_inputs, 'eval_inputs'),
                                   n_eval_batches=eval_steps))
    config_text = operative_config() if operative_config is not None else None
    loop = Loop(train_model, task, eval_model=eval_model, eval_tasks=eval_tasks,
                output_dir=output_dir, random_seed=random_seed,
                eval_at=lambda step: step % eval_every == 0, keep_checkpoints=keep_checkpoints,
                n_devices=n_devices, use_jit=use_jit, config_text=config_text,
                restart=restart, log_every=log_every, **mesh)
    if config_text is not None and primary:
        _write_config(output_dir, config_text, loop.step)
    _write_run_info(output_dir, loop, primary)
    try:
        remaining = steps - loop.step
        if steps == 0:
            log.warning('train.steps = 0: nothing will be trained')
        elif remaining > 0:
            loop.run(remaining)
        else:
            log.info('%s already holds step %d >= train.steps = %d: nothing to train',
                     output_dir, loop.step, steps)
    finally:
        loop.close()
    if plot and primary:
        plot_lib.plot_if_possible(output_dir)
    return loop


def _write_run_info(output_dir: str, loop: Loop, primary: bool) -> None:
    """Logs the mesh and where the memory goes, and writes them to run_info.json."""
    info = loop.run_info()           # every process compiles the same step: a collective
    if not primary:
        return
    bytes_ = info['bytes']
    log.info('mesh %s on %d devices (%d processes): weights %s, optimizer %s per device, '
             'step temporaries %s per device', info['mesh'], info['devices'],
             info['processes'], _mb(bytes_['weights']['per_device']),
             _mb(bytes_['optimizer']['per_device']),
             _mb(bytes_.get('temporaries', {}).get('per_device', 0)))
    atomic_write_text(os.path.join(output_dir, RUN_INFO_FILE),
                      json.dumps(info, indent=1, sort_keys=True) + '\n')


def _mb(n_bytes: int) -> str:
    return f'{n_bytes / 2 ** 20:.1f} MiB'


def _write_config(output_dir: str, config_text: str, step: int) -> None:
    """Writes config.gin; on a resume with another config, logs the changed bindings and
    keeps the previous one as config.<step>.gin."""
    path = os.path.join(output_dir, CONFIG_FILE)
    if step > 0 and os.path.exists(path):
        with open(path, encoding='utf-8') as f:
            previous = f.read()
        changes = diff_lines(previous, config_text)
        if changes:
            kept = os.path.join(output_dir, f'config.{step}.gin')
            n = 0
            while os.path.exists(kept):
                n += 1
                kept = os.path.join(output_dir, f'config.{step}.{n}.gin')
            atomic_write_text(kept, previous)
            log.warning('resuming at step %d with a changed config (%s); the previous one is '
                        'kept in %s', step, '; '.join(changes), kept)
    atomic_write_text(path, config_text)


__all__ = ['CONFIG_FILE', 'MAX_STEPS', 'RUN_INFO_FILE', 'train', 'whole_number']
