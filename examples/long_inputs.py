"""Long inputs: the largest input one training step fits in 16 GB, Transformer vs Terraformer.

The paper's third claim: with reversible layers and LSH attention (Reformer techniques) the
Terraformer trains on long inputs in limited memory. For one training step (forward and
backward: the gradient of the loss w.r.t. every weight) of (a) the dense encoder-decoder
Transformer and (b) the Terraformer with LSH attention and reversible blocks, at the same
width and depth, the input length doubles from 1024 until XLA's memory analysis of the
compiled step exceeds the budget (16 GB; peak = arguments + outputs + temporaries, compiled
on this CPU, nothing allocated). Then one real step runs at the largest length whose
estimate fits `--ram_gb` of this machine, to confirm: peak RSS and step time.

The Terraformer uses the library's memory-saving parts (docs/RESULTS.md, section 2, has the
breakdown): reversible blocks whose recomputes wait for their cotangent, LSH attention that
computes (and differentiates) one head at a time (`heads_in_turn`, through the model's
attention parts) with permutation gathers, and its
feed-forward run over chunks of `--ff_chunk_len` positions (`tl.PositionwiseChunk`, passed
as the model's `ff` part).

    .venv/bin/python examples/long_inputs.py                   # 6+6 blocks, d_model 256
    .venv/bin/python examples/long_inputs.py --quick           # tiny sizes, seconds
    .venv/bin/python examples/long_inputs.py --compute_dtype bfloat16   # bf16 activations
"""
import argparse
import atexit
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

# Unavoidable here: XLA's memory analysis of a compiled (not run) step is a jax API.
import jax

from trax_sparse import fastmath, models, shapes
from trax_sparse import layers as tl

GB = 1e9
SIZES = ('target_len', 'd_model', 'n_heads', 'layers', 'chunk_len', 'n_buckets', 'vocab_size',
         'ff_chunk_len', 'compute_dtype')


def chunked_ff(d_model: int, d_ff: int, chunk_len: int) -> Any:
    """The Terraformer's FF part run over chunks of `chunk_len` positions (Reformer's chunked
    feed-forward: one chunk's [chunk, d_ff] hidden layer alive at a time); 0 = unchunked."""
    ff = models.parts.feed_forward(d_model, d_ff, dropout=0.0)
    if not chunk_len:
        return ff
    return lambda mode: tl.PositionwiseChunk(tl.Serial(ff(mode)), chunk_len)


def make_models(args: argparse.Namespace, max_len: int) -> dict[str, tl.Layer]:
    """The two encoder-decoders at the same width and depth (train mode, no dropout)."""
    common = dict(d_model=args.d_model, n_encoder_layers=args.layers,
                  n_decoder_layers=args.layers, n_heads=args.n_heads, dropout=0.0,
                  max_len=max_len, compute_dtype=args.compute_dtype, mode='train')
    d_head = args.d_model // args.n_heads
    # LSH attention parts as the Terraformer builds them from its flags, but computing (and
    # differentiating) one head at a time: ~1/n_heads of the attention's memory.
    lsh = dict(chunk_len=args.chunk_len, n_buckets=args.n_buckets, n_hashes=2,
               n_chunks_before=1, attention_dropout=0.0, heads_in_turn=True)
    attention = dict(masked=True, dropout=0.0, max_len=max_len, d_attention_key=d_head,
                     d_attention_value=d_head)
    return {
        'Transformer (dense attention)': models.Transformer(args.vocab_size,
                                                            d_ff=4 * args.d_model, **common),
        'Terraformer (LSH, reversible)': models.Terraformer(
            args.vocab_size,
            encoder_attention=models.parts.attention(
                'lsh', args.d_model, args.n_heads, causal=False,
                lsh=dict(lsh, n_chunks_after=1), **attention),
            decoder_attention=models.parts.attention(
                'lsh', args.d_model, args.n_heads, lsh=dict(lsh, n_chunks_after=0), **attention),
            ff=chunked_ff(args.d_model, 4 * args.d_model, args.ff_chunk_len), **common),
    }


def step_function(model: tl.Layer, signature: tuple) -> tuple[Any, Any]:
    """(jit'd gradient of the loss w.r.t. the weights, the model state) for `signature`."""
    loss_layer = tl.CrossEntropyLoss()
    with fastmath.use_backend('jax'):
        _, state = model.init(signature[:2], rng=fastmath.random.get_prng(0))

    def loss(weights, inputs, targets, mask):
        (logits, _), _ = model.pure_fn((inputs, targets), weights, state,
                                       np.array([0, 1], np.uint32))
        return loss_layer((logits, targets, mask))
    return jax.jit(jax.grad(loss)), state


def batch_signature(length: int, target_len: int) -> tuple:
    return (shapes.ShapeDtype((1, length), np.int32), shapes.ShapeDtype((1, target_len), np.int32),
            shapes.ShapeDtype((1, target_len), np.float32))


def compiled_peak(model: tl.Layer, length: int, target_len: int) -> tuple[float, float]:
    """(peak bytes of the compiled step per XLA, compile seconds); nothing is allocated."""
    signature = batch_signature(length, target_len)
    with fastmath.use_backend('jax'):
        weights_sig = tl.weights_signature(model, signature[:2])
        structs = fastmath.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                                    (weights_sig,) + signature)
        grad_fn, _ = step_function(model, signature)
        start = time.time()
        compiled = grad_fn.lower(*structs).compile()
        seconds = time.time() - start
    m = compiled.memory_analysis()
    peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)
    return float(peak), seconds


def real_step(model: tl.Layer, length: int, target_len: int) -> dict:
    """Runs one step at `length` with real weights: wall seconds (after compiling) and RSS."""
    signature = batch_signature(length, target_len)
    rng = np.random.default_rng(0)
    inputs = rng.integers(2, 256, (1, length)).astype(np.int32)
    targets = rng.integers(2, 256, (1, target_len)).astype(np.int32)
    mask = np.ones((1, target_len), np.float32)
    with fastmath.use_backend('jax'):
        weights, _ = model.init(signature[:2], rng=fastmath.random.get_prng(0))
        grad_fn, _ = step_function(model, signature)
        compiled = grad_fn.lower(weights, inputs, targets, mask).compile()
        start = time.time()
        grads = jax.block_until_ready(compiled(weights, inputs, targets, mask))
        seconds = time.time() - start
    finite = all(bool(np.isfinite(np.asarray(g)).all()) for g in fastmath.tree_leaves(grads))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024    # Linux: KiB
    return dict(seconds=seconds, max_rss=float(rss), finite=finite)


def real_step_in_subprocess(args: argparse.Namespace, name: str, length: int) -> dict:
    """`real_step` in a fresh process, so its peak RSS is that step's alone."""
    command = [sys.executable, __file__, f'--real_step={name}@{length}'] + [
        f'--{k}={v}' for k, v in vars(args).items() if k in SIZES]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def search(name: str, model_fn: Any, args: argparse.Namespace) -> list[dict]:
    """Doubles the input length from args.start until the compiled peak exceeds the budget."""
    rows, length = [], args.start
    while length <= args.max_length:
        peak, seconds = compiled_peak(model_fn(length), length, args.target_len)
        rows.append(dict(model=name, length=length, peak=peak, compile_s=seconds,
                         fits=peak <= args.budget_gb * GB))
        print(f'   {name}: input {length:,}: {peak / GB:.3f} GB ({seconds:.0f} s to compile)',
              flush=True)
        if peak > args.budget_gb * GB:
            break
        length *= 2
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='tiny sizes (a test)')
    parser.add_argument('--budget_gb', type=float, default=16.0)
    parser.add_argument('--ram_gb', type=float, default=8.0,
                        help='the real confirming step runs only where the estimate fits this')
    parser.add_argument('--start', type=int, default=1024)
    parser.add_argument('--max_length', type=int, default=524288)
    parser.add_argument('--target_len', type=int, default=256)
    parser.add_argument('--d_model', type=int, default=256)
    parser.add_argument('--n_heads', type=int, default=4)
    parser.add_argument('--layers', type=int, default=6, help='encoder = decoder blocks')
    parser.add_argument('--chunk_len', type=int, default=128)
    parser.add_argument('--n_buckets', type=int, default=64)
    parser.add_argument('--vocab_size', type=int, default=256)
    parser.add_argument('--ff_chunk_len', type=int, default=4096,
                        help="the Terraformer's FF runs on chunks of this many positions "
                             '(tl.PositionwiseChunk); 0 = unchunked')
    parser.add_argument('--compute_dtype', default='float32',
                        help="the models' activations: float32 or bfloat16 (weights stay "
                             'float32; benchmarks/precision_memory.py compares the two)')
    parser.add_argument('--real_step', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.real_step:                                  # the subprocess of one real step
        name, length = args.real_step.rsplit('@', 1)
        model = make_models(args, int(length) + args.target_len)[name]
        print(json.dumps(real_step(model, int(length), args.target_len)))
        return {}
    if args.quick:
        # Tiny graphs: XLA's expensive LLVM passes would dominate (set before jax starts).
        os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0 '
                              '--xla_llvm_disable_expensive_passes=true')
        args.start, args.target_len, args.d_model, args.n_heads, args.layers = 64, 16, 16, 2, 1
        args.chunk_len, args.n_buckets, args.max_length = 16, 4, 64   # one length each
        args.budget_gb = args.ram_gb = 0.002      # 2 MB
        # The real step compiles the step just analysed again: XLA's persistent cache (in a
        # temporary folder) hands it the compiled executable.
        cache = tempfile.mkdtemp(prefix='long_inputs_quick_')
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        jax.config.update('jax_compilation_cache_dir', cache)
        jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
        jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    print(f'== long inputs: {" ".join(sys.argv)}  ({time.strftime("%Y-%m-%d %H:%M")})\n'
          f'   {args.layers}+{args.layers} blocks, d_model {args.d_model}, d_ff '
          f'{4 * args.d_model}, {args.n_heads} heads, batch 1, targets {args.target_len}; '
          f'LSH: chunk {args.chunk_len}, {args.n_buckets} buckets, 2 hashes; Terraformer FF '
          f'chunk {args.ff_chunk_len or "none"}; compute dtype {args.compute_dtype}; budget '
          f'{args.budget_gb:g} GB', flush=True)
    names = list(make_models(args, 2 * args.start + args.target_len))
    results = []
    for name in names:
        def model_fn(length, name=name):
            return make_models(args, length + args.target_len)[name]
        rows = search(name, model_fn, args)
        fitting = [r for r in rows if r['fits']]
        largest = max((r['length'] for r in fitting), default=None)
        in_ram = [r for r in fitting if r['peak'] <= args.ram_gb * GB]
        confirm = None
        if in_ram:
            row = max(in_ram, key=lambda r: r['length'])
            # --quick: in this process (no second interpreter and jax start-up; the RSS is then
            # the whole process's, not the step's alone).
            step = (real_step(model_fn(row['length']), row['length'], args.target_len)
                    if args.quick else real_step_in_subprocess(args, name, row['length']))
            confirm = dict(length=row['length'], estimate=row['peak'], **step)
            print(f"   {name}: real step at input {row['length']:,}: {confirm['seconds']:.2f} s, "
                  f"process peak RSS {confirm['max_rss'] / GB:.2f} GB, finite gradients "
                  f"{confirm['finite']}", flush=True)
        results.append(dict(model=name, rows=rows, largest=largest, confirm=confirm))

    lines = [f'| model | largest input in {args.budget_gb:g} GB | XLA peak there | next length '
             f'(peak) | confirmed step: input | step s | process peak RSS |',
             '|---|---|---|---|---|---|---|']
    for r in results:
        fit = {row['length']: row for row in r['rows']}
        over = [row for row in r['rows'] if not row['fits']]
        nxt = f"{over[0]['length']:,} ({over[0]['peak'] / GB:.2f} GB)" if over else '-'
        largest = f"{r['largest']:,}" if r['largest'] else f"< {args.start:,}"
        peak = f"{fit[r['largest']]['peak'] / GB:.2f} GB" if r['largest'] else '-'
        c = r['confirm']
        real = (f"{c['length']:,} | {c['seconds']:.2f} | {c['max_rss'] / GB:.2f} GB" if c
                else '- | - | -')
        lines.append(f"| {r['model']} | {largest} | {peak} | {nxt} | {real} |")
    table = '\n'.join(lines)
    print('\n' + table)
    return dict(results=results, table=table)


if __name__ == '__main__':
    main()
