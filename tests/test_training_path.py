"""The training path of the MRLA-light branch (``timm_mrla.layers.light_train``) equals the plain modules and the
literal reference form: outputs, every gradient, BatchNorm running statistics, drop-path, and under gradient
checkpointing, torch.compile, FX, TorchScript and bf16 autocast; and it keeps only ``x`` and ``prev``, compiled
too."""
import copy
from typing import Callable, List

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d, DropPath
from timm.models._efficientnet_builder import decode_arch_def
from torch.utils._python_dispatch import TorchDispatchMode

import timm_mrla  # noqa: F401
from timm_mrla.layers import MRLALight, add_mrla_light, mrla_light_reference, reference_mode
from timm_mrla.layers.light_train import light_branch_applies
from timm_mrla.models.efficientnet import MRLAEfficientNet
from timm_mrla.models.resnet import MRLABasicBlock
from test_fast_paths import _saved_bytes

FP32_TOL = 1e-5


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm((a - b).double()) / torch.linalg.vector_norm(b.double()))


def _branch(channels=64, momentum=0.1, affine=True, track=True, drop=0., norm_cls=nn.BatchNorm2d, seed=0):
    torch.manual_seed(seed)
    layer = MRLALight(channels, head_dim=16)
    norm = norm_cls(channels, momentum=momentum, affine=affine, track_running_stats=track)
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return layer, norm, DropPath(drop) if drop else nn.Identity()


def _inputs(step, shape=(4, 64, 7, 9), memory_format=torch.contiguous_format):
    generator = torch.Generator().manual_seed(100 + step)
    x = torch.randn(shape, generator=generator).relu().contiguous(memory_format=memory_format).requires_grad_()
    prev = torch.randn(shape, generator=generator).contiguous(memory_format=memory_format).requires_grad_()
    return x, prev, torch.randn(shape, generator=generator)


def _steps(branch, fn, steps=3, **input_kwargs):
    """Outputs and gradients (x, prev, every parameter) of ``steps`` training steps of one branch."""
    layer, norm, drop_path = branch
    results = []
    for step in range(steps):
        x, prev, weights = _inputs(step, **input_kwargs)
        torch.manual_seed(7 + step)  # drop-path masks
        out = fn(x, prev, layer, norm, drop_path)
        tensors = [x, prev, *layer.parameters(), *norm.parameters()]
        results.append([out, *torch.autograd.grad((out * weights).sum(), tensors)])
    return results


def _reference(x, prev, layer, norm, drop_path):
    return x + drop_path(norm(mrla_light_reference(layer, x, prev)))


def _assert_steps_close(results, expected, tol):
    for step, (got, want) in enumerate(zip(results, expected)):
        for i, (a, b) in enumerate(zip(got, want)):
            assert rel_error(a, b) <= tol, f'step {step}, tensor {i}: relative error {rel_error(a, b):.1e}'


def _assert_same_statistics(norm, ref_norm):
    for name in ('running_mean', 'running_var'):
        a, b = getattr(norm, name), getattr(ref_norm, name)
        if b is None:
            assert a is None
        else:
            assert rel_error(a, b) <= FP32_TOL, name
    if ref_norm.num_batches_tracked is not None:
        assert int(norm.num_batches_tracked) == int(ref_norm.num_batches_tracked)


@pytest.mark.parametrize('config', [
    dict(),
    dict(momentum=None),  # cumulative moving average
    dict(affine=False),
    dict(track=False),
    dict(drop=0.4),
    dict(norm_cls=lambda c, **kw: BatchNormAct2d(c, apply_act=False, **kw)),
])
@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_training_path_equals_reference(config, memory_format):
    """fp32, several steps: outputs, gradients of x, prev and every parameter, and the running statistics."""
    branch, ref_branch = _branch(**config), _branch(**config)
    x, prev, _ = _inputs(0, memory_format=memory_format)
    assert light_branch_applies(x, prev, *branch)
    results = _steps(branch, add_mrla_light, memory_format=memory_format)
    expected = _steps(ref_branch, _reference, memory_format=memory_format)
    _assert_steps_close(results, expected, FP32_TOL)
    _assert_same_statistics(branch[1], ref_branch[1])
    assert results[0][0].is_contiguous(memory_format=memory_format)


def test_drop_path_drops_samples_as_timm_does():
    """With a high rate some samples of the batch lose the branch (and its gradient) exactly as timm's DropPath."""
    branch, ref_branch = _branch(drop=0.7), _branch(drop=0.7)
    (out, grad_x, *_), = _steps(branch, add_mrla_light, steps=1, shape=(16, 64, 5, 5))
    (ref_out, *_), = _steps(ref_branch, _reference, steps=1, shape=(16, 64, 5, 5))
    x, _, _ = _inputs(0, shape=(16, 64, 5, 5))
    dropped = [b for b in range(16) if torch.equal(ref_out[b], x[b])]
    assert 0 < len(dropped) < 16
    assert all(torch.equal(out[b], x[b]) for b in dropped)
    assert rel_error(out, ref_out) <= FP32_TOL


def test_training_path_keeps_only_x_and_prev():
    layer, norm, drop_path = _branch(drop=0.2)
    x, prev, _ = _inputs(0, shape=(4, 64, 16, 16))
    maps = x.numel() * x.element_size()
    fast = _saved_bytes(lambda: add_mrla_light(x, prev, layer, norm, drop_path))
    plain = _saved_bytes(lambda: x + drop_path(norm(layer(x, prev))))
    assert 2 * maps <= fast < 2 * maps + 64 * 1024  # x, prev and per-channel vectors
    assert plain >= 4 * maps


@pytest.mark.parametrize('make_norm, why', [
    (lambda c: nn.GroupNorm(4, c), 'not a BatchNorm'),
    (lambda c: BatchNormAct2d(c, act_layer=nn.ReLU), 'an activation inside the norm'),
    (lambda c: nn.BatchNorm2d(c).eval(), 'running statistics in a training model'),
])
def test_other_norms_take_the_plain_modules(make_norm, why):
    layer, norm = MRLALight(32, head_dim=8), make_norm(32)
    x, prev = torch.randn(2, 32, 5, 5), torch.randn(2, 32, 5, 5)
    assert not light_branch_applies(x, prev, layer, norm, nn.Identity()), why
    out = add_mrla_light(x, prev, layer, norm, nn.Identity())
    torch.testing.assert_close(out, x + norm(mrla_light_reference(layer, x, prev)))


def test_observed_modules_take_the_plain_modules():
    """A forward hook on the layer still fires, and ``reference_mode`` still computes the literal form."""
    layer, norm, drop_path = _branch()
    x, prev, _ = _inputs(0)
    calls = []
    handle = layer.register_forward_hook(lambda *args: calls.append(1))
    assert not light_branch_applies(x, prev, layer, norm, drop_path)
    add_mrla_light(x, prev, layer, norm, drop_path)
    handle.remove()
    assert calls == [1]
    with reference_mode(layer):
        assert not light_branch_applies(x, prev, layer, norm, drop_path)


def test_bf16_autocast_within_bf16_tolerance():
    """Under CPU bf16 autocast the path runs in bf16, as the plain modules do, and stays within bf16 rounding of
    the float32 reference form."""
    branch, ref_branch = _branch(drop=0.2), _branch(drop=0.2)
    x, prev, weights = _inputs(0)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        xb, pb = x.detach().bfloat16().requires_grad_(), prev.detach().bfloat16().requires_grad_()
        assert light_branch_applies(xb, pb, *branch)
        torch.manual_seed(7)
        out = add_mrla_light(xb, pb, *branch)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad((out.float() * weights).sum(), [xb, pb, *branch[0].parameters()])
    torch.manual_seed(7)
    ref = _reference(x, prev, *ref_branch)
    ref_grads = torch.autograd.grad((ref * weights).sum(), [x, prev, *ref_branch[0].parameters()])
    assert rel_error(out.float(), ref) <= 2e-2
    for g, g_ref in zip(grads, ref_grads):
        assert rel_error(g.float(), g_ref) <= 5e-2
    assert rel_error(branch[1].running_mean, ref_branch[1].running_mean) <= 2e-2



class _BatchNormBackwardDtypes(TorchDispatchMode):
    """Records the dtypes of ``grad_output`` and ``input`` of each BatchNorm backward dispatched."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.native_batch_norm_backward.default:
            self.seen.append((args[0].dtype, args[1].dtype))
        return func(*args, **(kwargs or {}))


def test_float32_gate_under_autocast_recomputes_in_the_maps_dtype():
    """Under CUDA fp16 autocast the gate reaches the branch in float32 (autocast runs its head sums in float32)
    while the maps are fp16: backward recomputes the pre-norm sum in the maps' dtype, as forward's in-place product
    kept it, and BatchNorm's backward gets one dtype (CUDA refuses two). Emulated on the CPU in bf16."""
    branch, ref_branch = _branch(), _branch()
    layer = branch[0]
    gate = layer.gate
    layer.gate = lambda x: gate(x).float()
    x, prev, weights = _inputs(0)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        xb, pb = x.detach().bfloat16().requires_grad_(), prev.detach().bfloat16().requires_grad_()
        assert light_branch_applies(xb, pb, *branch)
        out = add_mrla_light(xb, pb, *branch)
    dtypes = _BatchNormBackwardDtypes()
    with dtypes:
        grads = torch.autograd.grad((out.float() * weights).sum(), [xb, pb, *layer.parameters()])
    assert dtypes.seen == [(torch.bfloat16, torch.bfloat16)]
    ref = _reference(x, prev, *ref_branch)
    ref_grads = torch.autograd.grad((ref * weights).sum(), [x, prev, *ref_branch[0].parameters()])
    for g, g_ref in zip(grads, ref_grads):
        assert rel_error(g.float(), g_ref) <= 5e-2

def _block(seed=0):
    torch.manual_seed(seed)
    block = MRLABasicBlock(32, 32, mrla_head_dim=8, mrla_drop_path=0.3).double().train()
    with torch.no_grad():
        block.bn2.weight.uniform_(0.5, 1.5)  # timm zero-inits it, which would hide the residual branch
    return block


def _block_step(block, x, weights, fn=None):
    torch.manual_seed(3)
    out = (block if fn is None else fn)(x)
    grads = torch.autograd.grad((out * weights).sum(), [x, *block.parameters()])
    return [out, *grads]


def _block_case():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(4, 32, 8, 8, generator=generator, dtype=torch.float64).requires_grad_()
    return x, torch.randn(4, 32, 8, 8, generator=generator, dtype=torch.float64)


def _assert_blocks_equal(block, ref_block, got, want, tol=1e-10):
    for a, b in zip(got, want):
        assert rel_error(a, b) <= tol
    _assert_same_statistics(block.bn_mrla, ref_block.bn_mrla)


def test_gradient_checkpointing():
    """Checkpointed (the branch recomputed in backward, statistics updated again as nn.BatchNorm2d's are) equals
    the checkpointed reference form."""
    from torch.utils.checkpoint import checkpoint
    block, ref_block = _block(), _block()
    x, weights = _block_case()
    got = _block_step(block, x, weights, lambda t: checkpoint(block, t, use_reentrant=False))
    with reference_mode(ref_block):
        want = _block_step(ref_block, x, weights, lambda t: checkpoint(ref_block, t, use_reentrant=False))
    _assert_blocks_equal(block, ref_block, got, want)


def test_fx_traced_block_runs_the_training_path():
    block, ref_block = _block(), _block()
    traced = torch.fx.symbolic_trace(block)
    assert any(node.op == 'call_function' and node.target.__name__ == '_light_branch'
               for node in traced.graph.nodes)
    x, weights = _block_case()
    got = _block_step(block, x, weights, traced)
    with reference_mode(ref_block):
        want = _block_step(ref_block, x, weights)
    _assert_blocks_equal(block, ref_block, got, want)


def test_torchscript_block_equals_the_training_path():
    """Scripting writes the branch out plainly; it computes what the training path does."""
    block = _block()
    scripted, eager = torch.jit.script(copy.deepcopy(block)), block
    x, weights = _block_case()
    got = _block_step(eager, x, weights)
    want = _block_step(scripted, x, weights, scripted)
    for a, b in zip(got, want):
        assert rel_error(a, b) <= 1e-10
    _assert_same_statistics(eager.bn_mrla, scripted.bn_mrla)


def sgd_steps(model: nn.Module, x: torch.Tensor, steps: int = 2):
    """The outputs of ``steps`` SGD steps on a cross-entropy loss (targets 0, 1, ...), each seeded for drop-path."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.arange(x.shape[0])
    outs = []
    for step in range(steps):
        torch.manual_seed(step)
        out = model(x)
        nn.functional.cross_entropy(out, target).backward()
        optimizer.step()
        optimizer.zero_grad()
        outs.append(out.detach())
    return outs


def test_model_training_steps_equal_reference():
    """resnet18_mrla, float64, drop-path on: two SGD steps give the reference form's outputs, weights and
    running statistics."""
    torch.manual_seed(0)
    model = timm.create_model('resnet18_mrla', num_classes=5, drop_path_rate=0.3).double().train()
    ref_model = copy.deepcopy(model)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    outs = sgd_steps(model, x)
    with reference_mode(ref_model):
        ref_outs = sgd_steps(ref_model, x)
    for a, b in zip(outs, ref_outs):
        assert rel_error(a, b) <= 1e-10
    state, ref_state = model.state_dict(), ref_model.state_dict()
    for key in state:
        # absolute slack for parameters whose gradient is zero up to rounding (~1e-18)
        torch.testing.assert_close(state[key], ref_state[key], rtol=1e-10, atol=1e-12, msg=key)


def compiled_ops(fn: Callable, *args) -> List[str]:
    """The operators in Dynamo's graph of ``fn(*args)``, traced as one graph (no Inductor: cheap)."""
    ops = []

    def record(graph_module, example_inputs):
        ops.extend(str(node.target) for node in graph_module.graph.nodes if node.op == 'call_function')
        return graph_module.forward
    torch._dynamo.reset()
    torch.compile(fn, backend=record, fullgraph=True)(*args)
    return ops


def assert_compiled_training_equals_eager(model: nn.Module, x: torch.Tensor, op: str, tol: float = 1e-9):
    """``torch.compile(model, fullgraph=True)`` (Inductor) traces the unit as ``op`` and, trained for two
    seeded SGD steps, gives eager's outputs, weights and running statistics. Inductor draws its own random numbers
    unless told to fall back to eager's, so it is: then drop-path drops the same samples. Float64: in float32 two
    train-mode steps at a small batch amplify the rounding of Inductor's reordered sums past 1e-5."""
    assert op in compiled_ops(copy.deepcopy(model), x)
    compiled_model = copy.deepcopy(model)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        got = sgd_steps(torch.compile(compiled_model, fullgraph=True), x)
    want = sgd_steps(model, x)
    for a, b in zip(got, want):
        assert rel_error(a, b) <= tol
    state, compiled_state = model.state_dict(), compiled_model.state_dict()
    for key in state:
        # absolute slack for parameters whose gradient is zero up to rounding (~1e-18)
        torch.testing.assert_close(compiled_state[key], state[key], rtol=tol, atol=1e-12, msg=key)


def test_compiled_branch_is_checkpointed_and_keeps_only_x_and_prev():
    """Under torch.compile the branch is one checkpointed region that keeps what the unit keeps in eager mode (the
    partitioner Inductor uses, without Inductor's code generation); the plain modules compiled keep another map."""
    layer, norm, drop_path = _branch(drop=0.2)
    x, prev, _ = _inputs(0, shape=(4, 64, 16, 16))
    maps = x.numel() * x.element_size()

    def branch(x, prev):
        return add_mrla_light(x, prev, layer, norm, drop_path)

    def plain(x, prev):
        return x + drop_path(norm(layer(x, prev)))
    assert 'tag_activation_checkpoint' in compiled_ops(branch, x, prev)
    saved = {}
    for name, fn in (('branch', branch), ('plain', plain)):
        torch._dynamo.reset()
        compiled = torch.compile(fn, backend='aot_eager_decomp_partition', fullgraph=True)
        saved[name] = _saved_bytes(lambda: compiled(x, prev))
    assert 2 * maps <= saved['branch'] < 2 * maps + 64 * 1024
    assert saved['plain'] >= 3 * maps


def test_compiled_branch_under_bf16_autocast():
    """Compiled (aot_eager: cheap) under CPU bf16 autocast, the checkpointed branch stays within bf16 rounding of
    the eager unit, and keeps the statistics in float32 as BatchNorm does."""
    branch, compiled_branch = _branch(drop=0.2), _branch(drop=0.2)
    x, prev, weights = _inputs(0)
    xb, pb = x.detach().bfloat16().requires_grad_(), prev.detach().bfloat16().requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(add_mrla_light, backend='aot_eager', fullgraph=True)
    results = []
    for fn, (layer, norm, drop_path) in ((add_mrla_light, branch), (compiled, compiled_branch)):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            torch.manual_seed(7)
            out = fn(xb, pb, layer, norm, drop_path)
        assert out.dtype == torch.bfloat16
        results.append([out, *torch.autograd.grad((out.float() * weights).sum(), [xb, pb, *layer.parameters()])])
    for got, want in zip(*results):
        assert rel_error(got.float(), want.float()) <= 2e-2
    assert compiled_branch[1].running_mean.dtype == torch.float32
    assert rel_error(compiled_branch[1].running_mean, branch[1].running_mean) <= 1e-2
    assert rel_error(compiled_branch[1].running_var, branch[1].running_var) <= 1e-2


def test_compiled_resnet_training_equals_eager():
    """A four-block resnet18_mrla (a projected shortcut in three), drop-path on."""
    torch.manual_seed(0)
    model = timm.create_model('resnet18_mrla', layers=(1, 1, 1, 1), num_classes=5, drop_path_rate=0.3)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    assert_compiled_training_equals_eager(model.double().train(), x, 'tag_activation_checkpoint')


def test_compiled_efficientnet_training_equals_eager():
    """A small MRLA EfficientNet: two stages of two inverted residuals with squeeze-excitation, drop-path on."""
    torch.manual_seed(0)
    arch = [['ds_r1_k3_s1_e1_c16'], ['ir_r2_k3_s2_e6_c24_se0.25'], ['ir_r2_k5_s2_e6_c40_se0.25']]
    model = MRLAEfficientNet(block_args=decode_arch_def(arch), stem_size=16, num_features=64, num_classes=5,
                             drop_path_rate=0.3)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    assert_compiled_training_equals_eager(model.double().train(), x, 'tag_activation_checkpoint')
