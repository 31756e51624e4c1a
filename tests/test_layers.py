"""The MRLA layers against their literal reference forms, and the runtime contracts they promise."""
import pytest
import torch
import torch.nn as nn

from timm_mrla.layers import MRLABase, MRLALight, eca_kernel_size, mrla_base_reference, mrla_light_reference


@pytest.mark.parametrize('channels, kernel_size', [(24, 3), (64, 3), (192, 5), (256, 5), (1024, 5), (2048, 7)])
def test_eca_kernel_size_matches_authors_checkpoints(channels, kernel_size):
    # the sizes of Wq in the authors' state dicts (official-keys/*.tsv)
    assert eca_kernel_size(channels) == kernel_size


@pytest.mark.parametrize('kwargs, message', [
    (dict(), 'exactly one of num_heads or head_dim'),
    (dict(num_heads=2, head_dim=16), 'exactly one of num_heads or head_dim'),
    (dict(head_dim=24), 'must be positive and divide the channel count 64'),
    (dict(num_heads=3), 'must be positive and divide the channel count 64'),
    (dict(head_dim=16, kernel_size=4), 'kernel_size must be odd'),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MRLALight(64, **kwargs)


def _inputs(shape, dtype=torch.float64, n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype, requires_grad=True) for _ in range(n)]


def _grads(outputs, tensors):
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outputs)
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize('value_act', [None, nn.GELU])
@pytest.mark.parametrize('dim, head_dim, hw', [(64, 32, (7, 5)), (48, 16, (4, 4)), (24, 3, (9, 9))])
def test_light_equals_reference(dim, head_dim, hw, value_act):
    layer = MRLALight(dim, head_dim=head_dim, value_act_layer=value_act, dtype=torch.float64)
    x, prev = _inputs((3, dim, *hw), n=2)
    out = layer(x, prev)
    ref = mrla_light_reference(layer, x, prev)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    tensors = [x, prev, *layer.parameters()]
    for g, g_ref in zip(_grads([out], tensors), _grads([ref], tensors)):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('num_blocks', [1, 4])
def test_base_equals_reference_over_a_group(num_blocks):
    dim, hw = 64, (6, 5)
    layers = [MRLABase(dim, head_dim=16, dtype=torch.float64) for _ in range(num_blocks)]
    xs = _inputs((2, dim, *hw), n=num_blocks)
    keys, values, outs = [], [], []
    ref_keys = ref_values = None
    ref_outs = []
    for layer, x in zip(layers, xs):
        out, key, value = layer(x, keys, values)
        keys.append(key)
        values.append(value)
        outs.append(out)
        ref_out, ref_keys, ref_values = mrla_base_reference(layer, x, ref_keys, ref_values)
        ref_outs.append(ref_out)
        torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    # the lists hold exactly the concatenated cache of the reference
    torch.testing.assert_close(torch.stack(keys, 1).flatten(2), ref_keys)
    torch.testing.assert_close(torch.stack(values, 1), ref_values)
    tensors = [*xs, *(p for layer in layers for p in layer.parameters())]
    for g, g_ref in zip(_grads(outs, tensors), _grads(ref_outs, tensors)):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_base_rejects_uneven_cache():
    layer = MRLABase(32, head_dim=16)
    x = torch.randn(1, 32, 4, 4)
    _, key, value = layer(x, [], [])
    with pytest.raises(ValueError, match='1 keys but 0 values'):
        layer(x, [key], [])


def test_light_gate_is_per_head():
    """Channels of one head share one gate: with v the identity and lambda 0, out / x is constant per head."""
    layer = MRLALight(8, head_dim=4, dtype=torch.float64)
    with torch.no_grad():
        layer.v.weight.zero_()
        layer.v.weight[:, 0, 1, 1] = 1
        layer.lambda_t.zero_()
    x = torch.rand(2, 8, 3, 3, dtype=torch.float64) + 0.5
    ratio = (layer(x, torch.zeros_like(x)) / x).flatten(2)
    assert torch.allclose(ratio[:, :4], ratio[:, :1, :1].expand(-1, 4, 9))
    assert torch.allclose(ratio[:, 4:], ratio[:, 4:5, :1].expand(-1, 4, 9))
    assert not torch.allclose(ratio[:, 0, 0], ratio[:, 4, 0])
    assert ((ratio > 0) & (ratio < 1)).all()  # a sigmoid gate


def test_factory_kwargs_and_init():
    layer = MRLALight(64, head_dim=32, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    assert layer.lambda_t.shape == (64,)
    torch.manual_seed(0)
    big = MRLALight(4096, head_dim=32)
    assert abs(big.lambda_t.mean()) < 0.1 and abs(big.lambda_t.std() - 1) < 0.1  # N(0, 1), as the authors


def test_meta_device():
    light = MRLALight(64, head_dim=32, device='meta')
    base = MRLABase(64, head_dim=16, device='meta')
    x = torch.empty(2, 64, 7, 7, device='meta')
    assert light(x, x).shape == (2, 64, 7, 7) and light(x, x).device.type == 'meta'
    out, key, value = base(x, [], [])
    out, _, _ = base(x, [key], [value])
    assert out.shape == (2, 64, 7, 7) and key.shape == (2, 4, 16)


def test_torchscript():
    light = MRLALight(32, head_dim=8).eval()
    base = MRLABase(32, head_dim=8).eval()
    x, prev = torch.randn(2, 32, 5, 5), torch.randn(2, 32, 5, 5)
    torch.testing.assert_close(torch.jit.script(light)(x, prev), light(x, prev))
    _, key, value = base(x, [], [])
    scripted = torch.jit.script(base)
    for a, b in zip(scripted(prev, [key], [value]), base(prev, [key], [value])):
        torch.testing.assert_close(a, b)


def test_compile_without_graph_breaks():
    torch._dynamo.reset()
    light = MRLALight(32, head_dim=8)
    base = MRLABase(32, head_dim=8)
    x, prev = torch.randn(2, 32, 5, 5), torch.randn(2, 32, 5, 5)
    _, key, value = base(x, [], [])
    # fullgraph=True turns any graph break into an error; aot_eager also traces the backward
    compiled_light = torch.compile(light, backend='aot_eager', fullgraph=True)
    compiled_base = torch.compile(base, backend='aot_eager', fullgraph=True)
    torch.testing.assert_close(compiled_light(x, prev), light(x, prev))
    compiled_light(x.requires_grad_(), prev).sum().backward()
    for a, b in zip(compiled_base(prev, [key], [value]), base(prev, [key], [value])):
        torch.testing.assert_close(a, b)
