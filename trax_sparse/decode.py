"""Decodes from a trained checkpoint: the `trax-sparse-decode` command.

    python -m trax_sparse.decode --checkpoint_dir=DIR --prompt='ROMEO:' --max_length=200 \\
        --temperature=0.7 --backend=numpy

Rebuilds the model in predict mode from the gin config stored with the checkpoint (or
DIR/config.gin), loads the newest valid checkpoint and streams the continuation as it is
produced. --beam_size > 1 runs beam search instead (printed at the end). Encoder-decoder
models (Transformer, ScalingTransformer, Terraformer) read their input from --input_file.
On --backend=numpy nothing imports jax.
"""
import os
import sys
import time
from typing import Any

import gin
import numpy as np
from absl import app, flags

from trax_sparse import decoding, fastmath, shapes
from trax_sparse.training import checkpoint

FLAGS = flags.FLAGS
flags.DEFINE_string('checkpoint_dir', None, 'Training output dir (or its checkpoints/ dir).')
flags.DEFINE_string('prompt', '', 'Text the continuation follows (language models).')
flags.DEFINE_string('input_file', None, 'Encoder-decoder models: a UTF-8 text file to encode.')
flags.DEFINE_integer('max_length', 100, 'Number of tokens to generate.')
flags.DEFINE_float('temperature', 0.0, 'Sampling temperature; 0 is greedy.')
flags.DEFINE_integer('top_k', None, 'Sample only among the k most likely tokens.')
flags.DEFINE_integer('beam_size', 1, 'Beam search with this many beams when > 1.')
flags.DEFINE_float('length_penalty', 0.6, 'Beam search: GNMT length penalty alpha.')
flags.DEFINE_integer('seed', 0, 'Random seed for sampling.')
flags.DEFINE_enum('backend', 'numpy', list(fastmath.BACKENDS), 'fastmath backend.')
ENCODER_DECODER = ('Transformer', 'ScalingTransformer', 'Terraformer')


class DecodeError(ValueError):
    """Bad command-line input, reported without a traceback."""


def load_config(checkpoint_dir: str) -> str:
    """The gin config text stored with the newest checkpoint (or in config.gin)."""
    if not os.path.isdir(checkpoint_dir):
        raise DecodeError(f'--checkpoint_dir {checkpoint_dir!r} is not a directory')
    ckpt = checkpoint.load_latest(checkpoint.find_checkpoint_dir(checkpoint_dir))
    if ckpt is None:
        raise DecodeError(f'no checkpoint in {checkpoint_dir!r} (expected ckpt-*.json/.npz files '
                          f'written by `python -m trax_sparse.trainer --output_dir=...`)')
    text = ckpt.metadata.get('gin_config')
    config_file = os.path.join(checkpoint_dir, 'config.gin')
    if not text and os.path.exists(config_file):
        with open(config_file, encoding='utf-8') as f:
            text = f.read()
    if not text:
        raise DecodeError(f'{checkpoint_dir!r} holds no gin config (config.gin) to rebuild the '
                          f'model from')
    return text


def _binding(name: str, default: Any = None) -> Any:
    """The value bound to `name` (macros such as %vocab_size evaluated), else `default`."""
    try:
        value = gin.query_parameter(name)
    except ValueError:
        return default
    if isinstance(value, gin.config.ConfigurableReference) and value.selector == 'gin.macro':
        return value.scoped_configurable_fn()
    return value


def tokenizer_from_config() -> Any:
    """The tokenizer the model was trained with: SentencePiece if configured, else bytes."""
    from trax_sparse import data
    spm_path = _binding('load_sentencepiece.path')
    if spm_path is not None:
        return data.load_sentencepiece(spm_path, _binding('load_sentencepiece.n_extra_ids', 0))
    return data.ByteTokenizer(n_extra_ids=_binding('ByteTokenizer.n_extra_ids', 0))


def encode_checked(tokenizer: Any, text: str, vocab_size: int, what: str) -> np.ndarray:
    """Token ids of `text`; an error names characters the vocabulary cannot represent."""
    ids = np.asarray(tokenizer.encode(text), np.int32)
    if tokenizer.decode(ids) != text:
        lost = sorted({c for c in text if tokenizer.decode(tokenizer.encode(c)) != c})
        raise DecodeError(f'{what} has characters outside the vocabulary: {lost}')
    if ids.size and int(ids.max()) >= vocab_size:
        raise DecodeError(f'{what} encodes to id {int(ids.max())}, outside the model '
                          f'vocabulary of {vocab_size} tokens')
    return ids


class PredictModel:
    """The predict-mode model of a checkpoint, with its tokenizer and limits."""

    def __init__(self, checkpoint_dir: str):
        from trax_sparse import configurables
        gin.clear_config()
        configurables.add_search_paths()
        gin.parse_config(load_config(checkpoint_dir))
        reference = _binding('train.model')
        if reference is None:
            raise DecodeError(f'the config of {checkpoint_dir!r} sets no train.model')
        self.name = reference.selector.split('.')[-1]
        self.make = reference.scoped_configurable_fn
        self.vocab_size = _binding(f'{self.name}.vocab_size') or \
            _binding(f'{self.name}.output_vocab_size') or _binding(f'{self.name}.input_vocab_size')
        self.max_len = _binding(f'{self.name}.max_len', 2048)
        self.is_encoder_decoder = self.name in ENCODER_DECODER
        self.tokenizer = tokenizer_from_config()
        self.weights, _ = checkpoint.load_weights(checkpoint_dir)

    def build(self, batch_size: int, inputs: np.ndarray | None = None) -> Any:
        model = self.make(mode='predict')
        step = shapes.ShapeDtype((batch_size, 1), np.int32)
        model.init(step if inputs is None else (shapes.signature(inputs), step))
        model.weights = fastmath.to_backend(self.weights)
        return model


def run(checkpoint_dir: str, prompt: str = '', input_file: str | None = None,
        max_length: int = 100, temperature: float = 0.0, top_k: int | None = None,
        beam_size: int = 1, length_penalty: float = 0.6, seed: int = 0,
        out: Any = sys.stdout) -> tuple[str, float]:
    """Decodes and writes the text to `out` as it comes; returns (text, seconds per token)."""
    pm = PredictModel(checkpoint_dir)
    inputs = None
    if pm.is_encoder_decoder:
        if not input_file:
            raise DecodeError(f'{pm.name} is an encoder-decoder model: give --input_file')
        from trax_sparse import data
        text = data.read_text_file(input_file)
        inputs = encode_checked(pm.tokenizer, text, pm.vocab_size, f'--input_file {input_file}')
        inputs = np.concatenate([inputs, [1]]).astype(np.int32)[None]      # + EOS, batch 1
    elif input_file:
        raise DecodeError(f'{pm.name} is a language model: use --prompt, not --input_file')
    prompt_ids = encode_checked(pm.tokenizer, prompt, pm.vocab_size, '--prompt')
    needed = len(prompt_ids) + max_length + 1 + (inputs.shape[1] if pm.name == 'Terraformer'
                                                 and inputs is not None else 0)
    if max_length < 1 or needed > pm.max_len:
        raise DecodeError(f'--max_length={max_length} with a {len(prompt_ids)}-token prompt needs '
                          f'{needed} positions, but {pm.name} was built for max_len='
                          f'{pm.max_len}')
    model = pm.build(1, inputs)
    prompt_arg = prompt_ids[None] if len(prompt_ids) else None
    start = time.perf_counter()
    if beam_size > 1:
        seqs, _ = decoding.beam_search(model, inputs=inputs, beam_size=beam_size,
                                       max_length=max_length, length_penalty=length_penalty,
                                       eos_id=1, prompt=prompt_arg)
        ids = [int(t) for t in seqs[0, 0]]
        text = pm.tokenizer.decode(np.asarray(ids, np.int32), errors='replace')
        out.write(prompt + text + '\n')
        return text, (time.perf_counter() - start) / max_length
    stream = decoding.autoregressive_sample_stream(
        model, inputs=inputs, temperature=temperature, top_k=top_k, prompt=prompt_arg,
        rng=fastmath.random.get_prng(seed))
    out.write(prompt)
    ids, shown = [], ''
    for _ in range(max_length):
        token = int(np.asarray(next(stream))[0])
        if token == 1:                                                   # EOS
            break
        ids.append(token)
        text = pm.tokenizer.decode(np.asarray(ids, np.int32), errors='replace')
        out.write(text[len(shown):])
        out.flush()
        shown = text
    out.write('\n')
    return shown, (time.perf_counter() - start) / max(len(ids), 1)


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS.checkpoint_dir:
        sys.exit('trax-sparse-decode: --checkpoint_dir is required')
    fastmath.set_backend(FLAGS.backend)
    try:
        run(FLAGS.checkpoint_dir, FLAGS.prompt, FLAGS.input_file, FLAGS.max_length,
            FLAGS.temperature, FLAGS.top_k, FLAGS.beam_size, FLAGS.length_penalty, FLAGS.seed)
    except (DecodeError, checkpoint.CheckpointError, FileNotFoundError) as e:
        sys.exit(f'trax-sparse-decode: {e}')


def console_main() -> None:
    app.run(main)


if __name__ == '__main__':
    app.run(main)
