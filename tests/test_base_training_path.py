"""The training path of the MRLA-base branch (``timm_mrla.layers.base_train``) equals the plain modules and the
literal reference form: outputs, every gradient, BatchNorm running statistics, drop-path, a second backward pass,
and under gradient checkpointing, torch.compile, FX, TorchScript and bf16 autocast; and a stage keeps no feature
map of its own beyond each block's output."""
import contextlib
import copy

import pytest
import timm
import torch
import torch.nn as nn

import timm_mrla  # noqa: F401
from timm_mrla.layers import reference_mode
from timm_mrla.models.resnet import MRLABaseStage
from test_fast_paths import _saved_bytes
from test_training_path import rel_error

FP32_TOL = 1e-5
FP64_TOL = 1e-8  # float64 rounding, amplified in a second step by BatchNorms that see 4 values per channel


def _model(dtype=torch.float64, drop=0.3, seed=0, **kwargs):
    """A small resnet50_mrla_base (stages of 1, 3, 1, 2 blocks) with non-trivial BatchNorm affines."""
    torch.manual_seed(seed)
    model = timm.create_model('resnet50_mrla_base', num_classes=5, drop_path_rate=drop, layers=(1, 3, 1, 2),
                              **kwargs).to(dtype).train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)  # timm zero-inits bn3, which would hide the residual branches
                m.bias.uniform_(-0.5, 0.5)
    return model


def autograd_node_names(out: torch.Tensor) -> set:
    """The type names of every autograd node behind ``out``."""
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    return {type(fn).__name__ for fn in seen}


def _uses_training_path(out: torch.Tensor) -> bool:
    return '_BaseBranchBackward' in autograd_node_names(out)


def _steps(model, steps=2, dtype=torch.float64, fn=None, memory_format=torch.contiguous_format):
    """Outputs and every parameter's gradient over ``steps`` SGD steps, and whether the training path ran."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(11)
    results, used = [], []
    for step in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=generator, dtype=torch.float64)
        x = x.to(dtype).contiguous(memory_format=memory_format)
        weights = torch.randn(4, 5, generator=generator, dtype=torch.float64).to(dtype)
        torch.manual_seed(7 + step)  # drop-path masks
        out = (model if fn is None else fn)(x)
        used.append(_uses_training_path(out))
        (out * weights).sum().backward()
        results.append([out.detach(), *[p.grad.clone() for p in model.parameters()]])
        optimizer.step()
        optimizer.zero_grad()
    return results, used


def _assert_close(got, want, tol):
    for step_got, step_want in zip(got, want):
        for a, b in zip(step_got, step_want):
            assert torch.equal(a, b) or rel_error(a, b) <= tol


def _assert_same_buffers(model, ref_model, tol=FP64_TOL):
    for (name, a), (_, b) in zip(model.named_buffers(), ref_model.named_buffers()):
        if a.dtype.is_floating_point:
            assert rel_error(a, b) <= tol, name
        else:
            assert torch.equal(a, b), name


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_training_path_equals_reference(memory_format):
    """float64, drop-path on, two SGD steps: outputs, gradients and running statistics of the reference form."""
    model, ref_model = _model(), _model()
    got, used = _steps(model, memory_format=memory_format)
    with reference_mode(ref_model):
        want, ref_used = _steps(ref_model, memory_format=memory_format)
    assert all(used) and not any(ref_used)
    _assert_close(got, want, FP64_TOL)
    _assert_same_buffers(model, ref_model)


@pytest.mark.parametrize('momentum, affine, track', [(0.1, True, True), (None, True, True), (0.1, False, True),
                                                      (0.1, True, False)])
def test_fp32_stage_equals_float64_reference(momentum, affine, track):
    """A stage of three blocks in fp32 against its float64 reference form, over three training steps: output,
    the gradients of the input and every parameter, running statistics, for every BatchNorm configuration
    nn.BatchNorm2d has. Each is within 1e-5, or (the 5-tap query/key kernels' gradients, sums with heavy
    cancellation) no further off than the fp32 reference form itself."""
    stage = _model(torch.float32).layer2
    for block in stage:
        block.bn_mrla = nn.BatchNorm2d(block.bn_mrla.num_features, momentum=momentum, affine=affine,
                                       track_running_stats=track)
    plain_stage, ref_stage = copy.deepcopy(stage), copy.deepcopy(stage).double()
    generator = torch.Generator().manual_seed(3)
    for step in range(3):
        x = torch.randn(4, 256, 12, 12, generator=generator, dtype=torch.float64)
        weights = torch.randn(4, 512, 6, 6, generator=generator, dtype=torch.float64)
        results = []
        for module in (stage, plain_stage, ref_stage):
            dtype = next(module.parameters()).dtype
            inputs = x.to(dtype).requires_grad_()
            torch.manual_seed(step)
            with contextlib.nullcontext() if module is stage else reference_mode(module):
                out = module(inputs)
            assert _uses_training_path(out) == (module is stage)
            results.append([out, *torch.autograd.grad((out * weights.to(dtype)).sum(), [inputs, *module.parameters()])])
        for got, plain, want in zip(*results):
            if not torch.equal(got, want):
                assert rel_error(got, want) <= max(FP32_TOL, 2 * rel_error(plain, want))
    _assert_same_buffers(stage, ref_stage, FP32_TOL)


def test_second_backward_recomputes_the_values():
    """With retain_graph, a second backward pass finds the recomputed values gone and recomputes them again."""
    model = _model()
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    out = model(x)
    assert _uses_training_path(out)
    first = torch.autograd.grad(out.square().sum(), list(model.parameters()), retain_graph=True)
    second = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_stage_keeps_only_the_block_outputs():
    """Beyond what the plain bottlenecks save, a stage of n blocks keeps n - 1 maps (the outputs the next blocks
    keep) and its parameters; autograd through the plain modules keeps about three maps more per block (the
    value, the weighted sum and the ReLU output)."""
    stage = _model(torch.float32, drop=0.).layer2
    x = torch.randn(2, stage[0].conv1.in_channels, 32, 32)
    map_bytes = 2 * stage[0].bn3.num_features * 16 * 16 * 4
    branch_parameter_bytes = sum(p.numel() * 4 for block in stage for m in (block.mrla, block.bn_mrla)
                                 for p in m.parameters())

    def residuals_only():
        out = x
        for block in stage:
            out = block.residual(out)[0]
        return out

    def stage_forward():
        return stage(x)

    bottlenecks = _saved_bytes(residuals_only) + branch_parameter_bytes
    fast = _saved_bytes(stage_forward) - bottlenecks
    with reference_mode(stage):
        literal = _saved_bytes(stage_forward) - bottlenecks
    outputs = (len(stage) - 1) * map_bytes
    assert outputs <= fast <= outputs + 0.05 * len(stage) * map_bytes  # + per-channel vectors and the attention
    assert literal >= outputs + 2.5 * len(stage) * map_bytes


def test_observed_layers_take_the_plain_modules():
    """A hook on a layer of a stage (as ``LayerAttentionRecorder`` adds) sends the whole stage the plain way."""
    model = _model()
    calls = []
    handle = model.layer2[1].mrla.register_forward_pre_hook(lambda m, args: calls.append(1))
    out = model(torch.randn(2, 3, 48, 48, dtype=torch.float64))
    handle.remove()
    assert calls == [1]
    assert _uses_training_path(out)  # the other stages still take the training path
    stage_out = model.layer2(torch.randn(2, 256, 12, 12, dtype=torch.float64))
    assert _uses_training_path(stage_out)
    handle = model.layer2[0].bn_mrla.register_forward_hook(lambda *args: None)
    assert not _uses_training_path(model.layer2(torch.randn(2, 256, 12, 12, dtype=torch.float64)))
    handle.remove()


def test_gradient_checkpointing_takes_the_plain_modules():
    """Checkpointed blocks keep only their inputs anyway; they run the plain modules (which update the running
    statistics again when recomputed, as nn.BatchNorm2d does) and match the training path."""
    model, ref_model = _model(), _model()
    model.set_grad_checkpointing(True)
    got, used = _steps(model)
    want, _ = _steps(ref_model)
    assert not any(used)
    _assert_close(got, want, FP64_TOL)


def test_fx_traced_training_model_equals_eager():
    """FX records the plain modules (the training path's cache lives only in eager forward passes), and dead-code
    elimination, which timm's feature extraction runs, keeps every term of the weighted sum. (Without drop-path:
    timm's own DropPath scales its mask in place, which dead-code elimination drops.)"""
    model, traced_source = _model(drop=0.), _model(drop=0.)
    traced = torch.fx.symbolic_trace(traced_source)
    traced.graph.eliminate_dead_code()
    traced.recompile()
    got, used = _steps(traced_source, fn=traced)
    want, _ = _steps(model)
    assert not any(used)
    _assert_close(got, want, FP64_TOL)
    _assert_same_buffers(traced_source, model)


def test_torchscript_training_model_equals_eager():
    model = _model()
    scripted = torch.jit.script(copy.deepcopy(model))
    got, _ = _steps(scripted)
    want, used = _steps(model)
    assert all(used)
    _assert_close(got, want, FP64_TOL)
    _assert_same_buffers(scripted, model)


def test_torch_compile_of_a_training_model():
    model, compiled_source = _model(drop=0.), _model(drop=0.)
    compiled = torch.compile(compiled_source, backend='aot_eager')
    got, _ = _steps(compiled_source, fn=compiled)
    want, used = _steps(model)
    assert all(used)
    _assert_close(got, want, FP64_TOL)
    _assert_same_buffers(compiled_source, model)


def test_bf16_autocast_within_bf16_tolerance():
    """Under CPU bf16 autocast a stage's maps are bf16 and the training path runs in bf16, as the plain modules do:
    against the float32 reference form it is about as far off as the plain modules under autocast are."""
    stages = [_model(torch.float32).layer2 for _ in range(3)]
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 256, 12, 12, generator=generator)
    weights = torch.randn(4, 512, 6, 6, generator=generator)
    results = []
    for i, stage in enumerate(stages):  # the training path, the plain modules, the float32 reference form
        inputs = (x if i == 2 else x.bfloat16()).requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=i < 2), \
                contextlib.nullcontext() if i == 0 else reference_mode(stage):
            torch.manual_seed(0)
            out = stage(inputs)
        assert _uses_training_path(out) == (i == 0) and out.dtype == (torch.float32 if i == 2 else torch.bfloat16)
        grads = torch.autograd.grad((out.float() * weights).sum(), [inputs, *stage.parameters()])
        results.append([t.float() for t in (out, *grads, stage[2].bn_mrla.running_mean)])
    for got, plain, want in zip(*results):
        if not torch.equal(want, torch.zeros_like(want)):
            if got.numel() > 16:
                assert rel_error(got, want) <= max(2e-2, 1.25 * rel_error(plain, want))
            else:  # the 5-tap query/key kernels' gradients: sums with heavy cancellation, ~0.1 off in either
                assert rel_error(got, want) <= 0.25


@pytest.mark.parametrize('name', ['resnet50_mrla_base', 'resnet50_mrla', 'deit_tiny_mrla'])
def test_meta_device_training_forward(name):
    """On the meta device (no autocast there; timm's default-cfg test runs models so) the training forward works."""
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=5).train()
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 5) and out.device.type == 'meta'
