"""Training under ``DistributedDataParallel`` (gloo, two local processes on the CPU): the MRLA training units (CNN
MRLA-light, MRLA-base, DeiT's and CeiT's token MRLA-light) run inside DDP, both ranks end with the same weights, and
each rank's weights and running statistics equal those of the same DDP run through the literal reference form.

Each rank trains on its own data shard with its own drop-path masks (seeded, the same in both runs of a rank), in
float64: in float32 a few train-mode steps at a small batch amplify rounding beyond any useful tolerance. This file
is also the worker: ``python tests/test_ddp.py RANK WORLD_SIZE PORT OUT [--sync-bn]`` runs one rank and saves its
results; with ``--sync-bn`` (``tests/test_units_on_device.py``, one GPU per rank) each rank runs on its own GPU with
NCCL and SyncBatchNorm.
"""
import argparse
import copy
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import timm
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

import timm_mrla  # noqa: F401
from timm_mrla.layers import reference_mode
from test_base_training_path import FP64_TOL, autograd_node_names
from test_training_path import rel_error

# narrow models (DDP's all-reduce of float64 gradients dominates the time), whose every MRLA branch reaches the
# loss, and the autograd node of the unit each must run
MODELS = {
    'resnet18_mrla': (dict(channels=(32, 64, 64, 128), stem_width=32), '_LightBranchBackward'),
    'resnet50_mrla_base': (dict(layers=(1, 3, 1, 1), channels=(16, 32, 32, 64), stem_width=16), '_BaseBranchBackward'),
    'deit_tiny_mrla': (dict(img_size=32, patch_size=8, depth=2, global_pool='avg'),
                       'GeneratedBackwardFor_timm_mrla_token_light_defaultBackward'),  # the op's autograd node
    'ceit_tiny_mrla': (dict(img_size=32, depth=2), '_TokenLightNormedBackward'),
}
WORLD_SIZE, STEPS, BATCH, CLASSES = 2, 3, 4, 5
COLLECTIVE_TIMEOUT_S = 60  # a rank that waits longer on the other fails instead of hanging
RUN_TIMEOUT_S = 300  # both processes together, imports included, on a loaded CI machine


def small_model(name: str) -> nn.Module:
    """``name`` narrowed as ``MODELS`` says, in float64, training mode, drop-path on, BatchNorm affines drawn."""
    torch.manual_seed(0)
    kwargs, _ = MODELS[name]
    model = timm.create_model(name, num_classes=CLASSES, drop_path_rate=0.3, **kwargs).double().train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)  # timm zero-inits the last norm of a block, which would hide branches
                m.bias.uniform_(-0.5, 0.5)
    return model


def _ddp_steps(model: nn.Module, rank: int, device: torch.device) -> dict:
    """``STEPS`` SGD steps of ``model`` under DDP on this rank's shard: what the steps changed in each parameter,
    the final parameters and buffers, and the autograd nodes each step went through."""
    initial = {k: p.detach().clone() for k, p in model.named_parameters()}
    ddp = DistributedDataParallel(model, device_ids=[device] if device.type == 'cuda' else None)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(1000 + rank)
    nodes = []
    for step in range(STEPS):
        x = torch.randn(BATCH, 3, 32, 32, generator=generator, dtype=torch.float64).to(device)
        target = torch.randint(0, CLASSES, (BATCH,), generator=generator).to(device)
        torch.manual_seed(100 * rank + step)  # drop-path masks
        out = ddp(x)
        nodes.append(autograd_node_names(out))
        nn.functional.cross_entropy(out, target).backward()
        optimizer.step()
        optimizer.zero_grad()
    return dict(updates={k: p.detach().cpu() - initial[k].cpu() for k, p in model.named_parameters()},
                params={k: p.detach().cpu() for k, p in model.named_parameters()},
                buffers={k: b.cpu() for k, b in model.named_buffers()}, nodes=nodes)


def run_rank(rank: int, world_size: int, port: int, out: str, sync_bn: bool = False) -> None:
    torch.set_num_threads(1)
    device = torch.device('cuda', rank) if sync_bn else torch.device('cpu')
    if sync_bn:
        torch.cuda.set_device(device)  # NCCL's communicator on this rank's GPU
    dist.init_process_group('nccl' if sync_bn else 'gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        results = {}
        for name in MODELS:
            model = small_model(name)
            if sync_bn:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = model.to(device)
            ref_model = copy.deepcopy(model)
            with reference_mode(ref_model):
                reference = _ddp_steps(ref_model, rank, device)
            results[name] = dict(units=_ddp_steps(model, rank, device), reference=reference)
        torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_ranks(tmp_path: Path, *options: str) -> list:
    """Both ranks as subprocesses of this file (``options``: the worker's, e.g. ``--sync-bn``); their results, or a
    failure with their output."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                   os.environ.get('PYTHONPATH')])))
    port, outs = _free_port(), [tmp_path / f'rank{rank}.pt' for rank in range(WORLD_SIZE)]
    processes = [subprocess.Popen([sys.executable, __file__, str(rank), str(WORLD_SIZE), str(port), str(out), *options],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for rank, out in enumerate(outs)]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        logs = [p.communicate(timeout=max(1., deadline - time.monotonic()))[0] for p in processes]
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
        raise AssertionError(f'the DDP ranks did not finish within {RUN_TIMEOUT_S} s')
    for rank, (p, log) in enumerate(zip(processes, logs)):
        assert p.returncode == 0, f'rank {rank} exited with {p.returncode}:\n{log[-4000:]}'
    return [torch.load(out) for out in outs]


def assert_ranks_equal_reference(ranks: list, aside: tuple = ()) -> None:
    """Each rank's updates and buffers equal its reference run's, and the ranks end with the same parameters; the
    units ran in every step of every model but those in ``aside`` (where they must step aside)."""
    for name, (_, unit_node) in MODELS.items():
        for rank, results in enumerate(ranks):
            got, want = results[name]['units'], results[name]['reference']
            ran = [unit_node in nodes for nodes in got['nodes']]
            assert not any(ran) if name in aside else all(ran), f'{name}, rank {rank}: units ran in steps {ran}'
            assert not any(unit_node in nodes for nodes in want['nodes'])
            for kind in ('updates', 'buffers'):  # the updates: a difference in the steps is not lost in the weights
                for key, value in got[kind].items():
                    # absolute slack for updates that are zero up to rounding (~1e-17: the biases of convolutions
                    # that a training BatchNorm follows, in CeiT's LeFF)
                    assert torch.equal(value, want[kind][key]) or rel_error(value, want[kind][key]) <= FP64_TOL \
                        or float((value - want[kind][key]).abs().max()) <= 1e-12, f'{name}, rank {rank}: {key}'
        # DDP averaged the gradients of both shards: the ranks took the same steps. Running statistics stay each
        # rank's own (DDP broadcasts rank 0's at the start of a forward; the last step's update is local).
        params = [results[name]['units']['params'] for results in ranks]
        for key, value in params[0].items():
            assert torch.equal(value, params[1][key]), f'{name}: {key} differs between the ranks'


def test_ddp_training_equals_reference(tmp_path):
    assert_ranks_equal_reference(run_ranks(tmp_path))


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    for arg, kind in (('rank', int), ('world_size', int), ('port', int), ('out', str)):
        parser.add_argument(arg, type=kind)
    parser.add_argument('--sync-bn', action='store_true')
    run_rank(**vars(parser.parse_args()))
