"""Throughput and memory of MRLA models against their timm base models, measured side by side.

    python benchmarks/bench.py                                   # every pair, eager, on the CPU
    python benchmarks/bench.py --pairs resnet50_mrla --modes eager compile channels_last bf16
    python benchmarks/bench.py --authors-repo /path/to/MRLA      # also time the authors' models
    python benchmarks/bench.py --device cuda --batch-size 64 --modes eager amp channels_last compile
    python benchmarks/bench.py --pairs resnet50_mrla deit_tiny_mrla --modes eager bf16 compile --train-only
    python benchmarks/bench.py --pairs resnet50_mrla --device cuda --batch-size 64 --profile

For each pair, all models are built in one process (a fresh one per pair) and timed in alternating repeats (MRLA model,
timm base model, the MRLA model with its layers in their literal reference form, and the authors' model
when ``--authors-repo`` is given), so that machine noise falls on all of them alike; each figure is the
median over the repeats. A training step is forward, backward and an SGD update. Ratios are throughputs
relative to the timm base model (> 1 is faster); memory ratios are the MRLA model's over the base model's and
the authors' (< 1 is less). Memory is, on CUDA, the peak allocated during a
training step; on the CPU, the bytes autograd keeps for backward in one training step (what grows with
depth, e.g. an MRLA-base key/value cache); ``--memory-only`` adds the CPU peak allocated during a step beyond
the parameters and optimizer state (``Runner.train_peak``). ``--train-only`` measures the training step alone, of
the MRLA and base models (and the authors' with ``--authors-repo``): its peak (``Runner.train_peak``, on the CPU
and on CUDA) and its speed. In compile mode every model is compiled once and warmed up before it is measured. The
markdown table goes to stdout and ``--out``. ``--profile`` takes no timings: it profiles the training step of the
MRLA and base models (torch.profiler) and tables each operator's self time, MRLA against base.
"""
import argparse
import contextlib
import importlib
import json
import os
import subprocess
import platform
import sys
import time
import types
from pathlib import Path
from statistics import median
from typing import Callable, Dict, List, Optional

import timm
import torch
import torch.nn as nn

import timm_mrla  # noqa: F401
from timm_mrla.layers import reference_mode

# MRLA model -> (timm base model, the authors' model: (folder in their repo, module, constructor) or None).
# The authors' DeiT and EfficientNet files need timm 0.5 and cannot share a process with timm 1.x.
PAIRS = {
    'resnet50_mrla': ('resnet50', ('resnet', 'models.resnet_mrla_light', 'resnet50_mrlal')),
    'resnet101_mrla': ('resnet101', ('resnet', 'models.resnet_mrla_light', 'resnet101_mrlal')),
    'resnet50_mrla_base': ('resnet50c', ('resnet', 'models.resnet_mrla_base', 'resnet50_mrlab')),
    'efficientnet_b0_mrla': ('efficientnet_b0', None),
    'deit_tiny_mrla': ('deit_tiny_patch16_224', None),
    'deit_small_mrla': ('deit_small_patch16_224', None),
    'deit_tiny_mrla_base': ('deit_tiny_patch16_224', None),
    'deit_small_mrla_base': ('deit_small_patch16_224', None),
    'vit_small_patch16_224_mrla': ('vit_small_patch16_224', None),
    'convnext_tiny_mrla': ('convnext_tiny', None),
    'ceit_tiny_mrla': ('ceit_tiny_mrla(mrla=False)', None),
}
# timm has no CeiT: its base is the same model without its MRLA branches (as in benchmarks/model_table.py)
WITHOUT_MRLA = '(mrla=False)'
MODES = ('eager', 'channels_last', 'bf16', 'amp', 'compile')


def create_model(name: str, **kwargs) -> nn.Module:
    """``timm.create_model``, where a name ending in ``(mrla=False)`` is that model without its MRLA branches."""
    if name.endswith(WITHOUT_MRLA):
        return timm.create_model(name[:-len(WITHOUT_MRLA)], mrla=False, **kwargs)
    return timm.create_model(name, **kwargs)


def size_kwargs(name: str, img_size: int) -> dict:
    """The DeiTs' and CeiTs' position embeddings are made for one image size."""
    return {'img_size': img_size} if name.startswith(('deit', 'ceit')) else {}


def authors_model(spec, repo: Path) -> nn.Module:
    folder, module_name, fn_name = spec
    sys.path.insert(0, str(repo / folder))
    if folder == 'resnet' and 'models' not in sys.modules:
        # their models/__init__.py star-imports a resnet152_mrlal that does not exist; skip it
        package = types.ModuleType('models')
        package.__path__ = [str(repo / 'resnet' / 'models')]
        sys.modules['models'] = package
    with contextlib.redirect_stdout(None):  # they print on construction
        return getattr(importlib.import_module(module_name), fn_name)()


class Runner:
    """One model prepared for one mode: ``infer()`` and ``train()`` run one step each."""

    def __init__(self, model: nn.Module, mode: str, device: torch.device, batch_size: int, img_size: int,
                 reference: bool = False):
        self._context = contextlib.ExitStack()
        if reference:  # for this runner's whole life: its model is used nowhere else
            self._context.enter_context(reference_mode(model))
        memory_format = torch.channels_last if mode == 'channels_last' else torch.contiguous_format
        self.model = model.to(device, memory_format=memory_format)
        self.x = torch.randn(batch_size, 3, img_size, img_size, device=device).contiguous(memory_format=memory_format)
        self.target = torch.randint(0, 1000, (batch_size,), device=device)
        self.device = device
        autocast_dtype = {'bf16': torch.bfloat16, 'amp': torch.float16}.get(mode)
        self.autocast = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype else \
            contextlib.nullcontext
        self.forward = torch.compile(self.model) if mode == 'compile' else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        self.loss_fn = nn.CrossEntropyLoss()

    def _sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()

    def infer(self):
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            self.forward(self.x)
        self._sync()

    def train(self):
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.loss_fn(self.forward(self.x), self.target)
        loss.backward()
        self.optimizer.step()
        self._sync()

    def train_memory(self) -> float:
        """MB: CUDA peak allocated in a training step, else the bytes saved for backward."""
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
            self.train()
            return torch.cuda.max_memory_allocated() / 2 ** 20
        storages: Dict[int, int] = {}

        def pack(t: torch.Tensor):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        self.model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), self.autocast():
            loss = self.loss_fn(self.forward(self.x), self.target)
        del loss
        return sum(storages.values()) / 2 ** 20


    def train_peak(self) -> float:
        """MB: the peak of memory allocated during one training step (forward, backward, update) beyond what was
        allocated before it (parameters, optimizer state, every other model): what autograd keeps plus what backward
        allocates for a while (gradients, recomputed maps). On the CPU from torch.profiler's allocation events, on
        CUDA from ``torch.cuda.max_memory_allocated``."""
        self.train()  # the optimizer state exists before the measured step
        if self.device.type == 'cuda':
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.train()
            return (torch.cuda.max_memory_allocated(self.device) - before) / 2 ** 20
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            self.train()
        allocations = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]'),
                             key=lambda e: e.start_ns())
        allocated = peak = 0
        for event in allocations:
            allocated += event.nbytes()
            peak = max(peak, allocated)
        return peak / 2 ** 20


def time_alternating(steps: Dict[str, Callable[[], None]], repeats: int, warmup: int) -> Dict[str, float]:
    """Median seconds per step of each callable, run in turn so noise falls on all alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: median(ts) for name, ts in times.items()}


def bench_pair(name: str, mode: str, args, device: torch.device) -> Optional[dict]:
    base_name, authors_spec = PAIRS[name]
    if mode == 'channels_last' and name.startswith('deit'):
        return None  # the ViTs take tokens; there is no channels-last layout to compare
    sizes = size_kwargs(name, args.img_size)
    models = {'mrla': create_model(name, **sizes), 'base': create_model(base_name, **sizes)}
    if args.authors_repo and authors_spec:
        models['authors'] = authors_model(authors_spec, args.authors_repo)
    runners = {k: Runner(m, mode, device, args.batch_size, args.img_size) for k, m in models.items()}
    if not args.train_only:
        runners['reference'] = Runner(create_model(name, **sizes), mode, device, args.batch_size, args.img_size,
                                      reference=True)
    row = {'model': name, 'base': base_name, 'mode': mode}
    for phase in () if args.memory_only else ('train',) if args.train_only else ('infer', 'train'):
        times = time_alternating({k: getattr(r, phase) for k, r in runners.items()}, args.repeats, args.warmup)
        for k, t in times.items():
            row[f'{phase}_{k}'] = args.batch_size / t
    for k, r in runners.items():
        if args.train_only or (args.memory_only and device.type != 'cuda'):
            row[f'peak_{k}'] = r.train_peak()
        if not args.train_only:
            row[f'mem_{k}'] = r.train_memory()
    return row


def profile_pair(name: str, mode: str, args, device: torch.device, top: int = 25) -> str:
    """``--repeats`` training steps of the MRLA model and of its base under torch.profiler: each operator's self
    time per step (on CUDA the time of the kernels it launched, else its CPU time), the operators MRLA adds most
    first, as a markdown table."""
    base_name, _ = PAIRS[name]
    sizes = size_kwargs(name, args.img_size)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    ms: Dict[str, Dict[str, float]] = {}
    for key, model_name in (('mrla', name), ('base', base_name)):
        runner = Runner(create_model(model_name, **sizes), mode, device, args.batch_size, args.img_size)
        for _ in range(args.warmup):
            runner.train()
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(args.repeats):
                runner.train()
        ms[key] = {}
        for event in prof.key_averages():
            if event.device_type != torch.autograd.DeviceType.CPU:
                continue  # the kernels themselves: their time is counted in the operators that launched them
            total = event.self_device_time_total if device.type == 'cuda' else event.self_cpu_time_total
            ms[key][event.key] = total / 1e3 / args.repeats
        del runner
    ops = sorted(set(ms['mrla']) | set(ms['base']), key=lambda op: ms['base'].get(op, 0.) - ms['mrla'].get(op, 0.))
    clock = 'kernel time' if device.type == 'cuda' else 'CPU self time'
    lines = [f'{name} against {base_name}, {mode}: {clock} per training step, ms (the {top} operators MRLA adds most)',
             '', f'| operator | {name} | {base_name} | added |', '|---|---|---|---|']
    for op in ops[:top]:
        mrla, base = ms['mrla'].get(op, 0.), ms['base'].get(op, 0.)
        lines.append(f'| {op} | {mrla:.2f} | {base:.2f} | {mrla - base:+.2f} |')
    mrla, base = sum(ms['mrla'].values()), sum(ms['base'].values())
    lines.append(f'| total | {mrla:.2f} | {base:.2f} | {mrla - base:+.2f} |')
    return '\n'.join(lines)


def fmt_ratio(row: dict, measure: str, other: str) -> str:
    """The MRLA model's figure over another model's: ``measure`` 'infer' / 'train' (throughput, > 1 is faster),
    'mem' (saved tensors) / 'peak' (step peak; < 1 is less memory)."""
    key = f'{measure}_{other}'
    return f"{row[f'{measure}_mrla'] / row[key]:.2f}" if key in row else '-'


def table(rows: List[dict]) -> str:
    lines = [
        '| model | timm base | mode | infer img/s (MRLA / base) | infer vs base | vs reference | vs authors '
        '| train img/s (MRLA / base) | train vs base | vs reference | vs authors | train memory MB (MRLA / base / ref) '
        '| memory vs base | vs authors |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['base']} | {r['mode']} | {r['infer_mrla']:.1f} / {r['infer_base']:.1f} "
            f"| {fmt_ratio(r, 'infer', 'base')} | {fmt_ratio(r, 'infer', 'reference')} | {fmt_ratio(r, 'infer', 'authors')} "
            f"| {r['train_mrla']:.1f} / {r['train_base']:.1f} | {fmt_ratio(r, 'train', 'base')} "
            f"| {fmt_ratio(r, 'train', 'reference')} | {fmt_ratio(r, 'train', 'authors')} "
            f"| {r['mem_mrla']:.0f} / {r['mem_base']:.0f} / {r['mem_reference']:.0f} "
            f"| {fmt_ratio(r, 'mem', 'base')} | {fmt_ratio(r, 'mem', 'authors')} |")
    return '\n'.join(lines)


def memory_table(rows: List[dict]) -> str:
    kinds = [('mem', 'train memory MB'), ('peak', 'step peak MB')] if any('peak_mrla' in r for r in rows) else \
        [('mem', 'train memory MB')]
    header = ''.join(f'| {title} (MRLA / base / reference / authors) | vs base | vs reference | vs authors '
                     for _, title in kinds)
    lines = [f'| model | timm base | mode {header}|', '|---|---|---' + '|---|---|---|---' * len(kinds) + '|']
    for r in rows:
        cells = ''
        for kind, _ in kinds:
            mb = ' / '.join(f"{r[f'{kind}_{k}']:.0f}" if f'{kind}_{k}' in r else '-'
                            for k in ('mrla', 'base', 'reference', 'authors'))
            cells += f"| {mb} | {fmt_ratio(r, kind, 'base')} | {fmt_ratio(r, kind, 'reference')} " \
                     f"| {fmt_ratio(r, kind, 'authors')} "
        lines.append(f"| {r['model']} | {r['base']} | {r['mode']} {cells}|")
    return '\n'.join(lines)


def train_table(rows: List[dict]) -> str:
    lines = ['| model | timm base | mode | step peak MB (MRLA / base) | peak vs base | vs authors '
             '| train img/s (MRLA / base) | train vs base | vs authors |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['base']} | {r['mode']} | {r['peak_mrla']:.0f} / {r['peak_base']:.0f} "
            f"| {fmt_ratio(r, 'peak', 'base')} | {fmt_ratio(r, 'peak', 'authors')} "
            f"| {r['train_mrla']:.1f} / {r['train_base']:.1f} | {fmt_ratio(r, 'train', 'base')} "
            f"| {fmt_ratio(r, 'train', 'authors')} |")
    return '\n'.join(lines)


def machine(device: torch.device) -> str:
    what = f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads'
    if device.type == 'cuda':
        what = torch.cuda.get_device_name(device)
    malloc = ' '.join(f'{k}={v}' for k, v in os.environ.items() if k.startswith('MALLOC_')) or 'default glibc malloc'
    return f'{what}; torch {torch.__version__}, timm {timm.__version__}; {malloc}'


def run_pair_in_subprocess(name: str, mode: str, argv: List[str]) -> Optional[dict]:
    """One pair in a fresh process: no pair inherits another's memory (glibc keeps freed blocks)."""
    done = subprocess.run([sys.executable, __file__, *argv, '--worker', name, mode], stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f'benchmark of {name} [{mode}] failed (exit {done.returncode})')
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return row or None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pairs', nargs='+', default=list(PAIRS), choices=list(PAIRS), metavar='MODEL')
    parser.add_argument('--modes', nargs='+', default=['eager'], choices=MODES)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--authors-repo', type=Path, help="checkout of github.com/joyfang1106/MRLA (never copied)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument('--memory-only', action='store_true',
                      help='only the training memory, no timings: saved tensors and, on the CPU, the peak during a '
                           'step (neither is affected by machine load)')
    only.add_argument('--train-only', action='store_true',
                      help='only the training step of the MRLA and base models: its peak memory and its speed')
    only.add_argument('--profile', action='store_true',
                      help='no timings: a torch.profiler profile of the training step, per operator, MRLA against '
                           'base (on CUDA the kernels\' time)')
    parser.add_argument('--out', type=Path, help='also write the markdown table here')
    parser.add_argument('--worker', nargs=2, metavar=('MODEL', 'MODE'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.worker:
        print(json.dumps(bench_pair(*args.worker, args, device) or {}))
        return
    if args.profile:
        text = f"Command: `python benchmarks/bench.py {' '.join(sys.argv[1:])}`\n\nMachine: {machine(device)}; " \
               f"batch {args.batch_size}, {args.img_size}x{args.img_size}, {args.repeats} steps profiled.\n\n" + \
               '\n\n'.join(profile_pair(name, mode, args, device) for mode in args.modes for name in args.pairs
                            if mode != 'amp' or device.type == 'cuda') + '\n'
        print(text)
        if args.out:
            args.out.write_text(text)
        return
    rows = []
    for mode in args.modes:
        if mode == 'amp' and device.type != 'cuda':
            continue  # float16 autocast is a CUDA mode; bf16 covers the CPU
        for name in args.pairs:
            row = run_pair_in_subprocess(name, mode, sys.argv[1:])
            if row:
                rows.append(row)
                print(f"{name} [{mode}] memory x{fmt_ratio(row, 'mem', 'base')} peak x{fmt_ratio(row, 'peak', 'base')}"
                      if args.memory_only else
                      f"{name} [{mode}] train x{fmt_ratio(row, 'train', 'base')} peak x{fmt_ratio(row, 'peak', 'base')}"
                      if args.train_only else
                      f"{name} [{mode}] infer x{fmt_ratio(row, 'infer', 'base')} train x{fmt_ratio(row, 'train', 'base')} "
                      f"(vs reference x{fmt_ratio(row, 'infer', 'reference')} / x{fmt_ratio(row, 'train', 'reference')}) "
                      f"memory x{fmt_ratio(row, 'mem', 'base')}",
                      file=sys.stderr, flush=True)
    text = (f"Command: `python benchmarks/bench.py {' '.join(sys.argv[1:])}`\n\n"
            f"Machine: {machine(device)}; batch {args.batch_size}, {args.img_size}x{args.img_size}, "
            + ('training memory only' if args.memory_only else f'median of {args.repeats} alternating repeats')
            + f".\n\n{(memory_table if args.memory_only else train_table if args.train_only else table)(rows)}\n")
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == '__main__':
    main()
