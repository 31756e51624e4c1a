"""The training units on a CUDA device equal the plain modules (``reference_mode``): the CNN MRLA-light, DeiT's and
CeiT's token MRLA-light and MRLA-base, each in a small model, one training step in fp32, fp16 autocast with
GradScaler, bf16 autocast, channels_last and torch.compile: outputs, every gradient, BatchNorm running statistics,
seeded drop-path.

Every mode is measured against the same model in float64 through the reference form (the truth): the units may be
off it by at most the plain modules' error in the same mode plus the mode's tolerance (relative errors; in fp16 and
bf16 the gradients as one vector: single small ones, e.g. BatchNorm weights', are sums with heavy cancellation that
either path gets tens of percent wrong at this batch size).
Skipped without CUDA; ``MRLA_TEST_DEVICE=cpu`` runs it on the CPU (``benchmarks/gpu_check.sh --dry-run``).
"""
import contextlib
import copy
import os

import pytest
import torch
import torch.nn as nn

import timm_mrla  # noqa: F401
from timm_mrla.layers import reference_mode
from test_base_training_path import autograd_node_names
from test_ddp import MODELS, assert_ranks_equal_reference, run_ranks, small_model
from test_training_path import rel_error

DEVICE = torch.device(os.environ.get('MRLA_TEST_DEVICE', 'cuda'))
pytestmark = pytest.mark.skipif(DEVICE.type == 'cuda' and not torch.cuda.is_available(), reason='no CUDA device')

AUTOCAST = {'fp16': torch.float16, 'bf16': torch.bfloat16}
# the mode's tolerance for outputs and running statistics, for gradients (in fp32 the gradients of a few small
# tensors, e.g. BatchNorm weights, are sums with cancellation, some 1e-5 off the truth through either path)
TOLERANCE = {'fp32': (1e-5, 1e-4), 'channels_last': (1e-5, 1e-4), 'compile': (1e-5, 1e-4), 'fp16': (1e-2, 5e-2),
             'bf16': (2e-2, 5e-2)}


@pytest.fixture(autouse=True)
def full_fp32_precision():
    """No TF32 in convolutions and matmuls: fp32 means fp32."""
    if DEVICE.type != 'cuda':
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _step(model: nn.Module, mode: str, dtype=torch.float32):
    """One training step (forward, backward; the update through GradScaler in fp16): the output, every gradient
    (unscaled), the floating-point buffers, and the autograd nodes the output came through."""
    memory_format = torch.channels_last if mode == 'channels_last' else torch.contiguous_format
    model = model.to(dtype=dtype, memory_format=memory_format)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, 32, 32, generator=generator, dtype=torch.float64)
    x = x.to(DEVICE, dtype).contiguous(memory_format=memory_format)
    weights = torch.randn(8, 5, generator=generator, dtype=torch.float64).to(DEVICE)
    forward = torch.compile(model) if mode == 'compile' else model
    autocast = torch.autocast(DEVICE.type, dtype=AUTOCAST[mode]) if mode in AUTOCAST else contextlib.nullcontext()
    # a scale that does not overflow at the first step (GradScaler's default 2 ** 16 would, and skip it)
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2. ** 7, enabled=mode == 'fp16')
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(7)  # drop-path masks
    with autocast:
        out = forward(x)
    scaler.scale((out.double() * weights).sum()).backward()
    scaler.unscale_(optimizer)
    grads = [p.grad.double() for p in model.parameters()]
    assert all(g.isfinite().all() for g in grads)
    scaler.step(optimizer)
    scaler.update()
    buffers = [b.double() for b in model.buffers() if b.dtype.is_floating_point]
    return [out.detach().double(), *buffers], grads, autograd_node_names(out)


@pytest.mark.parametrize('mode', ['fp32', 'fp16', 'bf16', 'channels_last', 'compile'])
@pytest.mark.parametrize('name', list(MODELS))
def test_units_equal_plain_modules(name, mode):
    # under compile, Inductor's own RNG would draw other drop-path masks than eager
    with torch._inductor.config.patch(fallback_random=mode == 'compile'):
        _assert_units_equal_plain_modules(name, mode)


def _assert_units_equal_plain_modules(name, mode):
    model = small_model(name).float().to(DEVICE)  # drawn in float32, so exactly the float32 model
    plain, truth = copy.deepcopy(model), copy.deepcopy(model)
    got, got_grads, nodes = _step(model, mode)
    with reference_mode(plain):
        want, want_grads, plain_nodes = _step(plain, mode)
    with reference_mode(truth):
        true, true_grads, _ = _step(truth, 'fp32', torch.float64)
    unit_node = MODELS[name][1]
    # the units run in fp32 and in the autocast dtype where their maps are in it (not DeiT's and CeiT's: their
    # LayerNorms give float32 grids); under torch.compile the compiled graph stands in for them
    if mode in ('fp32', 'channels_last') or (mode in AUTOCAST and not name.startswith(('deit', 'ceit'))):
        assert unit_node in nodes, f'the unit did not run in {mode}'
    assert unit_node not in plain_nodes
    value_tol, grad_tol = TOLERANCE[mode]
    if mode in AUTOCAST:
        got_grads, want_grads, true_grads = ([torch.cat([g.flatten() for g in grads])]
                                             for grads in (got_grads, want_grads, true_grads))
    for kind, tensors, plain_tensors, true_tensors, tol in (('output/buffer', got, want, true, value_tol),
                                                             ('gradient', got_grads, want_grads, true_grads, grad_tol)):
        scale = max(float(t.abs().max()) for t in true_tensors)
        for i, (a, b, t) in enumerate(zip(tensors, plain_tensors, true_tensors)):
            if torch.equal(a, t):
                continue
            if float(t.abs().max()) <= 1e-12 * scale:
                # zero up to rounding (the biases of convolutions that a training BatchNorm follows, CeiT's LeFF):
                # both paths give rounding noise, which the units may not make much larger
                noise, plain_noise = float(a.abs().max()), float(b.abs().max())
                assert noise <= max(2 * plain_noise, tol * scale), \
                    f'{kind} {i}: units {noise:.1e}, plain modules {plain_noise:.1e} where the truth is 0'
                continue
            assert rel_error(a, t) <= rel_error(b, t) + tol, \
                f'{kind} {i}: units {rel_error(a, t):.1e}, plain modules {rel_error(b, t):.1e} off the float64 truth'


@pytest.mark.skipif(DEVICE.type != 'cuda' or torch.cuda.device_count() < 2,
                    reason=f'DDP with SyncBatchNorm needs one GPU per rank (NCCL refuses two ranks on one device); '
                           f'{torch.cuda.device_count()} here')
def test_ddp_sync_batchnorm(tmp_path):
    """Two ranks, each on its own GPU, NCCL, SyncBatchNorm: the CNN units and CeiT's (its value's BatchNorm) step
    aside (SyncBatchNorm's statistics span the ranks), DeiT's token unit (LayerNorms) runs, the ranks take the same
    steps, and each rank's training equals the same run through the reference form."""
    assert_ranks_equal_reference(run_ranks(tmp_path, '--sync-bn'),
                                 aside=('resnet18_mrla', 'resnet50_mrla_base', 'ceit_tiny_mrla'))
