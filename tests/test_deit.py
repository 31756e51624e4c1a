"""The MRLA DeiT family on timm's VisionTransformer: the authors' quirks, the patch grid, timm's APIs."""
import math

import pytest
import timm
import torch

import timm_mrla  # noqa: F401
from timm_mrla.models.deit import MRLABaseBlock, MRLALightBlock, _to_grid, _to_tokens
from synthetic_checkpoints import read_key_list

DEIT_MODELS = ['deit_mrla', 'deit_tiny_mrla', 'deit_small_mrla', 'deit_base_mrla',
               'deit_tiny_mrla_base', 'deit_small_mrla_base', 'deit_base_mrla_base',
               # timm's FEAT_INTER_FILTERS (features_only, forward_intermediates) pick ViTs by module: 'deit' is one
               'vit_small_patch16_224_mrla', 'vit_base_patch16_224_mrla', 'deit3_small_patch16_224_mrla']


@pytest.mark.parametrize('name, authors', [
    ('deit_tiny_mrla', 'deit_mrlal_tiny_patch16_224'), ('deit_small_mrla', 'deit_mrlal_small_patch16_224'),
    ('deit_tiny_mrla_base', 'deit_mrlab_tiny_patch16_224')])
def test_parameter_count_equals_authors(name, authors):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == sum(math.prod(s) for _, s, _ in read_key_list(authors))


def test_registered():
    assert set(DEIT_MODELS) <= set(timm.list_models(module='deit'))
    with torch.device('meta'):
        alias, tiny = timm.create_model('deit_mrla'), timm.create_model('deit_tiny_mrla')
    assert [(k, v.shape) for k, v in alias.state_dict().items()] == [(k, v.shape) for k, v in tiny.state_dict().items()]


def test_class_token_receives_its_own_layernorm():
    """The authors' MRLA output keeps LN(x) in the class-token slot, so the block adds it to the class token."""
    torch.manual_seed(0)
    block = MRLALightBlock(64, 4).eval()
    x = torch.randn(2, 1 + 12, 64)
    with torch.no_grad():
        y = x + block.attn(block.norm1(x))
        y = y + block.mlp(block.norm2(y))
        out = block(x, (3, 4), 1)
    torch.testing.assert_close(out[:, :1], y[:, :1] + block.norm_mrla(y)[:, :1])
    assert not torch.allclose(out[:, 1:], y[:, 1:] + block.norm_mrla(y)[:, 1:])


def test_base_cache_restarts_every_four_blocks():
    model = timm.create_model('deit_tiny_mrla_base').eval()
    seen = []
    for block in model.blocks:
        block.mrla.register_forward_hook(lambda m, args, out: seen.append(len(args[1])))
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert seen == [0, 1, 2, 3] * 3


@pytest.mark.parametrize('name', ['deit_tiny_mrla', 'deit_tiny_mrla_base'])
def test_grid_comes_from_the_patch_embedding(name):
    """A non-square input puts the tokens on their real grid, not on a square root of their count."""
    model = timm.create_model(name, dynamic_img_size=True).eval()
    grids = []
    model.blocks[0].mrla.register_forward_hook(lambda m, args, out: grids.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 160, 224)).shape == (2, 1000)
        assert model(torch.randn(1, 3, 96, 240)).shape == (1, 1000)
    assert grids == [(10, 14), (6, 15)]


def test_tokens_are_laid_out_row_major():
    """Token r * W + c lands at row r, column c of the feature map, as the patch embedding produced it."""
    tokens = torch.arange(6, dtype=torch.float32).view(1, 6, 1).expand(1, 6, 8)
    feature_map = _to_grid(tokens, (2, 3))
    assert feature_map.shape == (1, 8, 2, 3)
    torch.testing.assert_close(feature_map[0, 0], torch.tensor([[0., 1., 2.], [3., 4., 5.]]))
    torch.testing.assert_close(_to_tokens(feature_map), tokens)


@pytest.mark.parametrize('kwargs, size', [(dict(img_size=160), (160, 160)),
                                          (dict(dynamic_img_size=True, dynamic_img_pad=True), (150, 100))])
def test_other_sizes(kwargs, size):
    for name in ('deit_tiny_mrla', 'deit_tiny_mrla_base'):
        model = timm.create_model(name, **kwargs).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, *size)).shape == (1, 1000)


def test_clear_errors_where_the_grid_cannot_be_kept():
    with pytest.raises(ValueError, match='patch_drop_rate must be 0'):
        timm.create_model('deit_tiny_mrla', patch_drop_rate=0.25)
    model = timm.create_model('deit_tiny_mrla').eval()
    with pytest.raises(AssertionError, match=r"Input height \(160\) doesn't match model \(224\)"):
        model(torch.randn(1, 3, 160, 160))


def test_drop_path():
    light = timm.create_model('deit_tiny_mrla', drop_path_rate=0.1)
    assert light.blocks[0].drop_path1.__class__.__name__ == 'Identity'
    assert light.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # timm's linear rule
    base = timm.create_model('deit_tiny_mrla_base')
    assert [b.drop_path1.drop_prob for b in base.blocks] == [0.1] * 12  # the authors' constant rate
    base = timm.create_model('deit_tiny_mrla_base', drop_path_rate=0.3)
    assert {b.drop_path2.drop_prob for b in base.blocks} == {0.3}
    base = timm.create_model('deit_tiny_mrla_base', drop_path_rate=0.)
    assert all(b.drop_path1.__class__.__name__ == 'Identity' for b in base.blocks)


@pytest.mark.parametrize('name', ['deit_tiny_mrla', 'deit_tiny_mrla_base'])
def test_grad_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, drop_path_rate=0.).train()
    x = torch.randn(2, 3, 224, 224)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize('name', ['deit_tiny_mrla', 'deit_tiny_mrla_base'])
def test_forward_intermediates(name):
    model = timm.create_model(name, dynamic_img_size=True).eval()
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        final, taps = model.forward_intermediates(x, indices=[3, 7, 11])
        torch.testing.assert_close(final, model.forward_features(x))
        assert [t.shape for t in taps] == [(1, 192, 8, 10)] * 3
        nlc = model.forward_intermediates(x, indices=2, output_fmt='NLC', intermediates_only=True)
        assert [t.shape for t in nlc] == [(1, 80, 192)] * 2
        with_prefix = model.forward_intermediates(x, indices=[5], return_prefix_tokens=True, intermediates_only=True)
        assert with_prefix[0][1].shape == (1, 1, 192)
        early = model.forward_intermediates(x, indices=[5], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], model.forward_intermediates(x, indices=[5], intermediates_only=True)[0])
        as_dict = model.forward_intermediates(x, indices=[5], output_dict=True)
        assert set(as_dict) == {'image_intermediates', 'image_features'}


@pytest.mark.parametrize('name', ['deit_small_mrla_base', 'deit3_small_patch16_224_mrla'])
def test_features_only_backbone(name):
    model = timm.create_model(name, features_only=True, out_indices=(3, 7, 11)).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 224, 224))
    assert [f.shape for f in features] == [(1, 384, 14, 14)] * 3
    assert model.feature_info.channels() == [384] * 3


def test_weight_decay_groups_and_blocks():
    model = timm.create_model('deit_tiny_mrla')
    assert {'pos_embed', 'cls_token', '*lambda_t'} <= model.no_weight_decay()
    assert isinstance(model.blocks[0], MRLALightBlock)
    assert isinstance(timm.create_model('deit_tiny_mrla_base').blocks[0], MRLABaseBlock)
    from timm.models._manipulate import group_parameters
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert groups['blocks.4.mrla.lambda_t'] == groups['blocks.4.attn.qkv.weight'] != groups['blocks.5.attn.qkv.weight']
