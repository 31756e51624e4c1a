"""The inspection API against a hand computation on tiny models of every family, in eval and train mode.

The hand computation takes each MRLA layer's input from hooks on other modules (the activation closing a ResNet
block, EfficientNet's bn3 plus the shortcut, DeiT's norm_mrla), so it does not share the recorder's hooks.
"""
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm_mrla  # noqa: F401
from timm_mrla import LayerAttentionRecorder, NotAnMRLAModelError, layer_attention
from timm_mrla.layers import MRLABase, MRLALight

# name, create_model kwargs, input [C, H, W]: tiny, and every family
TINY_MODELS = {
    'resnet_light_basic': ('resnet18_mrla', dict(layers=(2, 3, 1, 1)), (3, 48, 40)),
    'resnet_light_bottleneck': ('resnet50_mrla', dict(layers=(1, 3, 1, 1)), (3, 40, 40)),
    'resnet_base': ('resnet50_mrla_base', dict(layers=(2, 3, 1, 1)), (3, 40, 48)),
    'efficientnet': ('efficientnet_b0_mrla', {}, (3, 40, 40)),
    'deit_light': ('deit_tiny_mrla', dict(depth=5, img_size=48), (3, 48, 48)),
    'deit_base': ('deit_tiny_mrla_base', dict(depth=6, img_size=48), (3, 48, 48)),
}


def _tiny(key: str):
    name, kwargs, shape = TINY_MODELS[key]
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    with torch.no_grad():  # gates and lambdas away from their init, so the numbers mean something
        for m in model.modules():
            if isinstance(m, (MRLALight, MRLABase)):
                m.q.weight.normal_(0, 1)
                m.k.weight.normal_(0, 1)
            if isinstance(m, MRLALight):
                m.lambda_t.uniform_(-1.5, 1.5)
    return model, torch.randn(2, *shape)


def _mrla_inputs(model: nn.Module, key: str):
    """Hooks, on other modules than MRLA's, that capture each MRLA layer's input x [B, C, H, W] by block name."""
    inputs, handles = {}, []
    for name, block in model.named_modules():
        if not isinstance(getattr(block, 'mrla', None), (MRLALight, MRLABase)):
            continue

        def store(value, name=name):
            inputs[name] = value.detach().clone()
        if key.startswith('resnet'):  # the block's residual add and activation
            last_act = block.act3 if hasattr(block, 'act3') else block.act2
            handles.append(last_act.register_forward_hook(lambda m, a, out, store=store: store(out)))
        elif key == 'efficientnet':  # bn3's output plus the shortcut (no drop path here)
            shortcut = {}
            handles.append(block.register_forward_pre_hook(lambda m, a, shortcut=shortcut: shortcut.update(x=a[0])))
            handles.append(block.bn3.register_forward_hook(
                lambda m, a, out, store=store, shortcut=shortcut: store(out + shortcut['x'])))
        else:  # DeiT: the normalised patch tokens on their grid
            def store_grid(m, a, out, store=store):
                side = math.isqrt(out.shape[1] - 1)
                store(out[:, 1:].transpose(1, 2).unflatten(-1, (side, side)))
            handles.append(block.norm_mrla.register_forward_hook(store_grid))
    return inputs, handles


def _query_key(layer, x):
    y = x.mean((2, 3))[:, None]  # [B, 1, C]
    pad = layer.q.weight.shape[-1] // 2
    q = F.conv1d(y, layer.q.weight, padding=pad)[:, 0].view(x.shape[0], layer.num_heads, layer.head_dim)
    k = F.conv1d(y, layer.k.weight, padding=pad)[:, 0].view(x.shape[0], layer.num_heads, layer.head_dim)
    return q, k


def _expected_light(model, group, inputs):
    """Gates, lambdas and implied weights of one MRLA-light group, by the definitions, loop by loop."""
    layers = [model.get_submodule(block).mrla for block in group.blocks]
    b_size, heads = inputs[group.blocks[0]].shape[0], layers[0].num_heads
    d = layers[0].head_dim
    gates = torch.zeros(b_size, len(layers), heads)
    for t, (block, layer) in enumerate(zip(group.blocks, layers)):
        q, k = _query_key(layer, inputs[block])
        for b in range(b_size):
            for h in range(heads):
                gates[b, t, h] = torch.sigmoid(torch.dot(q[b, h], k[b, h]) / math.sqrt(d))
    lambdas = torch.stack([layer.lambda_t.detach() for layer in layers])
    weights = torch.zeros(b_size, len(layers), len(layers), heads)
    for t in range(len(layers)):
        for s in range(t + 1):
            product = torch.ones(lambdas.shape[1])
            for j in range(s + 1, t + 1):
                product = product * lambdas[j]
            for h in range(heads):
                weights[:, t, s, h] = gates[:, s, h] * product[h * d:(h + 1) * d].abs().mean()
    return gates, lambdas, weights


def _expected_base(model, group, inputs):
    """Softmax weights of one MRLA-base group: each block's query against the keys of the group so far."""
    layers = [model.get_submodule(block).mrla for block in group.blocks]
    qk = [_query_key(layer, inputs[block]) for block, layer in zip(group.blocks, layers)]
    b_size, heads, d = qk[0][0].shape
    weights = torch.zeros(b_size, len(layers), len(layers), heads)
    for t in range(len(layers)):
        q = qk[t][0]
        for b in range(b_size):
            for h in range(heads):
                logits = torch.stack([torch.dot(q[b, h], qk[s][1][b, h]) for s in range(t + 1)]) / math.sqrt(d)
                weights[b, t, :t + 1, h] = logits.softmax(0)
    return weights


EXPECTED_GROUPS = {
    'resnet_light_basic': ['layer1', 'layer2', 'layer3', 'layer4'],
    'resnet_light_bottleneck': ['layer1', 'layer2', 'layer3', 'layer4'],
    'resnet_base': ['layer1', 'layer2', 'layer3', 'layer4'],
    'efficientnet': ['blocks.1', 'blocks.2', 'blocks.3', 'blocks.4', 'blocks.5'],
    'deit_light': ['blocks'],
    'deit_base': ['blocks.0-3', 'blocks.4-5'],  # the cache restarts every 4 blocks
}


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('key', list(TINY_MODELS))
def test_numbers_equal_a_hand_computation(key, train):
    model, x = _tiny(key)
    model.train(train)
    inputs, handles = _mrla_inputs(model, key)
    with torch.no_grad(), LayerAttentionRecorder(model) as recorder:
        model(x)
    for handle in handles:
        handle.remove()
    groups = recorder.groups()
    assert [g.name for g in groups] == EXPECTED_GROUPS[key]
    assert sum(len(g.blocks) for g in groups) == len(inputs)
    for group in groups:
        if group.variant == 'light':
            gates, lambdas, weights = _expected_light(model, group, inputs)
            torch.testing.assert_close(group.gates, gates)
            torch.testing.assert_close(group.lambdas, lambdas)
        else:
            weights = _expected_base(model, group, inputs)
            assert group.gates is None
        torch.testing.assert_close(group.weights, weights)
    weights = torch.cat([g.weights.flatten() for g in groups])
    assert weights.max() - weights.min() > 0.1  # varied numbers, not a constant


def test_base_weights_sum_to_one_and_light_diagonal_is_the_gate():
    base, x = _tiny('resnet_base')
    for group in layer_attention(base.eval(), x):
        torch.testing.assert_close(group.weights.sum(2), torch.ones_like(group.weights.sum(2)))
    light, x = _tiny('resnet_light_bottleneck')
    for group in layer_attention(light.eval(), x):
        torch.testing.assert_close(group.weights.diagonal(dim1=1, dim2=2), group.gates.transpose(1, 2))


@pytest.mark.parametrize('key', ['resnet_light_basic', 'resnet_base', 'efficientnet', 'deit_light'])
def test_forward_unchanged_and_hooks_removed(key):
    model, x = _tiny(key)
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, (MRLALight, MRLABase))]
    with torch.no_grad():
        expected = model(x)
        with LayerAttentionRecorder(model):
            during = model(x)
        after = model(x)
    assert torch.equal(during, expected) and torch.equal(after, expected)
    for layer in layers:
        assert not layer._forward_pre_hooks and not layer._forward_hooks
        assert 'query_key' not in vars(layer)


def test_features_only_backbone_is_inspected():
    model = timm.create_model('resnet18_mrla', features_only=True, out_indices=(2, 3)).eval()
    groups = layer_attention(model, torch.randn(1, 3, 64, 96))
    assert [g.name for g in groups] == ['layer1', 'layer2', 'layer3']  # layer4 is not built


def test_a_model_without_mrla_is_refused():
    with pytest.raises(NotAnMRLAModelError, match='no MRLA layer'):
        layer_attention(timm.create_model('resnet10t'), torch.randn(1, 3, 32, 32))


def test_groups_without_a_forward_pass_say_so():
    model, _ = _tiny('resnet_light_basic')
    with LayerAttentionRecorder(model) as recorder:
        pass
    with pytest.raises(RuntimeError, match='no forward pass'):
        recorder.groups()
