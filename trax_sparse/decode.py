"""Decodes from a trained checkpoint: the `trax-sparse-decode` command.

    python -m trax_sparse.decode --checkpoint_dir=DIR --prompt=$'ROMEO.\n' --max_length=200 \\
        --temperature=0.7 --backend=numpy

Rebuilds the model in predict mode from the gin config stored with the checkpoint (or
DIR/config.gin), loads the newest valid checkpoint and streams the continuation as it is
produced. --beam_size > 1 runs beam search instead (printed at the end). Encoder-decoder
models (those taking two inputs: encoder inputs and tokens) read their input from
--input_file.
On --backend=numpy nothing imports jax. On --backend=jax, --mesh_shape=data=1,model=8 (the
names and sizes of train.mesh_shape; also --axis_rules and --fsdp, as training's) splits the
weights and K/V caches over the devices (docs/sharding.md, "Decoding").
--weights_dtype (auto: float32 on a CPU, bfloat16 on a GPU/TPU) stores the weights in 16 bits
once, --cache_dtype=bfloat16 the K/V caches (docs/precision.md).

Every user error (bad flag values, a missing checkpoint or jax, token ids outside the
vocabulary, a prompt + --max_length longer than the model's max_len) is one line on stderr
and exit status 1, checked on the host before any jitted call; --debug shows the traceback.
"""
import ast
import os
import sys
import time
from typing import Any

import gin
import numpy as np
from absl import app, flags

from trax_sparse import decoding, fastmath, shapes
from trax_sparse.layers.token_ids import check_token_ids, input_vocab_sizes
from trax_sparse.training import checkpoint, checkpointer, cli

FLAGS = flags.FLAGS
flags.DEFINE_string('checkpoint_dir', None, 'Training output dir (or its checkpoints/ dir).')
flags.DEFINE_string('prompt', '', 'Text the continuation follows (language models).')
flags.DEFINE_string('input_file', None, 'Encoder-decoder models: a UTF-8 text file to encode.')
flags.DEFINE_integer('max_length', 100, 'Number of tokens to generate (>= 1).')
flags.DEFINE_float('temperature', 0.0, 'Sampling temperature (>= 0); 0 is greedy.')
flags.DEFINE_integer('top_k', None, 'Sample only among the k most likely tokens (1..vocab).')
flags.DEFINE_integer('beam_size', 1, 'Beam search with this many beams when > 1 (then '
                     '--temperature and --top_k do not apply).')
flags.DEFINE_float('length_penalty', 0.6, 'Beam search: GNMT length penalty alpha.')
flags.DEFINE_integer('seed', 0, 'Random seed for sampling.')
flags.DEFINE_string('mesh_shape', None, 'JAX: split weights and caches over a device mesh, '
                    'e.g. data=1,model=8.')
flags.DEFINE_string('axis_rules', None, 'With --mesh_shape: logical -> mesh axes, e.g. '
                    'heads=model,vocab=None.')
flags.DEFINE_bool('fsdp', False, 'With --mesh_shape: also split each weight over data.')
flags.DEFINE_string('weights_dtype', 'auto', 'Store the weights as: '
                    f'{", ".join(decoding.WEIGHTS_DTYPES)} (docs/precision.md).')
flags.DEFINE_string('cache_dtype', None, 'Store the K/V caches as: '
                    f'{", ".join(decoding.CACHE_DTYPES)} (default: the compute dtype).')
# Also defined by trainer.py: allow_override lets both binaries be imported in one process.
flags.DEFINE_enum('backend', 'numpy', list(fastmath.BACKENDS), 'fastmath backend.',
                  allow_override=True)
flags.DEFINE_bool('debug', False, 'Show the traceback of an error.', allow_override=True)
PROG = 'trax-sparse-decode'


class DecodeError(ValueError):
    """Bad command-line input, reported without a traceback."""


def check_flags(max_length: int, temperature: float = 0.0, top_k: int | None = None,
                beam_size: int = 1, weights_dtype: str = 'auto',
                cache_dtype: str | None = None) -> None:
    """DecodeError for flag values no model could decode with (checked before loading one).

        >>> try:
        ...     check_flags(max_length=0)
        ... except DecodeError as e:
        ...     print(e)
        --max_length=0: the number of tokens to generate must be >= 1
    """
    if max_length < 1:
        raise DecodeError(f'--max_length={max_length}: the number of tokens to generate must be '
                          f'>= 1')
    if not temperature >= 0:                                        # NaN too
        raise DecodeError(f'--temperature={temperature} must be >= 0 (0 decodes greedily)')
    if top_k is not None and top_k < 1:
        raise DecodeError(f'--top_k={top_k} must be >= 1 (sample among the k most likely tokens)')
    if beam_size < 1:
        raise DecodeError(f'--beam_size={beam_size} must be >= 1 (1 samples, more runs beam '
                          f'search)')
    try:
        decoding.check_weights_dtype(weights_dtype, '--weights_dtype')
        decoding.check_cache_dtype(cache_dtype, '--cache_dtype')
    except ValueError as e:
        raise DecodeError(str(e)) from None
    ignored = [f'--{name}={value}' for name, value, default in
               (('temperature', temperature, 0.0), ('top_k', top_k, None)) if value != default]
    if beam_size > 1 and ignored:
        raise DecodeError(f'--beam_size={beam_size} runs beam search, which does not use '
                          f'{" or ".join(ignored)}; drop {"them" if len(ignored) > 1 else "it"}, '
                          f'or sample with --beam_size=1')


def parse_mapping(flag: str, text: str | None, value: Any) -> dict | None:
    """`text` of --mesh_shape or --axis_rules as a dict: `a=1,b=2` or a Python dict literal;
    each value goes through `value`. None or '' stays None.

        >>> parse_mapping('mesh_shape', 'data=2,model=4', int)
        {'data': 2, 'model': 4}
        >>> parse_mapping('axis_rules', "{'heads': 'model', 'vocab': None}", str)
        {'heads': 'model', 'vocab': None}
    """
    if not text:
        return None
    example = ("data=1,model=8 or {'data': 1, 'model': 8}" if flag == 'mesh_shape' else
               'heads=model,vocab=None')
    try:
        if text.strip().startswith('{'):
            pairs = ast.literal_eval(text).items()
        else:
            pairs = [item.split('=', 1) for item in text.split(',') if item.strip()]
        return {str(k).strip(): None if v is None or str(v).strip() in ('None', '') else
                value(str(v).strip()) for k, v in pairs}
    except (ValueError, SyntaxError, AttributeError, TypeError):
        raise DecodeError(f'--{flag}={text!r}: expected name=value pairs, e.g. '
                          f'{example}') from None


def decoding_mesh(mesh_shape: dict | None, axis_rules: dict | None = None,
                  fsdp: bool = False) -> Any:
    """The decoding.DecodingMesh of the mesh flags (None without --mesh_shape)."""
    if mesh_shape is None:
        if axis_rules or fsdp:
            raise DecodeError('--axis_rules and --fsdp need --mesh_shape (the device mesh)')
        return None
    if not fastmath.is_jax():
        raise DecodeError(f'--mesh_shape={mesh_shape} needs --backend=jax (NumPy decoding '
                          f'runs on the host, on no mesh)')
    try:
        return decoding.DecodingMesh(mesh_shape, axis_rules, fsdp)
    except ValueError as e:
        raise DecodeError(f'--mesh_shape: {e}') from None


def load_config(checkpoint_dir: str) -> str:
    """The gin config text stored with the newest checkpoint (or in config.gin)."""
    if not os.path.isdir(checkpoint_dir):
        raise DecodeError(f'--checkpoint_dir {checkpoint_dir!r} is not a directory')
    rejected: list = []
    ckpt = checkpoint.load_latest(checkpoint.find_checkpoint_dir(checkpoint_dir), rejected)
    if ckpt is None and rejected:
        reasons = '; '.join(f'{os.path.basename(p)}: {r}' for p, r in rejected)
        raise DecodeError(f'no usable checkpoint in {checkpoint_dir!r}: all {len(rejected)} '
                          f'were rejected ({reasons})')
    if ckpt is None:
        raise DecodeError(f'no checkpoint in {checkpoint_dir!r} (expected ckpt-*.json/.npz files '
                          f'written by `python -m trax_sparse.trainer --output_dir=...`)')
    text = checkpointer.operative_config(ckpt, checkpoint_dir)
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


def encode_checked(tokenizer: Any, text: str, vocab_size: int | None,
                   what: str) -> np.ndarray:
    """Token ids of `text`, all in [0, vocab_size) (`layers.token_ids`, the rule decoding and
    training use); else a DecodeError naming the problem."""
    ids = np.asarray(tokenizer.encode(text), np.int32)
    if tokenizer.decode(ids) != text:
        lost = sorted({c for c in text if tokenizer.decode(tokenizer.encode(c)) != c})
        raise DecodeError(f'{what} has characters outside the vocabulary: {lost}')
    try:
        check_token_ids(ids, vocab_size, f'{what} (encoded)')
    except ValueError as e:
        raise DecodeError(str(e)) from None
    return ids


def detokenize(tokenizer: Any, ids: Any) -> str:
    """Text of generated ids; ids past the tokenizer's vocabulary (a model vocabulary padded
    beyond it) are written U+FFFD instead of failing.

        >>> from trax_sparse.data import ByteTokenizer
        >>> detokenize(ByteTokenizer(), [106, 300, 107])
        'h\ufffdi'
    """
    pieces, run = [], []
    for token in (int(t) for t in ids):
        if 0 <= token < tokenizer.vocab_size:
            run.append(token)
            continue
        pieces += [tokenizer.decode(np.asarray(run, np.int32), errors='replace'), '\ufffd']
        run = []
    pieces.append(tokenizer.decode(np.asarray(run, np.int32), errors='replace'))
    return ''.join(pieces)


class PredictModel:
    """The predict-mode model of a checkpoint, with its tokenizer and limits.

    The model tells what it reads: two inputs (encoder inputs, tokens) make it an
    encoder-decoder, and the vocabulary of each input follows the one token rule
    (`layers.token_ids.input_vocab_sizes`). EOS is the tokenizer's `eos_id`. Lengths are
    checked by `decoding.start_decoding`, before any token.
    """

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
        self.tokenizer = tokenizer_from_config()
        self.eos_id = int(self.tokenizer.eos_id)
        model = self.make(mode='predict')        # not initialized: no weights made yet
        self.is_encoder_decoder = model.n_in > 1
        self.input_vocab_size = input_vocab_sizes(model)[0]       # encoder inputs (or tokens)
        self.vocab_size = input_vocab_sizes(model)[-1]            # tokens, prompt, logits
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
        out: Any = None, err: Any = None, mesh_shape: dict | None = None,
        axis_rules: dict | None = None, fsdp: bool = False, weights_dtype: str = 'auto',
        cache_dtype: str | None = None) -> tuple[str, float]:
    """Decodes and writes the text to `out` (stdout) as it comes; returns (text, seconds
    per token).

    Flags and token ids are checked on the host first (DecodeError), lengths by
    `decoding.start_decoding` before any token (ValueError); a notice
    goes to `err` (stderr) when the model ends at EOS before producing anything.
    mesh_shape / axis_rules / fsdp (JAX): split the weights and caches over a device mesh.
    weights_dtype / cache_dtype: store the weights / K/V caches so (`decoding.storage`).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    check_flags(max_length, temperature, top_k, beam_size, weights_dtype, cache_dtype)
    storage = dict(weights_dtype=weights_dtype, cache_dtype=cache_dtype)
    if note := decoding.storage_note(weights_dtype):
        err.write(f'{PROG}: note: {note}\n')
    mesh = decoding_mesh(mesh_shape, axis_rules, fsdp)
    pm = PredictModel(checkpoint_dir)
    if top_k is not None and pm.vocab_size is not None and top_k > pm.vocab_size:
        raise DecodeError(f'--top_k={top_k} is more than the {pm.vocab_size} tokens of the '
                          f'vocabulary of {pm.name}')
    inputs = None
    if pm.is_encoder_decoder:
        if not input_file:
            raise DecodeError(f'{pm.name} is an encoder-decoder model: give --input_file')
        from trax_sparse import data
        text = data.read_text_file(input_file)
        inputs = encode_checked(pm.tokenizer, text, pm.input_vocab_size,
                                f'--input_file {input_file}')
        inputs = np.concatenate([inputs, [pm.eos_id]]).astype(np.int32)[None]  # + EOS, batch 1
    elif input_file:
        raise DecodeError(f'{pm.name} is a language model: use --prompt, not --input_file')
    prompt_ids = encode_checked(pm.tokenizer, prompt, pm.vocab_size, '--prompt')
    model = pm.build(1, inputs)
    prompt_arg = prompt_ids[None] if len(prompt_ids) else None
    start = time.perf_counter()
    if beam_size > 1:
        ids, text = _beam_search(pm, model, inputs, prompt_arg, beam_size, max_length,
                                 length_penalty, mesh, storage)
        out.write(prompt + text + '\n')
    else:
        ids, text = _stream(pm, model, inputs, prompt_arg, max_length, temperature, top_k, seed,
                            prompt, out, mesh, storage)
    seconds = (time.perf_counter() - start) / max(len(ids), 1)
    if not ids:
        err.write(f'{PROG}: note: the model produced EOS (id {pm.eos_id}) first: nothing was '
                  f'generated\n')
    return text, seconds


def _beam_search(pm: PredictModel, model: Any, inputs: Any, prompt: Any, beam_size: int,
                 max_length: int, length_penalty: float, mesh: Any = None,
                 storage: dict | None = None) -> tuple[list[int], str]:
    seqs, _ = decoding.beam_search(model, inputs=inputs, beam_size=beam_size,
                                   max_length=max_length, length_penalty=length_penalty,
                                   eos_id=pm.eos_id, prompt=prompt, mesh=mesh, **(storage or {}))
    ids = [int(t) for t in np.asarray(seqs)[0, 0]]
    if pm.eos_id in ids:
        ids = ids[:ids.index(pm.eos_id)]
    return ids, detokenize(pm.tokenizer, ids)


def _stream(pm: PredictModel, model: Any, inputs: Any, prompt_arg: Any, max_length: int,
            temperature: float, top_k: int | None, seed: int, prompt: str,
            out: Any, mesh: Any = None, storage: dict | None = None) -> tuple[list[int], str]:
    stream = decoding.autoregressive_sample_stream(
        model, inputs=inputs, temperature=temperature, top_k=top_k, prompt=prompt_arg,
        rng=fastmath.random.get_prng(seed), max_steps=max_length, mesh=mesh, **(storage or {}))
    out.write(prompt)
    ids, shown = [], ''
    for _ in range(max_length):
        token = int(np.asarray(next(stream))[0])
        if token == pm.eos_id:
            break
        ids.append(token)
        text = detokenize(pm.tokenizer, ids)
        out.write(text[len(shown):])
        out.flush()
        shown = text
    out.write('\n')
    return ids, shown


def _one_line(error: BaseException) -> str:
    return ' '.join(str(error).split()) or type(error).__name__


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    with cli.quiet_warnings():
        _main()


def _main() -> None:
    from trax_sparse.layers import LayerError
    user_errors = (DecodeError, checkpoint.CheckpointError, fastmath.BackendError, LayerError,
                   OSError, ValueError, ImportError)
    try:
        if not FLAGS.checkpoint_dir:
            raise DecodeError('--checkpoint_dir is required')
        check_flags(FLAGS.max_length, FLAGS.temperature, FLAGS.top_k, FLAGS.beam_size,
                    FLAGS.weights_dtype, FLAGS.cache_dtype)
        mesh_shape = parse_mapping('mesh_shape', FLAGS.mesh_shape, int)
        axis_rules = parse_mapping('axis_rules', FLAGS.axis_rules, str)
        if mesh_shape is not None and FLAGS.backend != 'jax':
            raise DecodeError(f'--mesh_shape={FLAGS.mesh_shape} needs --backend=jax (NumPy '
                              f'decoding runs on the host, on no mesh)')
        if FLAGS.backend == 'jax' and not fastmath.jax_available():
            raise DecodeError("--backend=jax needs jax, which is not installed: pip install "
                              "'trax_sparse[jax]', or decode with --backend=numpy")
        fastmath.set_backend(FLAGS.backend)
        run(FLAGS.checkpoint_dir, FLAGS.prompt, FLAGS.input_file, FLAGS.max_length,
            FLAGS.temperature, FLAGS.top_k, FLAGS.beam_size, FLAGS.length_penalty, FLAGS.seed,
            mesh_shape=mesh_shape, axis_rules=axis_rules, fsdp=FLAGS.fsdp,
            weights_dtype=FLAGS.weights_dtype, cache_dtype=FLAGS.cache_dtype)
    except user_errors as e:
        if FLAGS.debug:
            raise
        hint = '' if isinstance(e, DecodeError) else ' (--debug shows the traceback)'
        sys.exit(f'{PROG}: error: {_one_line(e)}{hint}')


def help_text() -> str:
    """The text of --help: an example and this binary's own flags, one line each."""
    return cli.short_help(PROG, 'decode from a checkpoint of trax-sparse-train.',
                          "trax-sparse-decode --checkpoint_dir=runs/sparse --prompt=$'ROMEO.\\n' "
                          '--max_length=200 --temperature=0.7 --backend=numpy', FLAGS,
                          cli.module_flags(FLAGS, __name__, 'trax_sparse.decode'))


def console_main() -> None:
    """Entry point of the `trax-sparse-decode` console script."""
    if cli.wants_help(sys.argv):
        cli.print_help_and_exit(help_text())
    app.run(main)


if __name__ == '__main__':
    console_main()
