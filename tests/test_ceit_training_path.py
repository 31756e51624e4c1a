"""The training path of CeiT's token MRLA-light (``timm_mrla.layers.light_train.token_light`` with a BatchNorm'd
value) equals the plain modules and the literal reference form: outputs, every gradient and the value BatchNorm's
running statistics, in float64 and float32, with drop-path, under gradient checkpointing, FX, TorchScript,
torch.compile and bf16; it keeps no token map beyond the block's mid output ``x``, compiled too; and where it would
not be exact (eval mode, hooks, another norm, autocast, no grad, the meta device) the plain modules run."""
import copy

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d
from timm.layers.norm_act import convert_sync_batchnorm

import timm_mrla  # noqa: F401
from timm_mrla.layers import reference_mode
from timm_mrla.layers.light_train import token_light_applies
from timm_mrla.models.ceit import CeiTMRLABlock
from timm_mrla.models.deit import _to_grid, _to_tokens
from test_fast_paths import _saved_bytes
from test_token_training_path import assert_compiled_unit_keeps_x_alone, counting
from test_training_path import FP32_TOL, assert_compiled_training_equals_eager, rel_error, sgd_steps

DIM, GRID = 64, (5, 6)
TOL = {torch.float64: 1e-10, torch.float32: FP32_TOL}


@pytest.fixture
def unit_calls():
    """How many times the unit ran in eager mode (its batch statistics: the plain BatchNorm computes them inside
    its own kernel): proof that a test went through it."""
    with counting(torch.ops.aten.batch_norm_update_stats.default) as calls:
        yield calls


def _block(dtype=torch.float32, seed=0, **bn_kwargs):
    """A training block with drop-path whose value BatchNorm has drawn affines (``bn_kwargs`` rebuild it)."""
    torch.manual_seed(seed)
    block = CeiTMRLABlock(DIM, 4, drop_path=0.2).train()
    if bn_kwargs:
        block.mrla.value_act = BatchNormAct2d(DIM, act_layer=nn.GELU, **bn_kwargs)
    bn = block.mrla.value_act
    with torch.no_grad():
        for norm in (bn, block.leff.bn1, block.leff.bn2, block.leff.bn3):
            if norm.weight is not None:
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)
    return block.to(dtype)


def _tokens(shape=(6, *GRID), dtype=torch.float32):
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(shape[0], 1 + shape[1] * shape[2], DIM, generator=generator)
    return x.to(dtype).requires_grad_(), torch.randn(x.shape, generator=generator, dtype=dtype)


def _plain(block, x, grid):
    """``CeiTMRLABlock.forward`` as it read before the training path: the layer called as a module."""
    x = block.norm1(x)
    prev = x
    x = x + block.drop_path(block.attn(x))
    x_norm = block.norm2(x)
    x = x + block.drop_path(torch.cat([x_norm[:, :1], _to_tokens(block.leff(_to_grid(x_norm[:, 1:], grid)))], dim=1))
    x_norm = block.norm_mrla(x)
    mrla = block.mrla(_to_grid(x_norm[:, 1:], grid), _to_grid(prev[:, 1:], grid))
    return x + block.drop_path(torch.cat([x_norm[:, :1], _to_tokens(mrla)], dim=1))


def _step(block, x, weights, fn):
    torch.manual_seed(3)  # drop-path masks
    out = fn(x)
    return [out, *torch.autograd.grad((out * weights).sum(), [x, *block.parameters()])]


def _assert_close(got, want, tol):
    """Each tensor within ``tol`` of its reference relative to its norm or, for the gradients that are zero up to
    rounding (the biases of LeFF's convolutions, each followed by a BatchNorm), to a hundredth of the largest."""
    norms = [float(torch.linalg.vector_norm(b.double())) for b in want]
    for i, (a, b) in enumerate(zip(got, want)):
        error = float(torch.linalg.vector_norm(a.detach().double() - b.double()))
        assert error <= tol * max(norms[i], 1e-2 * max(norms)), f'tensor {i}: error {error:.1e} of {norms[i]:.1e}'


def _assert_same_statistics(norm, ref_norm, tol):
    for name in ('running_mean', 'running_var'):
        a, b = getattr(norm, name), getattr(ref_norm, name)
        assert (a is None) == (b is None), name
        if b is not None:
            assert rel_error(a, b) <= tol, name
    if ref_norm.num_batches_tracked is not None:
        assert int(norm.num_batches_tracked) == int(ref_norm.num_batches_tracked)


def _grids(block, x):
    """The grids ``token_light`` receives in ``block(x)``."""
    prev = block.norm1(x)
    mid = prev + block.attn(prev)
    x_norm = block.norm2(mid)
    mid = mid + torch.cat([x_norm[:, :1], _to_tokens(block.leff(_to_grid(x_norm[:, 1:], GRID)))], dim=1)
    return _to_grid(block.norm_mrla(mid)[:, 1:], GRID), _to_grid(prev[:, 1:], GRID)


def _applies(block, x):
    with torch.no_grad():
        x_grid, prev_grid = _grids(copy.deepcopy(block), x)  # a copy: the statistics of the block stay as they are
    with torch.enable_grad():
        return token_light_applies(x_grid, prev_grid, block.mrla, block.norm_mrla)


@pytest.mark.parametrize('dtype, config', [
    (torch.float64, dict()),
    (torch.float64, dict(momentum=None)),  # cumulative moving average
    (torch.float64, dict(affine=False)),
    (torch.float64, dict(track_running_stats=False)),
    (torch.float64, dict(act_kwargs=dict(approximate='tanh'))),
    (torch.float32, dict()),
])
def test_block_equals_plain_and_reference(dtype, config, unit_calls):
    """Two steps: outputs, gradients of the input and every parameter, and the running statistics, against the plain
    modules and the literal form."""
    blocks = [_block(dtype, **config) for _ in range(3)]
    x, weights = _tokens(dtype=dtype)
    assert _applies(blocks[0], x)
    results = [[], [], []]
    for _ in range(2):
        results[0].append(_step(blocks[0], x, weights, lambda t: blocks[0](t, GRID)))
        results[1].append(_step(blocks[1], x, weights, lambda t: _plain(blocks[1], t, GRID)))
        with reference_mode(blocks[2]):
            results[2].append(_step(blocks[2], x, weights, lambda t: blocks[2](t, GRID)))
    assert unit_calls == [1, 1]
    for want, ref_block in zip(results[1:], blocks[1:]):
        for got_step, want_step in zip(results[0], want):
            _assert_close(got_step, want_step, TOL[dtype])
        _assert_same_statistics(blocks[0].mrla.value_act, ref_block.mrla.value_act, TOL[dtype])


def test_model_training_steps_equal_reference(unit_calls):
    """A small ceit_tiny_mrla with drop-path, float64, two SGD steps: the reference form's outputs, weights and
    running statistics."""
    torch.manual_seed(0)
    model = timm.create_model('ceit_tiny_mrla', img_size=32, depth=2, num_classes=5, drop_path_rate=0.3)
    model = model.double().train()
    ref_model = copy.deepcopy(model)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    outs = sgd_steps(model, x)
    assert len(unit_calls) == 4  # two blocks, two steps
    with reference_mode(ref_model):
        ref_outs = sgd_steps(ref_model, x)
    _assert_close(outs, ref_outs, 1e-10)
    state, ref_state = model.state_dict(), ref_model.state_dict()
    for key in state:
        torch.testing.assert_close(state[key], ref_state[key], rtol=1e-10, atol=1e-12, msg=key)


def test_keeps_no_token_map_beyond_x():
    """Beyond plain CeiT's block the MRLA part keeps the mid output x (its LayerNorm's input) and per-token and
    per-channel vectors: prev is the block's normalised input, which the attention keeps. The plain modules keep
    four more maps (the normalised grid, the convolution's output, BatchNorm's and the value)."""
    block = _block()
    base = copy.deepcopy(block)
    base.mrla = base.norm_mrla = None  # plain CeiT
    x, _ = _tokens(shape=(4, 16, 16))
    maps = x.numel() * x.element_size()
    base_bytes = _saved_bytes(lambda: base(x, (16, 16)))
    fast = _saved_bytes(lambda: block(x, (16, 16)))
    plain = _saved_bytes(lambda: _plain(block, x, (16, 16)))
    assert maps <= fast - base_bytes < maps + 64 * 1024
    assert plain - fast >= 3.9 * maps


def test_gradient_checkpointing(unit_calls):
    """Checkpointed blocks (recomputed in backward, the unit then run again) give the reference form's gradients and
    running statistics (both runs update them twice)."""
    torch.manual_seed(0)
    model = timm.create_model('ceit_tiny_mrla', img_size=32, depth=2, num_classes=5, drop_path_rate=0.3).double()
    ref_model = copy.deepcopy(model).train()
    model.train().set_grad_checkpointing()
    ref_model.set_grad_checkpointing()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 5, dtype=torch.float64)
    got = _step(model, x, weights, model)
    assert len(unit_calls) == 4  # two blocks, each run again in backward
    with reference_mode(ref_model):
        want = _step(ref_model, x, weights, ref_model)
    _assert_close(got, want, 1e-10)
    for block, ref_block in zip(model.blocks, ref_model.blocks):
        _assert_same_statistics(block.mrla.value_act, ref_block.mrla.value_act, 1e-10)


def test_fx_traced_block_runs_the_training_path(unit_calls):
    block, ref_block = _block(torch.float64), _block(torch.float64)
    traced = torch.fx.symbolic_trace(block, concrete_args={'grid': GRID})
    assert any(node.op == 'call_function' and node.target.__name__ == '_token_light' for node in traced.graph.nodes)
    x, weights = _tokens(dtype=torch.float64)
    got = _step(block, x, weights, lambda t: traced(t, GRID))
    assert unit_calls == [1]
    with reference_mode(ref_block):
        want = _step(ref_block, x, weights, lambda t: ref_block(t, GRID))
    _assert_close(got, want, 1e-10)
    _assert_same_statistics(block.mrla.value_act, ref_block.mrla.value_act, 1e-10)


def test_torchscript_block_equals_the_training_path():
    """Scripting writes the layer out plainly; it computes what the training path does, statistics included."""
    block = _block(torch.float64)
    scripted = torch.jit.script(copy.deepcopy(block))
    x, weights = _tokens(dtype=torch.float64)
    _assert_close(_step(scripted, x, weights, lambda t: scripted(t, GRID)),
                  _step(block, x, weights, lambda t: block(t, GRID)), 1e-10)
    _assert_same_statistics(scripted.mrla.value_act, block.mrla.value_act, 1e-10)


def test_compiled_model_training_equals_eager():
    """torch.compile (Inductor, one graph) traces the unit as its op and trains as eager does, running statistics
    included."""
    torch.manual_seed(0)
    model = timm.create_model('ceit_tiny_mrla', img_size=32, depth=1, num_classes=5, drop_path_rate=0.3)
    assert_compiled_training_equals_eager(model.double().train(), torch.randn(4, 3, 32, 32, dtype=torch.float64),
                                          'timm_mrla.token_light.default')


def test_compiled_block_keeps_no_token_map_beyond_x():
    """Compiled, the MRLA part keeps what it keeps in eager mode: beyond plain CeiT's block, x."""
    block = _block()
    base = copy.deepcopy(block)
    base.mrla = base.norm_mrla = None
    x, _ = _tokens(shape=(4, 16, 16))
    assert_compiled_unit_keeps_x_alone(x, lambda t: base(t, (16, 16)), lambda t: block(t, (16, 16)),
                                       lambda t: _plain(block, t, (16, 16)))


def test_bf16(unit_calls):
    """A bf16 block runs the unit in bf16, within bf16 rounding of the float32 reference form. Under bf16 autocast
    the residual stream is float32, so its grids are too and the plain modules run."""
    block, ref_block = _block(torch.bfloat16), _block()
    x, weights = _tokens()
    xb = x.detach().bfloat16().requires_grad_()
    got = _step(block, xb, weights.bfloat16(), lambda t: block(t, GRID))
    assert unit_calls == [1] and got[0].dtype == torch.bfloat16
    with reference_mode(ref_block):
        want = _step(ref_block, x, weights, lambda t: ref_block(t, GRID))
    assert rel_error(got[0].float(), want[0]) <= 2e-2
    # the input's and the MRLA part's gradients (LeFF's bias gradients are zero up to rounding: in bf16, noise)
    names = [name for name, _ in block.named_parameters()]
    mrla = [i for i, name in enumerate(names, 2) if name.startswith(('mrla.', 'norm_mrla.'))]
    _assert_close([got[i] for i in [1, *mrla]], [want[i] for i in [1, *mrla]], 6e-2)

    block = _block()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not _applies(block, x)
        _step(block, x, weights, lambda t: block(t, GRID))
    assert unit_calls == [1]


def _value_act(block, **kwargs):
    block.mrla.value_act = BatchNormAct2d(DIM, **kwargs)


@pytest.mark.parametrize('change, why', [
    (lambda b: b.eval(), 'eval mode'),
    (lambda b: b.mrla.value_act.eval(), "the value's BatchNorm with running statistics in a training block"),
    (lambda b: _value_act(b, act_layer=nn.ReLU), 'another activation'),
    (lambda b: _value_act(b, act_layer=nn.GELU, drop_layer=lambda: nn.Dropout(0.)), 'a dropout inside the norm'),
    (lambda b: setattr(b.mrla, 'value_act', convert_sync_batchnorm(b.mrla.value_act)), 'SyncBatchNorm'),
    (lambda b: b.bfloat16().mrla.value_act.float(), "BatchNorm's mixed-dtype kernel"),
    (lambda b: setattr(b.norm_mrla, '_fast_norm', True), "timm's fast-norm LayerNorm"),
    (lambda b: b.mrla.register_forward_hook(lambda *args: None), 'a hook on the layer'),
    (lambda b: b.mrla.value_act.register_forward_pre_hook(lambda *args: None), 'a hook on the value norm'),
    (lambda b: b.mrla.value_act.act.register_forward_hook(lambda m, args, out: out * 2), 'a hook altering GELU'),
    (lambda b: b.norm_mrla.register_forward_hook(lambda m, args, out: out * 2), 'a hook altering the norm'),
])
def test_other_cases_take_the_plain_modules(change, why, unit_calls):
    block = _block()
    change(block)
    dtype = next(block.norm_mrla.parameters()).dtype
    x, weights = _tokens(dtype=dtype)
    assert not _applies(block, x), why
    if why == 'SyncBatchNorm':
        return  # its training forward needs a process group
    ref_block = copy.deepcopy(block)
    _assert_close(_step(block, x, weights, lambda t: block(t, GRID)),
                  _step(ref_block, x, weights, lambda t: _plain(ref_block, t, GRID)), FP32_TOL)
    assert unit_calls == []


def test_no_grad_and_meta_take_the_plain_modules(unit_calls):
    block = _block()
    x, _ = _tokens()
    with torch.no_grad():
        block(x, GRID)
    meta = _block().to('meta')
    out = meta(torch.empty(2, 1 + 30, DIM, device='meta'), GRID)
    assert out.shape == (2, 31, DIM) and out.is_meta
    assert unit_calls == []
