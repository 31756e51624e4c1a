"""The training path of DeiT's token MRLA-light (``timm_mrla.layers.light_train.token_light``) equals the plain
modules and the literal reference form: outputs and every gradient, with any number of prefix tokens, both GELU
forms, LayerNorms with and without affine, and under gradient checkpointing, FX, TorchScript, torch.compile and
bf16; it keeps no token map beyond the block's mid output ``x``, compiled too, and observed modules take the plain
modules."""
import copy
from contextlib import contextmanager
from typing import Iterator, List

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import LayerNorm
from timm.models.vision_transformer import Block
from torch.utils._python_dispatch import TorchDispatchMode

import timm_mrla  # noqa: F401
from timm_mrla.layers import reference_mode
from timm_mrla.layers.light_train import token_light_applies
from timm_mrla.models.deit import MRLALightBlock, _to_grid, _to_tokens
from test_fast_paths import _saved_bytes
from test_training_path import FP32_TOL, assert_compiled_training_equals_eager, rel_error, sgd_steps

DIM, GRID = 64, (5, 6)


@contextmanager
def counting(op) -> Iterator[List[int]]:
    """A list that grows by one each time the operator ``op`` runs in the block."""
    calls = []

    class CountCalls(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is op:
                calls.append(1)
            return func(*args, **(kwargs or {}))
    with CountCalls():
        yield calls


@pytest.fixture
def unit_calls():
    """How many times the op ``timm_mrla::token_light`` ran: proof that a test went through the unit."""
    with counting(torch.ops.timm_mrla.token_light.default) as calls:
        yield calls


def _block(norm_layer=LayerNorm, approximate='none', seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    block = MRLALightBlock(DIM, 4, norm_layer=norm_layer, drop_path=0.2).train()
    block.mrla.value_act = nn.GELU(approximate=approximate)
    with torch.no_grad():  # affine LayerNorms away from their identity init, so their gradients are tested
        for norm in (block.norm_mrla, block.norm_mrla_prev):
            if norm.weight is not None:
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)
    return block.to(dtype)


def _tokens(num_prefix, shape=(3, *GRID), dtype=torch.float32):
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(shape[0], num_prefix + shape[1] * shape[2], DIM, generator=generator)
    return x.to(dtype).requires_grad_(), torch.randn(x.shape, generator=generator)


def _plain(block, x, grid, num_prefix):
    """``MRLALightBlock.forward`` as it read before the training path: the layer called as a module."""
    prev = x
    x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    x_norm = block.norm_mrla(x)
    out = block.mrla(_to_grid(x_norm[:, num_prefix:], grid), _to_grid(block.norm_mrla_prev(prev[:, num_prefix:]), grid))
    return x + torch.cat([x_norm[:, :num_prefix], _to_tokens(out)], dim=1)


def _step(block, x, weights, fn):
    torch.manual_seed(3)  # drop-path masks
    out = fn(x)
    return [out, *torch.autograd.grad((out.float() * weights).sum(), [x, *block.parameters()])]


def _small_model():
    """Two blocks on a 4x4 grid; average pooling, so the last block's patch tokens (and its MRLA) reach the loss."""
    torch.manual_seed(0)
    return timm.create_model('deit_tiny_mrla', img_size=32, patch_size=8, depth=2, num_classes=5,
                             global_pool='avg', drop_path_rate=0.3).train()


def _assert_close(got, want, tol=FP32_TOL):
    for i, (a, b) in enumerate(zip(got, want)):
        assert rel_error(a.detach().float(), b.float()) <= tol, f'tensor {i}: relative error {rel_error(a, b):.1e}'


def _mid_grids(block, x, num_prefix):
    """The grids ``token_light`` receives in ``block(x)``."""
    mid = x + block.attn(block.norm1(x))
    mid = mid + block.mlp(block.norm2(mid))
    return (_to_grid(block.norm_mrla(mid)[:, num_prefix:], GRID),
            _to_grid(block.norm_mrla_prev(x[:, num_prefix:]), GRID))


@pytest.mark.parametrize('num_prefix', [0, 1, 2])
@pytest.mark.parametrize('approximate', ['none', 'tanh'])
@pytest.mark.parametrize('norm_layer', [LayerNorm, nn.LayerNorm, lambda dim, **kw: LayerNorm(dim, affine=False)])
def test_block_equals_plain_and_reference(num_prefix, approximate, norm_layer, unit_calls):
    """fp32: output, gradients of the input and every parameter, against the plain modules and the literal form."""
    block, ref_block = _block(norm_layer, approximate), _block(norm_layer, approximate)
    x, weights = _tokens(num_prefix)
    assert token_light_applies(*_mid_grids(block, x, num_prefix), block.mrla, block.norm_mrla, block.norm_mrla_prev)
    got = _step(block, x, weights, lambda t: block(t, GRID, num_prefix))
    assert unit_calls == [1]
    plain = _step(block, x, weights, lambda t: _plain(block, t, GRID, num_prefix))
    with reference_mode(ref_block):
        reference = _step(ref_block, x, weights, lambda t: ref_block(t, GRID, num_prefix))
    assert torch.equal(got[0], plain[0])  # the unit's forward is the plain arithmetic
    _assert_close(got, plain)
    _assert_close(got, reference)


def test_model_training_steps_equal_reference(unit_calls):
    """A small deit_tiny_mrla with drop-path, two SGD steps: the reference form's outputs and weights."""
    model = _small_model()
    ref_model = copy.deepcopy(model)
    x = torch.randn(4, 3, 32, 32)
    outs = sgd_steps(model, x)
    assert len(unit_calls) == 4  # two blocks, two steps
    with reference_mode(ref_model):
        ref_outs = sgd_steps(ref_model, x)
    _assert_close(outs, ref_outs)
    ref_state = ref_model.state_dict()
    _assert_close(model.state_dict().values(), [ref_state[k] for k in model.state_dict()])


def test_keeps_no_token_map_beyond_x():
    """Beyond timm's block the MRLA part keeps the mid output x (its LayerNorm's input) and per-token and
    per-channel vectors; the plain modules keep four more maps."""
    block = _block()
    x, _ = _tokens(1, shape=(4, 16, 16))
    maps = x.numel() * x.element_size()
    base = _saved_bytes(lambda: Block.forward(block, x))
    fast = _saved_bytes(lambda: block(x, (16, 16), 1))
    plain = _saved_bytes(lambda: _plain(block, x, (16, 16), 1))
    assert maps <= fast - base < maps + 64 * 1024
    assert plain - fast >= 3.9 * maps


def test_gradient_checkpointing(unit_calls):
    """Checkpointed blocks (recomputed in backward, the unit then run again) give the reference form's gradients."""
    model = _small_model()
    ref_model = copy.deepcopy(model)
    model.set_grad_checkpointing()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    weights = torch.randn(2, 5)
    got = _step(model, x, weights, model)
    assert len(unit_calls) == 4  # two blocks, each run again in backward
    with reference_mode(ref_model):
        want = _step(ref_model, x, weights, ref_model)
    _assert_close(got, want)


def test_fx_traced_block_runs_the_training_path(unit_calls):
    block, ref_block = _block(), _block()
    traced = torch.fx.symbolic_trace(block, concrete_args={'grid': GRID, 'num_prefix_tokens': 1})
    assert any(node.op == 'call_function' and node.target.__name__ == '_token_light' for node in traced.graph.nodes)
    x, weights = _tokens(1)
    got = _step(block, x, weights, lambda t: traced(t, GRID, 1))
    assert unit_calls == [1]
    with reference_mode(ref_block):
        want = _step(ref_block, x, weights, lambda t: ref_block(t, GRID, 1))
    _assert_close(got, want)


def test_torchscript_block_equals_the_training_path():
    """Scripting writes the layer out plainly; it computes what the training path does."""
    block = _block()
    scripted = torch.jit.script(copy.deepcopy(block))
    x, weights = _tokens(1)
    _assert_close(_step(scripted, x, weights, lambda t: scripted(t, GRID, 1)),
                  _step(block, x, weights, lambda t: block(t, GRID, 1)))


def test_compiled_model_training_equals_eager():
    """torch.compile (Inductor, one graph) traces the unit as its op and trains as eager does."""
    model = _small_model().double()
    assert_compiled_training_equals_eager(model, torch.randn(4, 3, 32, 32, dtype=torch.float64),
                                          'timm_mrla.token_light.default')


def test_compiled_block_keeps_no_token_map_beyond_x():
    """Compiled (the partitioner Inductor uses, without Inductor's code generation), the MRLA part keeps what it
    keeps in eager mode; the plain modules compiled keep two more maps."""
    block = _block()
    x, _ = _tokens(1, shape=(4, 16, 16))
    assert_compiled_unit_keeps_x_alone(x, lambda t: Block.forward(block, t), lambda t: block(t, (16, 16), 1),
                                       lambda t: _plain(block, t, (16, 16), 1))


def assert_compiled_unit_keeps_x_alone(x: torch.Tensor, base, unit, plain) -> None:
    """Compiled with the partitioner Inductor uses (without Inductor's code generation), ``unit(x)`` keeps one token
    map beyond ``base(x)`` (its LayerNorm's input ``x``) and vectors; ``plain(x)`` at least two maps more."""
    maps = x.numel() * x.element_size()
    saved = {}
    for name, fn in (('base', base), ('unit', unit), ('plain', plain)):
        torch._dynamo.reset()
        compiled = torch.compile(fn, backend='aot_eager_decomp_partition', fullgraph=True)
        saved[name] = _saved_bytes(lambda: compiled(x))
    assert maps <= saved['unit'] - saved['base'] < maps + 64 * 1024
    assert saved['plain'] - saved['unit'] >= 1.9 * maps


def test_bf16(unit_calls):
    """A bf16 block runs the unit in bf16, within bf16 rounding of the float32 reference form. Under bf16
    autocast the residual stream is float32, so its grids are too and the plain modules run."""
    block, ref_block = _block(dtype=torch.bfloat16), _block()
    x, weights = _tokens(1)
    xb = x.detach().bfloat16().requires_grad_()
    got = _step(block, xb, weights, lambda t: block(t, GRID, 1))
    assert unit_calls == [1] and got[0].dtype == torch.bfloat16
    with reference_mode(ref_block):
        want = _step(ref_block, x, weights, lambda t: ref_block(t, GRID, 1))
    assert rel_error(got[0].float(), want[0]) <= 2e-2
    _assert_close(got[1:], want[1:], tol=5e-2)

    block = _block()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        grids = _mid_grids(block, x, 1)
        assert grids[0].dtype == torch.float32
        assert not token_light_applies(*grids, block.mrla, block.norm_mrla, block.norm_mrla_prev)
        got = _step(block, x, weights, lambda t: block(t, GRID, 1))
    assert unit_calls == [1]
    _assert_close(got, want, tol=5e-2)


@pytest.mark.parametrize('change, why', [
    (lambda b: b.eval(), 'eval mode'),
    (lambda b: setattr(b.norm_mrla, '_fast_norm', True), "timm's fast-norm LayerNorm"),
    (lambda b: setattr(b.mrla, 'value_act', nn.ReLU()), 'another value activation'),
    (lambda b: b.mrla.register_forward_hook(lambda *args: None), 'a hook on the layer'),
    (lambda b: b.mrla.v.register_forward_pre_hook(lambda *args: None), 'a hook on the value convolution'),
    (lambda b: b.norm_mrla_prev.register_forward_hook(lambda m, args, out: out * 2), 'a hook altering a norm'),
])
def test_other_cases_take_the_plain_modules(change, why, unit_calls):
    block = _block()
    change(block)
    x, weights = _tokens(1)
    assert not token_light_applies(*_mid_grids(block, x, 1), block.mrla, block.norm_mrla, block.norm_mrla_prev), why
    _assert_close(_step(block, x, weights, lambda t: block(t, GRID, 1)),
                  _step(block, x, weights, lambda t: _plain(block, t, GRID, 1)))
    assert unit_calls == []


def test_observed_layer_and_no_grad_take_the_plain_modules(unit_calls):
    """A forward hook on the layer still fires, ``reference_mode`` computes the literal form, and without grad
    mode nothing needs the unit."""
    block = _block()
    x, weights = _tokens(1)
    calls = []
    handle = block.mrla.register_forward_hook(lambda *args: calls.append(1))
    _step(block, x, weights, lambda t: block(t, GRID, 1))
    handle.remove()
    assert calls == [1]
    with reference_mode(block):
        assert not token_light_applies(*_mid_grids(block, x, 1), block.mrla, block.norm_mrla, block.norm_mrla_prev)
        _step(block, x, weights, lambda t: block(t, GRID, 1))
    with torch.no_grad():
        assert not token_light_applies(*_mid_grids(block, x, 1), block.mrla, block.norm_mrla, block.norm_mrla_prev)
    assert unit_calls == []
