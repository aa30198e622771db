"""Summarization with the Terraformer: train, decode and score ROUGE-1/2/L on arXiv.

The paper's long-input task: TFDS `scientific_papers/arxiv` (article -> abstract) with
gin/terraformer_arxiv.gin. The dataset must be prepared offline (nothing is downloaded
here: `tfds.builder(name, data_dir=...).is_prepared()` is checked first, and when it is
not prepared the script says how to prepare it and exits with status 2). Decoding is
greedy with `trax_sparse.decoding.autoregressive_sample` on the predict-mode model of the
checkpoint; ROUGE comes from Google's `rouge-score` package (F-measure, stemming).

    .venv/bin/python examples/summarize.py --data_dir=~/tensorflow_datasets --steps=1000
    .venv/bin/python examples/summarize.py --quick     # generated `tiny_arxiv`, seconds

`--quick` (and `--tiny`, its full-length version) run the same code on a small generated
dataset in TFDS format with the same features (examples/tiny_arxiv.py) and
gin/experiments/terraformer_arxiv_tiny.gin.
"""
import argparse
import json
import os
import sys
import time

import gin
import numpy as np

from trax_sparse import configurables, data, decode, decoding, fastmath

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARXIV = 'scientific_papers/arxiv'
TINY_CONFIG = os.path.join(ROOT, 'gin', 'experiments', 'terraformer_arxiv_tiny.gin')
QUICK = ['train.steps = 2', 'train.eval_steps = 1', 'train.checkpoint_every = 2',
         'Terraformer.d_model = 16', 'Terraformer.d_ff = 32', 'Terraformer.n_heads = 2',
         'Terraformer.d_attention_key = 8', 'Terraformer.d_attention_value = 8',
         'Terraformer.n_encoder_layers = 1', 'Terraformer.n_decoder_layers = 1',
         'max_input_len = 64', 'max_target_len = 16', 'Terraformer.max_len = 80',
         'Terraformer.chunk_len = 16', 'Terraformer.n_buckets = 4',
         'train/tfds_seq2seq_stream.batch_size = 2', 'eval/tfds_seq2seq_stream.batch_size = 2',
         'train.eval_inputs = None', 'train.plot = False']   # no eval step to compile


def offline_message(name: str, data_dir: str) -> str:
    return (f'TFDS dataset {name!r} is not prepared in {data_dir!r}, and this script never '
            f'downloads. Prepare it on a machine with network access, in the array_record '
            f'format:\n  python -c "import tensorflow_datasets as tfds; tfds.builder('
            f"'{name}', data_dir='{data_dir}', file_format='array_record')"
            f'.download_and_prepare()"\nthen copy it into {data_dir} (or pass --data_dir). '
            f'To try the pipeline without it: python examples/summarize.py --quick')


def train(config_file: str, bindings: list[str], output_dir: str) -> None:
    """Trains (or resumes) the gin-configured model in output_dir."""
    gin.clear_config()
    configurables.add_search_paths([config_file])
    gin.parse_config_files_and_bindings([config_file], bindings)
    start = time.time()
    loop = configurables.train(output_dir=output_dir, operative_config=gin.operative_config_str)
    print(f'   trained to step {loop.step} ({time.time() - start:.0f} s)', flush=True)
    gin.clear_config()


def binding(name: str) -> int:
    """The value gin binds to `name`, a macro (%max_input_len) evaluated."""
    value = gin.query_parameter(name)
    if isinstance(value, gin.config.ConfigurableReference):
        value = value.scoped_configurable_fn()
    return int(value)


def encode_batch(tokenizer, texts: list[str], max_len: int) -> np.ndarray:
    """Token ids [B, max_len'] of texts (truncated to max_len - 1, EOS, padded with 0)."""
    rows = [list(tokenizer.encode(t))[:max_len - 1] + [tokenizer.eos_id] for t in texts]
    out = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def summarize(output_dir: str, articles: list[str], max_input_len: int, max_target_len: int,
              batch_size: int, backend: str = 'jax') -> list[str]:
    """Greedy summaries of `articles` from the newest checkpoint in output_dir, decoded on
    `backend`."""
    pm = decode.PredictModel(output_dir)
    summaries = []
    with fastmath.use_backend(backend):
        for start in range(0, len(articles), batch_size):
            inputs = encode_batch(pm.tokenizer, articles[start:start + batch_size],
                                  max_input_len)
            model = pm.build(inputs.shape[0], inputs)
            ids = decoding.autoregressive_sample(model, inputs=inputs, temperature=0.0,
                                                 eos_id=pm.eos_id, max_length=max_target_len)
            for row in np.asarray(ids):
                end = np.flatnonzero(row == pm.eos_id)
                summaries.append(decode.detokenize(pm.tokenizer,
                                                   row[:end[0] if end.size else None]))
    gin.clear_config()
    return summaries


def rouge(references: list[str], predictions: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (x100) from the rouge-score package (with stemming)."""
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=True)
    scores = [scorer.score(r, p) for r, p in zip(references, predictions)]
    return {k: 100 * float(np.mean([s[k].fmeasure for s in scores]))
            for k in ('rouge1', 'rouge2', 'rougeL')}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='tiny_arxiv, tiny model, 2 steps')
    parser.add_argument('--tiny', action='store_true', help='tiny_arxiv with its CPU config')
    parser.add_argument('--dataset', default=ARXIV)
    parser.add_argument('--data_dir', default=os.environ.get('TFDS_DATA_DIR',
                                                             '~/tensorflow_datasets'))
    parser.add_argument('--config_file', default=os.path.join(ROOT, 'gin',
                                                              'terraformer_arxiv.gin'))
    parser.add_argument('--config', action='append', default=[], help='gin binding')
    parser.add_argument('--steps', type=int, default=None, help='default: the gin config')
    parser.add_argument('--output_dir', default=None)
    parser.add_argument('--split', default='test')
    parser.add_argument('--n_examples', type=int, default=32, help='articles to summarize')
    parser.add_argument('--batch_size', type=int, default=8, help='decoding batch size')
    args = parser.parse_args(argv)
    if args.quick:      # tiny graphs: XLA's expensive LLVM passes would dominate (set before
        os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0 '   # jax starts)
                              '--xla_llvm_disable_expensive_passes=true')
    fastmath.set_backend('jax')
    name = 'summarize_quick' if args.quick else 'summarize_tiny' if args.tiny else 'summarize'
    output_dir = args.output_dir or os.path.join(ROOT, 'runs', name)
    bindings = list(args.config)
    if args.quick or args.tiny:
        import tiny_arxiv                                 # registers the builder with TFDS
        args.dataset, args.config_file = tiny_arxiv.NAME, TINY_CONFIG
        args.data_dir = tiny_arxiv.prepare(os.path.join(output_dir, 'tfds'))
        if args.quick:
            bindings = QUICK + bindings
            args.n_examples, args.batch_size = 2, 2
    data_dir = os.path.expanduser(args.data_dir)
    print(f'== summarize: {" ".join(sys.argv)}  ({time.strftime("%Y-%m-%d %H:%M")})', flush=True)
    if not data.is_prepared(args.dataset, data_dir):
        print(offline_message(args.dataset, data_dir), file=sys.stderr)
        return 2
    bindings = [f"tfds_seq2seq_stream.data_dir = '{data_dir}'"] + bindings
    if args.steps is not None:
        bindings.append(f'train.steps = {args.steps}')
    print(f'== training {os.path.relpath(args.config_file, ROOT)} on {args.dataset}', flush=True)
    train(args.config_file, bindings, output_dir)

    gin.parse_config_files_and_bindings([args.config_file], bindings)
    max_input_len, max_target_len = (binding(f'train/tfds_seq2seq_stream.{k}')
                                     for k in ('max_input_len', 'max_target_len'))
    gin.clear_config()
    examples = data.tfds_examples(args.dataset, args.split, data_dir)
    n = min(args.n_examples, len(examples))
    articles = [examples[i]['article'].decode() if isinstance(examples[i]['article'], bytes)
                else str(examples[i]['article']) for i in range(n)]
    references = [examples[i]['abstract'].decode() if isinstance(examples[i]['abstract'], bytes)
                  else str(examples[i]['abstract']) for i in range(n)]
    print(f'== decoding {n} {args.split} articles (greedy, at most {max_target_len} tokens)',
          flush=True)
    start = time.time()
    # --quick decodes on NumPy: no jit compiles of the predict-mode model (seconds on JAX).
    predictions = summarize(output_dir, articles, max_input_len, max_target_len,
                            args.batch_size, backend='numpy' if args.quick else 'jax')
    seconds = time.time() - start
    scores = rouge(references, predictions)
    print(f'\n| dataset | split | articles | ROUGE-1 | ROUGE-2 | ROUGE-L | decode s |\n'
          f'|---|---|---|---|---|---|---|\n| {args.dataset} | {args.split} | {n} | '
          f"{scores['rouge1']:.2f} | {scores['rouge2']:.2f} | {scores['rougeL']:.2f} | "
          f'{seconds:.0f} |')
    for reference, prediction in list(zip(references, predictions))[:3]:
        print(f'\nreference: {reference[:200]}\nsummary:   {prediction[:200]}')
    with open(os.path.join(output_dir, 'rouge.json'), 'w') as f:
        json.dump(dict(scores, n=n, dataset=args.dataset, split=args.split,
                       predictions=predictions), f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
