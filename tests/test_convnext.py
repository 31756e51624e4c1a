"""The MRLA ConvNeXt family on timm's ConvNeXt: where the branch sits, and that it takes the CNN fast paths."""
import pytest
import timm
import torch
from timm.models.convnext import ConvNeXtBlock

import timm_mrla  # noqa: F401
from timm_mrla import layer_attention
from timm_mrla.layers import MRLALight, mrla as mrla_module
from timm_mrla.models.convnext import MRLAConvNeXtBlock
from timm_standins import SMALL_CONFIGS

SMALL = SMALL_CONFIGS['convnext_tiny_mrla']


def test_mrla_after_every_block_at_the_blocks_drop_path_rate():
    model = timm.create_model('convnext_tiny_mrla', drop_path_rate=0.2, **SMALL)
    blocks = [b for stage in model.stages for b in stage.blocks]
    assert len(blocks) == sum(SMALL['depths']) and all(isinstance(b, MRLAConvNeXtBlock) for b in blocks)
    assert [b.mrla.num_heads for b in blocks] == [1, 2, 3, 3, 4]
    assert all(type(b.drop_path_mrla) is type(b.drop_path) and b.drop_path_mrla is not b.drop_path for b in blocks)
    rates = [(b.drop_path.drop_prob, b.drop_path_mrla.drop_prob) for b in blocks[1:]]  # the first block's is 0
    assert all(a == b for a, b in rates) and rates[-1][0] > rates[0][0] > 0
    block = blocks[0]
    assert type(block.bn_mrla) is torch.nn.BatchNorm2d and torch.all(block.bn_mrla.weight == 1)
    assert block.gamma is not None  # LayerScale stays on the residual branch
    assert model.no_weight_decay() == {'*lambda_t'}
    with pytest.raises(ValueError, match='plain ConvNeXtBlock'):
        MRLAConvNeXtBlock.extend(block)
    assert type(timm.create_model('convnext_tiny', **SMALL).stages[0].blocks[0]) is ConvNeXtBlock


def test_features_only_equal_forward_intermediates():
    torch.manual_seed(0)
    model = timm.create_model('convnext_tiny_mrla', **SMALL).eval()
    torch.manual_seed(0)
    features = timm.create_model('convnext_tiny_mrla', features_only=True, **SMALL).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = features(x)
        for a, b in zip(out, model.forward_intermediates(x, intermediates_only=True), strict=True):
            torch.testing.assert_close(a, b)
    assert features.feature_info.reduction() == [4, 8, 16, 32] and out[-1].shape == (1, 128, 2, 3)


@pytest.mark.parametrize('train', [False, True])
def test_branch_takes_the_cnn_fold_and_training_unit(train, monkeypatch):
    """The branch has the CNN MRLA-light's form (BatchNorm after the layer), so at inference it folds and in training
    it runs as the recomputing unit, although ConvNeXt's blocks return channels-last maps (test_fast_paths compares
    both with the reference form)."""
    calls = []
    folded, unit = MRLALight.forward_folded, mrla_module.light_branch_train
    monkeypatch.setattr(MRLALight, 'forward_folded', lambda self, *a: calls.append('fold') or folded(self, *a))
    monkeypatch.setattr(mrla_module, 'light_branch_train', lambda *a: calls.append('unit') or unit(*a))
    model = timm.create_model('convnext_tiny_mrla', **SMALL).train(train)
    model(torch.randn(2, 3, 64, 64))
    assert calls == ['unit' if train else 'fold'] * sum(SMALL['depths'])


def test_layer_attention_groups_are_the_stages():
    """What ``timm-mrla attention`` draws: MRLA-light restarts at each stage, so each stage is a group."""
    model = timm.create_model('convnext_tiny_mrla', **SMALL).eval()
    groups = layer_attention(model, torch.randn(2, 3, 64, 64))
    assert [(g.name, g.variant, len(g.blocks)) for g in groups] == [
        (f'stages.{i}.blocks', 'light', depth) for i, depth in enumerate(SMALL['depths'])]
    assert groups[2].weights.shape == (2, 2, 2, 3)  # images, blocks, earlier blocks, heads
