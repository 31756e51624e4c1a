"""Where an MRLA model's extra time goes: per-operator CPU time of the MRLA model minus its timm base model.

    python benchmarks/profile_overhead.py                       # resnet50_mrla against resnet50, inference and training
    python benchmarks/profile_overhead.py --pair deit_tiny_mrla --rows 12

Prints the forward FLOPs of both models (torch's FlopCounterMode; a training step costs about three times as
much for either); for inference and for one training step (forward, backward) the total time of both (median of
--repeats profiled runs) and the operators whose self time grows most from the base model to the MRLA model; and,
for MRLA-light models, the time of one block's MRLA branch at each feature-map shape, also in units of one
element-wise pass over that map (``torch.add`` of two maps into a third). Arithmetic that is a few percent of the
base while time grows by tens of percent, and a branch that costs a handful of passes, mean the added operators
are bound by memory traffic, not by compute.
"""
import argparse
import time
from collections import defaultdict
from statistics import median
from typing import Callable, Dict, List, Tuple

import timm
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import timm_mrla  # noqa: F401
from bench import PAIRS
from timm_mrla.layers import MRLALight, add_mrla_light


def _step(model: torch.nn.Module, x: torch.Tensor, train: bool) -> Callable[[], None]:
    if train:
        model.train()
        return lambda: model(x).mean().backward()
    model.eval()

    def infer():
        with torch.inference_mode():
            model(x)
    return infer


def _flops(step: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def _op_times(steps: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, Dict[str, float]]:
    """Per model, the median self CPU time (ms) of each operator over ``repeats`` runs taken in turns."""
    runs = {name: defaultdict(list) for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            for event in prof.key_averages():
                runs[name][event.key].append(event.self_cpu_time_total / 1e3)
    return {name: {key: median(times + [0.] * (repeats - len(times))) for key, times in ops.items()}
            for name, ops in runs.items()}


def _timed(fn: Callable[[], None], repeats: int) -> float:
    """Median wall time (ms) of ``fn`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return median(times)


def _branch_shapes(model: torch.nn.Module, x: torch.Tensor) -> List[Tuple[Tuple[int, ...], int, torch.nn.Module]]:
    """(input shape, number of blocks, one block) for each distinct shape MRLA-light branches see."""
    seen: Dict[Tuple[int, ...], list] = {}
    hooks = [block.mrla.register_forward_hook(
        lambda mod, args, out, block=block: seen.setdefault(tuple(args[0].shape), []).append(block))
        for block in model.modules() if isinstance(getattr(block, 'mrla', None), MRLALight)]
    model.train()
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return [(shape, len(blocks), blocks[0]) for shape, blocks in seen.items()]


def branch_costs(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> None:
    """Per feature-map shape: one MRLA-light branch (layer, norm, residual add) in inference and training."""
    print('\n## one MRLA-light branch per feature-map shape\n')
    print('| input | blocks | inference ms | = passes | training fwd+bwd ms | = passes |')
    print('|---|---|---|---|---|---|')
    for shape, count, block in _branch_shapes(model, x):
        a, b = torch.randn(shape), torch.randn(shape)
        one_pass = _timed(lambda: torch.add(a, b), repeats)
        mrla, norm, drop = block.mrla, block.bn_mrla, block.drop_path_mrla
        block.eval()
        with torch.inference_mode():
            infer = _timed(lambda: add_mrla_light(a, b, mrla, norm, drop), repeats)
        block.train()
        a.requires_grad_(True)
        b.requires_grad_(True)
        grad = torch.randn(shape)
        train = _timed(lambda: add_mrla_light(a, b, mrla, norm, drop).backward(grad), repeats)
        print(f'| {list(shape)} | {count} | {infer:.2f} | {infer / one_pass:.1f} | {train:.2f} | '
              f'{train / one_pass:.1f} |')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--pair', default='resnet50_mrla', choices=sorted(PAIRS))
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--rows', type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = (args.pair, PAIRS[args.pair][0])
    models = {name: timm.create_model(name) for name in names}
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    flops = {name: _flops(_step(model, x, train=False)) for name, model in models.items()}
    print(f'{args.pair} against {names[1]}: batch {args.batch_size}, {args.img_size}x{args.img_size}, '
          f'{args.threads} threads, torch {torch.__version__}; times are medians of {args.repeats} profiled runs\n'
          f'forward FLOPs: {flops[names[0]] / 1e9:.2f} G / {flops[names[1]] / 1e9:.2f} G '
          f'(+{100 * (flops[names[0]] / flops[names[1]] - 1):.1f}%)')
    for train in (False, True):
        steps = {name: _step(model, x, train) for name, model in models.items()}
        for step in steps.values():
            step()  # warm up
        times = _op_times(steps, args.repeats)
        total = {name: sum(t.values()) for name, t in times.items()}
        mrla, base = names
        print(f'\n## {"training step" if train else "inference"}')
        print(f'self CPU time: {total[mrla]:.0f} ms / '
              f'{total[base]:.0f} ms (+{100 * (total[mrla] / total[base] - 1):.1f}%)\n')
        print('| operator | MRLA ms | base ms | added ms | share of the added time |')
        print('|---|---|---|---|---|')
        added = total[mrla] - total[base]
        ops = set(times[mrla]) | set(times[base])
        diff = {op: times[mrla].get(op, 0.) - times[base].get(op, 0.) for op in ops}
        for op in sorted(ops, key=lambda o: -diff[o])[:args.rows]:
            print(f'| {op} | {times[mrla].get(op, 0.):.1f} | {times[base].get(op, 0.):.1f} | {diff[op]:+.1f} | '
                  f'{100 * diff[op] / added:.0f}% |')
    if any(isinstance(m, MRLALight) for m in models[args.pair].modules()):
        branch_costs(models[args.pair], x, args.repeats)


if __name__ == '__main__':
    main()
