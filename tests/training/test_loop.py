"""The training Loop: learning, evals, metric files, resume, NaN stop, NumPy inference."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from trax_sparse import fastmath, shapes
from trax_sparse import layers as tl
from trax_sparse import training
from trax_sparse.training import checkpoint as ckpt
from tests.training import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _task(stream=None, lr=tiny.LEARNING_RATE, every=2, optimizer=None):
    return training.TrainTask(stream if stream is not None else tiny.CountingStream(),
                              optimizer=optimizer or training.Adam(),
                              lr_schedule=training.constant(lr), n_steps_per_checkpoint=every)


def _eval_task(seed=1):
    return training.EvalTask(tiny.CountingStream(seed=seed), n_eval_batches=2)


def _leaves(tree):
    return [np.asarray(a) for a in fastmath.tree_leaves(tree)]


def test_loss_decreases_on_a_fixed_batch():
    batch = tiny.counting_batch(0)
    loop = training.Loop(tiny.TinyLM(), _task(iter(lambda: batch, None), every=40))
    loop.run(40)
    losses = [r['loss'] for r in loop.history if r['split'] == 'train']
    assert loop.step == 40 and len(losses) == 2  # reports at step 1 and 40
    assert losses[-1] < 0.3 * losses[0], losses
    assert loop.history[-1]['accuracy'] > 0.9
    # The model holds the trained weights (and no leftovers of the jit'd init).
    assert loop.model.output_signature(shapes.signature(batch[0])).shape == (4, 6, tiny.VOCAB)
    with fastmath.use_backend('numpy'):
        logits = tiny.TinyLM(mode='eval').pure_fn(batch[0], loop.weights, loop.state)[0]
    accuracy = (logits.argmax(-1) == batch[1])[:, 1:].mean()
    assert accuracy > 0.9


def test_eval_metrics_files_and_resume_equal_uninterrupted(tmp_path):
    def make(directory):
        return training.Loop(tiny.TinyLM(), _task(), eval_model=tiny.TinyLM(mode='eval'),
                             eval_tasks=[_eval_task()], output_dir=str(directory),
                             random_seed=7, progress_bar=False)

    straight = make(tmp_path / 'straight')
    straight.run(6)
    straight.close()
    first = make(tmp_path / 'resumed')
    first.run(3)  # checkpoints at 2 and at the end (3)
    first.close()
    resumed = make(tmp_path / 'resumed')
    assert resumed.step == 3 and resumed.last_checkpoint.endswith('ckpt-00000003.json')
    resumed.run(3)
    resumed.close()
    for a, b in zip(_leaves(straight.weights), _leaves(resumed.weights)):
        np.testing.assert_array_equal(a, b)

    records = training.read_metrics(str(tmp_path / 'straight'))
    timing = set(training.loop.TIMING_METRICS)

    def strip(rs):
        return [{k: v for k, v in r.items() if k not in timing} for r in rs if r['step'] == 6]
    assert strip(records) == strip(training.read_metrics(str(tmp_path / 'resumed')))
    evals = [r for r in records if r['split'] == 'eval']
    assert [r['step'] for r in evals] == [1, 2, 4, 6]
    assert set(evals[-1]) >= {'loss', 'accuracy', 'log_perplexity'}
    train = [r for r in records if r['split'] == 'train']
    assert set(train[-1]) >= {'loss', 'accuracy', 'log_perplexity', 'grad_norm',
                              'learning_rate', 'tokens_per_second'}
    assert train[-1]['learning_rate'] == pytest.approx(tiny.LEARNING_RATE)
    for split in ('train', 'eval'):
        events = os.listdir(tmp_path / 'straight' / split)
        assert any(name.startswith('events.out.tfevents') for name in events)
    kept = ckpt.list_checkpoints(str(tmp_path / 'straight' / 'checkpoints'))
    assert [step for step, _ in kept] == [2, 4, 6]


def test_stream_without_state_is_fast_forwarded_on_resume(tmp_path):
    def make(directory, stream):
        return training.Loop(tiny.TinyLM(), _task(stream), output_dir=str(directory))

    straight = make(tmp_path / 'a', tiny.plain_stream())
    straight.run(4)
    make(tmp_path / 'b', tiny.plain_stream()).run(2)
    resumed = make(tmp_path / 'b', tiny.plain_stream())
    resumed.run(2)
    for a, b in zip(_leaves(straight.weights), _leaves(resumed.weights)):
        np.testing.assert_array_equal(a, b)


def test_non_finite_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    stream = tiny.CountingStream(nan_at=4)  # the batch of step 5 has NaN weights
    loop = training.Loop(tiny.TinyLM(), _task(stream, every=3), output_dir=str(tmp_path))
    with pytest.raises(training.NonFiniteLossError,
                       match=r'at step 5: non-finite loss nan.*ckpt-00000003.json'):
        loop.run(10)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / 'checkpoints'))] == [3]
    with pytest.raises(training.NonFiniteLossError):
        loop.save_checkpoint()
    assert training.Loop(tiny.TinyLM(), _task(), output_dir=str(tmp_path)).step == 3


def test_bad_output_dir_fails_before_reading_data(tmp_path):
    (tmp_path / 'file').write_text('not a directory')
    stream = tiny.CountingStream()
    with pytest.raises(training.OutputDirError, match='is not a writable directory'):
        training.Loop(tiny.TinyLM(), _task(stream), output_dir=str(tmp_path / 'file' / 'out'))
    assert stream.index == 0


def test_bad_batches_and_models_give_clear_errors():
    with pytest.raises(ValueError, match=r'must yield tuples \(inputs, targets\[, weights\]\)'):
        training.Loop(tiny.TinyLM(), _task(iter([np.zeros((2, 3), np.int32)])))
    with pytest.raises(ValueError, match='ran out of batches after 1'):
        training.Loop(tiny.TinyLM(), _task(iter([tiny.counting_batch(0)]))).run(2)
    with pytest.raises(ValueError, match='eval_model must have the weights tree'):
        training.Loop(tiny.TinyLM(), _task(), eval_model=tiny.TinyLM(d_model=4, mode='eval'),
                      eval_tasks=[_eval_task()])


def test_resume_into_another_model_is_refused(tmp_path):
    training.Loop(tiny.TinyLM(), _task(), output_dir=str(tmp_path)).run(1)
    with pytest.raises(ckpt.CheckpointError, match='weights leaf .* the model has'):
        training.Loop(tiny.TinyLM(d_hidden=12), _task(), output_dir=str(tmp_path))


def test_jax_checkpoint_runs_on_numpy_with_the_same_outputs(tmp_path):
    loop = training.Loop(tiny.TinyLM(), _task(), output_dir=str(tmp_path))
    loop.run(2)
    x = tiny.counting_batch(9)[0]
    eval_model = tiny.TinyLM(mode='eval')
    with fastmath.use_backend('numpy'):
        _, state = eval_model.init(shapes.signature(x))
    with fastmath.use_backend('jax'):
        expected, _ = jax.jit(eval_model.pure_fn)(x, loop.weights, state)
    weights, _ = training.load_weights(str(tmp_path))
    assert all(type(a) is np.ndarray for a in fastmath.tree_leaves(weights))
    with fastmath.use_backend('numpy'):
        got, _ = eval_model.pure_fn(x, weights, state)
    np.testing.assert_allclose(got, np.asarray(expected), atol=1e-5)
    # ... and in a process where jax cannot even be imported.
    script = textwrap.dedent(f'''
        import importlib.abc, sys
        class BlockJax(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('jax', 'jaxlib', 'optax'):
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, BlockJax())
        import numpy as np
        from trax_sparse import training
        from tests.training import tiny
        weights, _ = training.load_weights({str(tmp_path)!r})
        x = tiny.counting_batch(9)[0]
        model = tiny.TinyLM(mode='eval')
        _, state = model.init(x)
        np.save({str(tmp_path / 'numpy_out.npy')!r}, model.pure_fn(x, weights, state)[0])
        assert 'jax' not in sys.modules
    ''')
    result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / 'numpy_out.npy'), np.asarray(expected),
                               atol=1e-5)


def test_train_root_resumes_and_writes_config(tmp_path):
    kwargs = dict(model=tiny.TinyLM, inputs=tiny.CountingStream, eval_inputs=tiny.CountingStream,
                  optimizer=training.Adam, eval_steps=1,
                  lr_schedule=lambda: training.constant(tiny.LEARNING_RATE),
                  checkpoint_every=2, operative_config=lambda: 'train.steps = 3\n')
    loop = training.train(str(tmp_path), steps=3, **kwargs)
    assert loop.step == 3 and open(tmp_path / 'config.gin').read() == 'train.steps = 3\n'
    assert json.load(open(loop.last_checkpoint))['gin_config'] == 'train.steps = 3\n'
    assert training.train(str(tmp_path), steps=5, **kwargs).step == 5
    assert training.train(str(tmp_path), steps=4, **kwargs).step == 5  # nothing to do
    with pytest.raises(ValueError, match='a model is required'):
        training.train(str(tmp_path), inputs=tiny.CountingStream)


def test_model_state_is_threaded_through_steps():
    class CountCalls(tl.Layer):
        def init_weights_and_state(self, sig):
            self.weights, self.state = (), np.zeros((), np.int32)

        def forward(self, x):
            self.state = self.state + 1
            return x

    model = tl.Serial(CountCalls(), tl.Embedding(tiny.VOCAB, tiny.VOCAB))  # ids -> logits
    loop = training.Loop(model, _task(optimizer=training.SGD()))
    loop.run(3)
    assert int(loop.state[0]) == 3
