"""The metrics reporter: speeds without compile time, log lines with an ETA, progress bar at the
resumed step, the loss plot (also as `trax-sparse-plot`), token-id checks before a step."""
import json
import logging

import numpy as np
import pytest

from trax_sparse import layers as tl
from trax_sparse import training
from trax_sparse.training import plot, reporter
from tests.training import tiny


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(reporter.time, 'perf_counter', fake)
    return fake


def test_speed_leaves_out_the_compiling_step_and_pauses(clock, caplog):
    caplog.set_level(logging.INFO, logger='trax_sparse.training')
    r = reporter.Reporter(None, log_every=2, progress_bar=False)
    r.start_run(0, 10)
    clock.now += 30.0                        # step 1 compiles: 30 s
    r.step_done(1, {'loss': 4.0}, 100)
    for step in (2, 3, 4):                   # then 1 s per step of 100 tokens
        clock.now += 1.0
        r.step_done(step, {'loss': 3.0}, 100)
    r.pause()
    clock.now += 50.0                        # an eval: not train time
    r.resume()
    clock.now += 1.0
    r.step_done(5, {'loss': 2.0}, 100)
    record = r.train_record(5, learning_rate=0.1)
    assert record['tokens_per_second'] == pytest.approx(100.0)  # 400 tokens in 4 s
    assert record['steps_per_second'] == pytest.approx(1.0)
    assert record['loss'] == pytest.approx(3.0)
    lines = [rec.getMessage() for rec in caplog.records]
    assert lines[0] == 'step 2/10, loss (mean of last 2) 3.5000, 100 tokens/s, 1.00 steps/s, ETA 8s', lines
    assert lines[1] == 'step 4/10, loss (mean of last 2) 3.0000, 100 tokens/s, 1.00 steps/s, ETA 6s', lines


def test_record_of_only_the_compiling_step_has_no_speed(clock):
    r = reporter.Reporter(None, progress_bar=False)
    r.start_run(0, 3)
    clock.now += 30.0
    r.step_done(1, {'loss': 4.0}, 100)
    record = r.train_record(1, learning_rate=0.1)
    assert not set(training.TIMING_METRICS) & set(record)


def test_progress_bar_starts_at_the_resumed_step():
    pytest.importorskip('tqdm')
    r = reporter.Reporter(None, progress_bar=True)
    r.start_run(7, 10)
    r.step_done(8, {'loss': 1.0}, 1)
    assert (r._bar._bar.n, r._bar._bar.total) == (8, 10)
    r.close()


def test_format_duration():
    assert [reporter.format_duration(s) for s in (4.4, 185, 3720)] == ['4s', '3m05s', '1h02m']


def test_plot_command_writes_a_png_and_fails_in_one_line(tmp_path, capsys):
    pytest.importorskip('matplotlib')
    lines = [{'step': s, 'split': split, 'loss': 3.0 / s} for s in (1, 2, 3)
             for split in ('train', 'eval')] + [{'step': 4, 'split': 'train', 'loss': 'NaN'}]
    (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in lines))
    assert plot.main([str(tmp_path)]) == 0
    assert (tmp_path / 'loss.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert plot.main([str(tmp_path / 'nowhere')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('trax-sparse-plot: error: ') and 'metrics.jsonl does not exist' in err
    assert err.count('\n') == 1


def _stream_with(position, input_id=None, target_id=None, weight=1.0):
    """Counting batches (the shapes the other tests compile) with one id replaced."""
    tokens, targets, weights = (x.copy() for x in tiny.counting_batch(0))
    if input_id is not None:
        tokens[position] = input_id
    if target_id is not None:
        targets[position], weights[position] = target_id, weight
    return iter(lambda: (tokens, targets, weights), None)


def _loop(stream, loss=None):
    return training.Loop(tiny.TinyLM(), training.TrainTask(
        stream, loss, optimizer=training.Adam(),
        lr_schedule=training.constant(tiny.LEARNING_RATE)))


@pytest.mark.parametrize('ids, message', [
    ({'input_id': tiny.VOCAB}, r"TrainTask 'train', batch 1: inputs item 0 holds token id 11, "
                               r"outside the model's vocabulary \[0, 11\)"),
    ({'input_id': -1}, 'inputs item 0 holds token id -1'),
    ({'target_id': 12}, r'targets hold token id 12, outside the model output width \[0, 11\)'),
    ({'target_id': -1}, r'targets hold token id -1'),
])
def test_token_ids_are_checked_on_the_host_before_the_step(ids, message):
    loop = _loop(_stream_with((1, 2), **ids))
    with pytest.raises(ValueError, match=message):
        loop.run(1)
    assert loop.step == 0


def test_the_loss_padding_id_may_lie_outside_the_vocabulary():
    with pytest.raises(ValueError, match='targets hold token id -1'):  # weight 0 or not
        _loop(_stream_with((1, 2), target_id=-1, weight=0.0)).run(1)
    loop = _loop(_stream_with((1, 2), target_id=-1, weight=0.0), tl.CrossEntropyLoss(pad_id=-1))
    loop.run(1)
    record = loop.history[-1]
    assert loop.step == 1 and np.isfinite(record['loss'])
    assert record['log_perplexity'] == record['loss']
