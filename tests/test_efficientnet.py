"""The MRLA EfficientNet family on timm's EfficientNet."""
import pytest
import timm
import torch
from timm.models._efficientnet_blocks import InvertedResidual

import timm_mrla  # noqa: F401
from timm_mrla.models.efficientnet import MRLAInvertedResidual

EFFICIENTNET_MODELS = ['efficientnet_mrla', 'efficientnet_b0_mrla', 'efficientnet_b1_mrla', 'efficientnet_b2_mrla']


def _params(model):
    return sum(p.numel() for p in model.parameters())


def test_b0_adds_exactly_the_authors_parameters():
    with torch.device('meta'):
        assert _params(timm.create_model('efficientnet_b0_mrla')) - _params(timm.create_model('efficientnet_b0')) \
            == 12_354


@pytest.mark.parametrize('name', EFFICIENTNET_MODELS)
def test_mrla_only_in_inverted_residuals_with_a_skip(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    blocks = [b for stage in model.blocks for b in stage]
    with_mrla = [b for b in blocks if hasattr(b, 'mrla')]
    assert with_mrla and all(isinstance(b, MRLAInvertedResidual) and b.has_skip for b in with_mrla)
    assert all(not b.has_skip for b in blocks if type(b) is InvertedResidual)
    assert all(b.mrla.num_heads == 8 for b in with_mrla)
    assert sum(isinstance(b, InvertedResidual) and b.has_skip for b in blocks) == len(with_mrla)
    if name.startswith('efficientnet_b0') or name == 'efficientnet_mrla':
        assert len(with_mrla) == 9


def test_everything_but_mrla_is_timms_efficientnet():
    torch.manual_seed(0)
    base = timm.create_model('efficientnet_b0').eval()
    model = timm.create_model('efficientnet_b0_mrla').eval()
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all('mrla' in k for k in missing)
    for name, module in model.named_modules():
        if name.endswith('bn_mrla'):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x))


def test_mrla_branch_uses_the_blocks_drop_path_rate():
    model = timm.create_model('efficientnet_b0_mrla', drop_path_rate=0.2)
    rates = [(b.drop_path.drop_prob, b.drop_path_mrla.drop_prob) for stage in model.blocks for b in stage
             if hasattr(b, 'mrla')]
    assert all(a == b for a, b in rates) and rates[-1][0] > rates[0][0] > 0


def test_bn_mrla_is_a_fresh_norm():
    model = timm.create_model('efficientnet_b0_mrla')
    block = model.blocks[1][1]
    assert type(block.bn_mrla) is type(block.bn3) and block.bn_mrla is not block.bn3
    assert torch.all(block.bn_mrla.weight == 1) and torch.all(block.bn_mrla.bias == 0)
    assert block.bn_mrla.running_var.eq(1).all() and int(block.bn_mrla.num_batches_tracked) == 0


def test_extend_refuses_blocks_without_a_skip():
    model = timm.create_model('efficientnet_b0')
    with pytest.raises(ValueError, match='with a skip connection'):
        MRLAInvertedResidual.extend(model.blocks[1][0])


def test_alias_is_b0():
    with torch.device('meta'):
        a, b = timm.create_model('efficientnet_mrla'), timm.create_model('efficientnet_b0_mrla')
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]


@pytest.mark.parametrize('name, size', [('efficientnet_b1_mrla', 240), ('efficientnet_b2_mrla', 256)])
def test_default_input_sizes(name, size):
    model = timm.create_model(name).eval()
    assert model.pretrained_cfg['input_size'] == (3, size, size)
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, size, size)).shape[-2:] == (8, 8)


def test_features_only_and_weight_decay():
    torch.manual_seed(0)
    model = timm.create_model('efficientnet_b0_mrla').eval()
    torch.manual_seed(0)
    features = timm.create_model('efficientnet_b0_mrla', features_only=True).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(features(x), model.forward_intermediates(x, intermediates_only=True)):
            torch.testing.assert_close(a, b)
    assert features.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert model.no_weight_decay() == {'*lambda_t'}
