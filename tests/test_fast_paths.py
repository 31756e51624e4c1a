"""Every optimised path equals the literal reference form: forward and gradients, layer and model."""
import contextlib
import copy

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d
from torchvision.ops.misc import FrozenBatchNorm2d

import timm_mrla  # noqa: F401
from timm_mrla.layers import mrla as mrla_module
from timm_mrla.layers import MRLABase, MRLALight, add_mrla_light, batchnorm_affine, mrla_base_reference, \
    mrla_light_reference, reference_mode
from timm_standins import SMALL_CONFIGS

FP32 = dict(rtol=1e-4, atol=1e-5)


def assert_rel_close(a, b, tol: float) -> None:
    """Tensors (or lists of them, taken together) differ by at most ``tol`` of the reference's norm."""
    a = torch.cat([t.flatten() for t in a]) if isinstance(a, (list, tuple)) else a
    b = torch.cat([t.flatten() for t in b]) if isinstance(b, (list, tuple)) else b
    error = float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))
    assert error <= tol, f'relative error {error:.2e} > {tol:.0e}'


def _grads(out, tensors):
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    return torch.autograd.grad((out * weights).sum(), tensors)


def _trained_bn(norm):
    """A norm with non-trivial running statistics and affine parameters, in eval mode."""
    with torch.no_grad():
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        if getattr(norm, 'weight', None) is not None:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return norm.eval()


@pytest.mark.parametrize('captured', [False, True], ids=['eager', 'captured'])
@pytest.mark.parametrize('channels_last', [False, True])
def test_folded_equals_reference_with_gradients(channels_last, captured, monkeypatch):
    """``captured``: the form a trace or an export records (gate on the convolution's input, lambda and the shift as
    a 1x1 depthwise convolution, the gate's head sum as a grouped Conv1d)."""
    monkeypatch.setattr(mrla_module, '_capturing_graph', lambda: captured)
    torch.manual_seed(0)
    layer = MRLALight(64, head_dim=32)
    norm = _trained_bn(nn.BatchNorm2d(64))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 64, 9, 7).contiguous(memory_format=fmt).requires_grad_()
    prev = torch.randn(3, 64, 9, 7).contiguous(memory_format=fmt).requires_grad_()
    scale, shift = batchnorm_affine(norm)
    out = layer.forward_folded(x, prev, scale, shift)
    ref = x + norm(mrla_light_reference(layer, x, prev))
    torch.testing.assert_close(out, ref, **FP32)
    tensors = [x, prev, norm.weight, norm.bias, *layer.parameters()]
    for g, g_ref in zip(_grads(out, tensors), _grads(ref, tensors)):
        torch.testing.assert_close(g, g_ref, **FP32)


@pytest.mark.parametrize('captured', [False, True], ids=['eager', 'captured'])
@pytest.mark.parametrize('cached', [0, 2])
def test_base_folded_equals_reference_with_gradients(cached, captured, monkeypatch):
    """MRLA-base's inference form with an eval BatchNorm and ReLU folded in, eagerly (the norm in the attention
    weights) and as a trace records it (the norm as a 1x1 depthwise convolution, the query's pooling a global
    average pool), at a group's first block and with two cached blocks."""
    monkeypatch.setattr(mrla_module, '_capturing_graph', lambda: captured)
    torch.manual_seed(0)
    layer = MRLABase(64, head_dim=16)
    norm = _trained_bn(nn.BatchNorm2d(64))
    x = torch.randn(3, 64, 9, 7, requires_grad=True)
    keys = [torch.randn(3, 4, 16, requires_grad=True) for _ in range(cached)]
    values = [torch.randn(3, 64, 9, 7, requires_grad=True) for _ in range(cached)]
    out, key, value = layer.forward_folded(x, keys, values, *batchnorm_affine(norm))
    prev_keys = torch.stack(keys, 1).flatten(2) if keys else None
    prev_values = torch.stack(values, 1) if values else None
    attended, ref_keys, ref_values = mrla_base_reference(layer, x, prev_keys, prev_values)
    ref = x + torch.relu(norm(attended))
    torch.testing.assert_close(out, ref, **FP32)
    torch.testing.assert_close(key.flatten(1), ref_keys[:, -1], **FP32)
    torch.testing.assert_close(value, ref_values[:, -1], **FP32)
    tensors = [x, *keys, *values, norm.weight, norm.bias, *layer.parameters()]
    for g, g_ref in zip(_grads(out, tensors), _grads(ref, tensors)):
        torch.testing.assert_close(g, g_ref, **FP32)


@pytest.mark.parametrize('make_norm, folds', [
    (lambda c: nn.BatchNorm2d(c), True),
    (lambda c: BatchNormAct2d(c, apply_act=False), True),
    (lambda c: FrozenBatchNorm2d(c), True),
    (lambda c: nn.BatchNorm2d(c, affine=False), True),
    (lambda c: BatchNormAct2d(c, act_layer=nn.ReLU), False),  # the activation cannot fold
    (lambda c: nn.GroupNorm(4, c), False),
])
def test_add_mrla_light_folds_only_batchnorms(make_norm, folds):
    torch.manual_seed(0)
    layer = MRLALight(32, head_dim=8).eval()
    norm = make_norm(32)
    if hasattr(norm, 'running_var'):
        _trained_bn(norm)
    norm.eval()
    x, prev = torch.randn(2, 32, 6, 6), torch.randn(2, 32, 6, 6)
    assert (batchnorm_affine(norm) is not None) == folds
    with torch.no_grad():
        out = add_mrla_light(x, prev, layer, norm, nn.Identity().eval())
        torch.testing.assert_close(out, x + norm(mrla_light_reference(layer, x, prev)), **FP32)


def test_training_mode_never_folds():
    layer, norm = MRLALight(32, head_dim=8), nn.BatchNorm2d(32)
    x, prev = torch.randn(4, 32, 5, 5), torch.randn(4, 32, 5, 5)
    assert batchnorm_affine(norm) is None
    ref_norm = nn.BatchNorm2d(32)
    torch.testing.assert_close(add_mrla_light(x, prev, layer, norm, nn.Identity()),
                               x + ref_norm(mrla_light_reference(layer, x, prev)), **FP32)
    torch.testing.assert_close(norm.running_mean, ref_norm.running_mean)  # statistics updated once, as usual


# and, small (SMALL_CONFIGS, 64x64), the one variant whose MRLA branch meets something new: ResNet-D's shortcut is
# recomputed through its average-pool downsample. The others differ inside the residual branch (SE, grouped or wider
# convolutions) or before the branch (DeiT-III's LayerScale), which the fold and the training units leave alone. And
# ConvNeXt-T, small: a new family, whose blocks hand the branch channels-last maps.
MODELS = ['resnet18_mrla', 'resnet50_mrla', 'resnet50_mrla_base', 'efficientnet_b0_mrla', 'deit_tiny_mrla',
          'deit_tiny_mrla_base', 'resnet50d_mrla', 'convnext_tiny_mrla']


def _output_and_grads(model, x, reference: bool):
    params = list(model.parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with reference_mode(model) if reference else contextlib.nullcontext():
        out = model(x)
        grads = _grads(out, params)
    model.load_state_dict(state)  # training mode moved the running statistics
    return out, grads


def _distance(a, b) -> float:
    """Relative distance of ``a`` (output, grads) from ``b``, measured in float64."""
    flat = [torch.cat([a[0].flatten(), *[g.flatten() for g in a[1]]]).double() for a in (a, b)]
    return float(torch.linalg.vector_norm(flat[0] - flat[1]) / torch.linalg.vector_norm(flat[1]))


@pytest.mark.parametrize('name', MODELS)
@pytest.mark.parametrize('train', [False, True])
def test_models_equal_their_reference_form(name, train):
    """Same math: float64 outputs and all gradients to 1e-10. Same result in float32: at most 1e-4 from the
    float64 result, or, where the float32 reference form itself strays further (a training-mode ResNet-50 on
    a batch of 2 amplifies rounding through its batch statistics to ~5e-3), no further than it does."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, drop_path_rate=0., **SMALL_CONFIGS.get(name, {}))
    for module in model.modules():  # trained-looking statistics, so the eval fold has work to do
        if isinstance(module, nn.BatchNorm2d):
            _trained_bn(module)
    model.train(train)
    size = 224 if name.startswith('deit') else 64 if name in SMALL_CONFIGS else 96
    x = torch.randn(2, 3, size, size)
    model64 = copy.deepcopy(model).double()
    truth = _output_and_grads(model64, x.double(), reference=True)
    assert _distance(_output_and_grads(model64, x.double(), reference=False), truth) <= 1e-10
    reference_error = _distance(_output_and_grads(model, x, reference=True), truth)
    assert _distance(_output_and_grads(model, x, reference=False), truth) <= max(1e-4, 1.5 * reference_error)


def test_reference_mode_is_undone():
    model = timm.create_model('resnet18_mrla').eval()
    layer = model.layer1[0].mrla
    with reference_mode(model):
        assert 'forward' in vars(layer)
    assert 'forward' not in vars(layer) and 'forward_folded' not in vars(layer)


def test_reference_mode_reaches_a_compiled_model():
    """torch.compile guards on a module's hooks, not on a replaced forward: without reference_mode's marker hook a
    compiled model would keep running its fast path inside reference_mode."""
    from torch._dynamo.testing import CompileCounter

    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.mrla, self.norm, self.drop_path = MRLALight(32, head_dim=8), nn.BatchNorm2d(32), nn.Identity()

        def forward(self, x, prev):
            return add_mrla_light(x, prev, self.mrla, self.norm, self.drop_path)

    model, counter = Branch(), CompileCounter()
    compiled = torch.compile(model, backend=counter)
    x, prev = torch.randn(2, 32, 6, 6), torch.randn(2, 32, 6, 6)
    compiled(x, prev)
    frames = counter.frame_count
    with reference_mode(model):
        compiled(x, prev)
    assert counter.frame_count > frames


def _saved_bytes(fn) -> int:
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_base_cache_memory_grows_linearly_with_depth():
    """The list cache saves each block's value once; re-concatenating it (the literal form) grows quadratically."""
    torch.manual_seed(0)
    layers = [MRLABase(32, head_dim=8) for _ in range(8)]

    def run(depth, literal):
        def fn():
            x = torch.randn(2, 32, 16, 16, requires_grad=True)
            keys, values, cat_k, cat_v = [], [], None, None
            for layer in layers[:depth]:
                if literal:
                    x, cat_k, cat_v = mrla_base_reference(layer, x, cat_k, cat_v)
                else:
                    x, k, v = layer(x, keys, values)
                    keys.append(k)
                    values.append(v)
        return _saved_bytes(fn)
    fast = [run(d, False) for d in (2, 4, 6, 8)]
    literal = [run(d, True) for d in (2, 4, 6, 8)]
    steps = [b - a for a, b in zip(fast, fast[1:])]
    assert max(steps) - min(steps) <= 0.05 * steps[0]  # constant increments: linear
    literal_steps = [b - a for a, b in zip(literal, literal[1:])]
    assert literal_steps[-1] > 1.5 * literal_steps[0]  # the concatenated cache is not
    assert fast[-1] < literal[-1]


@pytest.mark.parametrize('name', ['resnet101_mrla', 'resnet50_mrla_base', 'tf_efficientnet_lite0_mrla'])
def test_fx_traced_model_computes_what_the_eager_one_does(name):
    """A deep eval model traced by FX keeps the folded branch, so it matches eager bit for bit (timm's FX test
    compares elementwise at rtol 1e-4, which activations of hundreds at init miss under any rounding change)."""
    from timm.models._features_fx import create_feature_extractor  # timm's tracer: its padding helpers are leaves
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            _trained_bn(module)
    traced = create_feature_extractor(model, return_nodes=['fc' if hasattr(model, 'fc') else 'classifier'])
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        assert torch.equal(next(iter(traced(x).values())), model(x))


def test_inference_folds_step_aside_for_training_and_observers():
    """The DeiT block's lambda fold and the ResNet MRLA-base block's BatchNorm fold run only at inference and only
    where nothing observes the layer (``test_models_equal_their_reference_form`` holds them to the reference)."""
    deit = timm.create_model('deit_tiny_mrla', img_size=32, depth=1)
    resnet = timm.create_model('resnet50_mrla_base', layers=(1, 1, 1, 1))
    deit_block, base_block = deit.blocks[0], resnet.layer1[0]
    assert not deit_block._folds_lambda() and base_block._folded_norm() is None
    deit.eval(), resnet.eval()
    assert deit_block._folds_lambda() and base_block._folded_norm() is not None
    handles = [deit_block.mrla.register_forward_hook(lambda *args: None),
               base_block.mrla.register_forward_hook(lambda *args: None)]
    assert not deit_block._folds_lambda() and base_block._folded_norm() is None
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize('name, kwargs', [('deit_tiny_mrla', dict(img_size=32, depth=2)),
                                          ('resnet50_mrla_base', dict(layers=(1, 2, 1, 1)))])
def test_compiled_inference_equals_reference(name, kwargs):
    """torch.compile at inference (one graph): DeiT's lambda fold runs there, MRLA-base leaves Inductor the plain
    branch; both equal the reference form."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            _trained_bn(module)
    model.eval()
    size = 32 if name.startswith('deit') else 64
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        out = torch.compile(model, backend='aot_eager', fullgraph=True)(x)
        with reference_mode(model):
            ref = model(x)
    assert_rel_close(out, ref, 1e-5)
