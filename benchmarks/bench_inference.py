"""Inference latency of MRLA models against their timm base models: eager, torch.compile and ONNX Runtime.

    python benchmarks/bench_inference.py                                  # the four default pairs, every mode
    python benchmarks/bench_inference.py --pairs resnet50_mrla --modes onnx-legacy --repeats 20
    python benchmarks/bench_inference.py --profile resnet50_mrla          # ONNX Runtime's time per op type
    python benchmarks/bench_inference.py --profile resnet50_mrla --modes compile   # torch.profiler, compiled

Each pair runs in a fresh process. The MRLA model and its base (``bench.py``'s ``PAIRS``) are put in ``eval()``, run
under ``torch.inference_mode()`` (eager, and ``torch.compile``d) or exported the same way to ONNX with a dynamic
batch (``onnx-legacy``: ``torch.onnx.export(dynamo=False)``; ``onnx-dynamo``: ``dynamo=True`` with its graph
optimiser) and run in ONNX Runtime's CPUExecutionProvider with ``--threads`` intra-op threads. At each batch size
the two are timed in alternating repeats; figures are medians in milliseconds, and the ratio is the base model's
time over the MRLA model's (its relative throughput, > 1 is faster). ``--profile`` turns on ONNX Runtime's own
profiling (``SessionOptions.enable_profiling``) and sums the kernel time of each op type, per run, for both models.
"""
import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import onnxruntime
import timm
import torch

import timm_mrla  # noqa: F401
from bench import PAIRS, machine, time_alternating

DEFAULT_PAIRS = ['resnet50_mrla', 'resnet50_mrla_base', 'efficientnet_b0_mrla', 'deit_tiny_mrla']
MODES = ('eager', 'compile', 'onnx-legacy', 'onnx-dynamo')


def export_onnx(model: torch.nn.Module, exporter: str, img_size: int) -> bytes:
    """``model`` as ONNX with a dynamic batch axis, exported at batch 2 (``exporter``: 'legacy' or 'dynamo')."""
    x = torch.randn(2, 3, img_size, img_size)
    if exporter == 'legacy':
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)
            torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=['images'], output_names=['logits'],
                              dynamic_axes={'images': {0: 'batch'}, 'logits': {0: 'batch'}})
        return buffer.getvalue()
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim('batch')},))
    return program.model_proto.SerializeToString()


def ort_session(model_bytes: bytes, threads: int, profile: bool = False) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = profile
    options.profile_file_prefix = os.path.join(tempfile.gettempdir(), 'ort_profile')
    return onnxruntime.InferenceSession(model_bytes, options, providers=['CPUExecutionProvider'])


def ort_step(session: onnxruntime.InferenceSession, images: torch.Tensor) -> Callable[[], None]:
    feed = {session.get_inputs()[0].name: images.numpy()}
    return lambda: session.run(None, feed)


def torch_step(forward: Callable, images: torch.Tensor) -> Callable[[], None]:
    def step():
        with torch.inference_mode():
            forward(images)
    return step


def _op_kind(node: dict) -> str:
    """A profiled node's op type; depthwise convolutions (weight [C, 1, kh, kw]) apart from the others."""
    op = node['op_name']
    shapes = node.get('input_type_shape', [])
    if op in ('Conv', 'FusedConv') and len(shapes) > 1:
        weight = next(iter(shapes[1].values()))
        if len(weight) == 4 and weight[1] == 1 and weight[0] > 1:
            return f'{op} (depthwise)'
    return op


def op_type_profile(model_bytes: bytes, images: torch.Tensor, threads: int, runs: int
                    ) -> Dict[str, Tuple[float, int]]:
    """Milliseconds of kernel time per op type and run, and how many nodes of that type ran, from ONNX Runtime's
    profile of ``runs`` runs after one warm-up run (the profile names the optimised graph's ops: NCHWc convolutions
    are 'Conv', fused ones 'FusedConv', layout changes 'ReorderInput' / 'ReorderOutput')."""
    session = ort_session(model_bytes, threads, profile=True)
    step = ort_step(session, images)
    step()
    for _ in range(runs):
        step()
    path = session.end_profiling()
    events = json.loads(Path(path).read_text())
    os.remove(path)
    runs_seen = [e for e in events if e.get('name') == 'model_run']
    start_us = runs_seen[1]['ts']  # skip the warm-up run
    totals: Counter = Counter()
    counts: Counter = Counter()
    for event in events:
        if event.get('cat') == 'Node' and event['name'].endswith('_kernel_time') and event['ts'] >= start_us:
            totals[_op_kind(event['args'])] += event['dur']
            counts[_op_kind(event['args'])] += 1
    return {op: (us / 1000 / runs, counts[op] // runs) for op, us in totals.items()}


def _torch_op_kind(event) -> str:
    """A profiled torch op's kind: its name, depthwise convolutions apart, Inductor's fused kernels as one kind."""
    if 'cpp_fused' in event.name:
        return 'Inductor fused kernels'
    shapes = event.input_shapes or []
    if 'convolution' in event.name and len(shapes) > 1 and len(shapes[1]) == 4 and shapes[1][1] == 1 \
            and shapes[1][0] > 1:
        return f'{event.name} (depthwise)'
    return event.name


def torch_op_profile(forward: Callable, images: torch.Tensor, runs: int) -> Dict[str, Tuple[float, int]]:
    """Self CPU milliseconds per op kind and run, and calls per run, from torch.profiler over ``runs`` runs after one
    warm-up run (with Inductor's kernel profiling on, so that its fused C++ kernels are named)."""
    step = torch_step(forward, images)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(runs):
            step()
    totals: Counter = Counter()
    counts: Counter = Counter()
    for event in prof.events():
        totals[_torch_op_kind(event)] += event.self_cpu_time_total
        counts[_torch_op_kind(event)] += 1
    return {op: (us / 1000 / runs, counts[op] // runs) for op, us in totals.items() if us / runs >= 50}


def create(name: str, img_size: int) -> torch.nn.Module:
    return timm.create_model(name, **({'img_size': img_size} if name.startswith('deit') else {})).eval()


def bench_pair(name: str, args) -> List[dict]:
    torch.manual_seed(0)
    base_name = PAIRS[name][0]
    models = {'mrla': create(name, args.img_size), 'base': create(base_name, args.img_size)}
    img_size = args.img_size
    rows = []
    for mode in args.modes:
        if mode == 'eager':
            steps = {k: partial(torch_step, m) for k, m in models.items()}
        elif mode == 'compile':
            steps = {k: partial(torch_step, torch.compile(m)) for k, m in models.items()}
        else:
            exporter = mode.split('-')[1]
            steps = {k: partial(ort_step, ort_session(export_onnx(m, exporter, img_size), args.threads))
                     for k, m in models.items()}
        for batch_size in args.batch_sizes:
            images = torch.randn(batch_size, 3, img_size, img_size)
            times = time_alternating({k: make(images) for k, make in steps.items()}, args.repeats, args.warmup)
            rows.append({'model': name, 'base': base_name, 'mode': mode, 'batch': batch_size,
                         'mrla_ms': times['mrla'] * 1000, 'base_ms': times['base'] * 1000})
            print(f"{name} [{mode}, batch {batch_size}] {rows[-1]['mrla_ms']:.1f} / {rows[-1]['base_ms']:.1f} ms",
                  file=sys.stderr, flush=True)
    return rows


def profile_pair(name: str, args) -> str:
    """Markdown table: ONNX Runtime's kernel milliseconds per op type for the pair, each exported by the first
    ONNX mode in ``--modes`` (legacy when none), at the largest batch size; with ``--modes compile`` alone,
    torch.profiler's self milliseconds per op of the ``torch.compile``d pair instead."""
    base_name = PAIRS[name][0]
    batch_size = max(args.batch_sizes)
    images = torch.randn(batch_size, 3, args.img_size, args.img_size)
    if args.modes == ['compile']:
        torch._inductor.config.cpp.enable_kernel_profile = True
        profiles = {k: torch_op_profile(torch.compile(create(m, args.img_size)), images, args.repeats)
                    for k, m in (('mrla', name), ('base', base_name))}
        title = (f'torch.profiler, torch.compile (Inductor), batch {batch_size}, self CPU ms per run (mean of '
                 f'{args.repeats} runs; ops under 0.05 ms left out), and calls of each op per run:')
    else:
        exporter = next((m.split('-')[1] for m in args.modes if m.startswith('onnx-')), 'legacy')
        profiles = {k: op_type_profile(export_onnx(create(m, args.img_size), exporter, args.img_size), images,
                                       args.threads, args.repeats)
                    for k, m in (('mrla', name), ('base', base_name))}
        title = (f'ONNX Runtime profile, {exporter} export, batch {batch_size}, kernel ms per run (mean of '
                 f'{args.repeats} runs), and nodes of each type in the optimised graph:')
    ms = {k: {op: v[0] for op, v in p.items()} for k, p in profiles.items()}
    nodes = {k: {op: v[1] for op, v in p.items()} for k, p in profiles.items()}
    ops = sorted(set(ms['mrla']) | set(ms['base']), key=lambda op: ms['base'].get(op, 0) - ms['mrla'].get(op, 0))
    lines = [title, '', f'| op type | {name} | {base_name} | added | nodes ({name} / {base_name}) |',
             '|---|---|---|---|---|']
    for op in ops + ['total']:
        mrla, base = (sum(p.values()) if op == 'total' else p.get(op, 0.) for p in (ms['mrla'], ms['base']))
        count = (sum(n.values()) if op == 'total' else n.get(op, 0) for n in (nodes['mrla'], nodes['base']))
        lines.append(f'| {op} | {mrla:.1f} | {base:.1f} | {mrla - base:+.1f} | {" / ".join(map(str, count))} |')
    return '\n'.join(lines)


def table(rows: List[dict]) -> str:
    lines = ['| model | timm base | mode | batch | ms (MRLA / base) | MRLA vs base |', '|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['model']} | {r['base']} | {r['mode']} | {r['batch']} | {r['mrla_ms']:.1f} / "
                     f"{r['base_ms']:.1f} | {r['base_ms'] / r['mrla_ms']:.2f} |")
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pairs', nargs='+', default=DEFAULT_PAIRS, choices=list(PAIRS), metavar='MODEL')
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES)
    parser.add_argument('--batch-sizes', nargs='+', type=int, default=[1, 8])
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=2,
                        help='torch.set_num_threads and ONNX Runtime intra-op threads')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--profile', metavar='MODEL', choices=list(PAIRS),
                        help="only ONNX Runtime's per-op-type profile of this pair")
    parser.add_argument('--out', type=Path, help='also write the markdown here')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(bench_pair(args.worker, args)))
        return
    command = f"`python benchmarks/bench_inference.py {' '.join(sys.argv[1:])}`"
    if args.profile:
        body = profile_pair(args.profile, args)
    else:
        rows = []
        for name in args.pairs:
            done = subprocess.run([sys.executable, __file__, *sys.argv[1:], '--worker', name], stdout=subprocess.PIPE,
                                  text=True)
            if done.returncode:
                raise SystemExit(f'benchmark of {name} failed (exit {done.returncode})')
            rows += json.loads(done.stdout.strip().splitlines()[-1])
        body = (f'Median of {args.repeats} alternating repeats, {args.img_size}x{args.img_size}; ONNX Runtime '
                f'{onnxruntime.__version__}, CPUExecutionProvider, {args.threads} intra-op threads.\n\n{table(rows)}')
    text = f'Command: {command}\n\nMachine: {machine(torch.device("cpu"))}.\n\n{body}\n'
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == '__main__':
    main()
