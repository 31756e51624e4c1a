"""The MRLA ResNet family as timm models: structure, conventions and the authors' placement choices."""
import math

import pytest
import timm
import torch
from timm.models._manipulate import group_parameters
from timm.optim import create_optimizer_v2

import timm_mrla  # noqa: F401
from timm_mrla.models.resnet import MRLABaseStage
from synthetic_checkpoints import read_key_list
from timm_standins import SMALL_CONFIGS

RESNET_MODELS = ['resnet18_mrla', 'resnet34_mrla', 'resnet50_mrla', 'resnet101_mrla', 'resnet152_mrla',
                 'resnet50_mrla_base', 'resnet101_mrla_base', 'resnet50d_mrla', 'resnet101d_mrla', 'seresnet50_mrla',
                 'resnext50_32x4d_mrla', 'wide_resnet50_2_mrla']


def test_registered_and_listed():
    assert set(RESNET_MODELS) <= set(timm.list_models('*mrla*'))
    for name in RESNET_MODELS:
        assert timm.models.model_entrypoint(name).__module__ == 'timm_mrla.models.resnet'
    # registered under timm's family name, so timm's per-family tools and tests pick them up
    assert set(RESNET_MODELS) <= set(timm.list_models(module='resnet'))


@pytest.mark.parametrize('name, authors', [
    ('resnet50_mrla', 'resnet50_mrlal'), ('resnet101_mrla', 'resnet101_mrlal'), ('resnet50_mrla_base', 'resnet50_mrlab'),
])
def test_parameter_count_equals_authors(name, authors):
    with torch.device('meta'):
        model = timm.create_model(name)
    authors_params = sum(math.prod(shape) for key, shape, dtype in read_key_list(authors)
                         if not key.endswith(('running_mean', 'running_var', 'num_batches_tracked')))
    assert sum(p.numel() for p in model.parameters()) == authors_params
    if name == 'resnet50_mrla':
        assert authors_params == 25_738_452  # the authors' published count


def _timm_weights_into(model, base):
    """Copy a timm ResNet's weights into the MRLA model and switch every MRLA branch off (BN weight/bias 0)."""
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all('mrla' in k for k in missing)
    for name, module in model.named_modules():
        if name.endswith('bn_mrla'):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)


@pytest.mark.parametrize('name, base_name', [
    ('resnet18_mrla', 'resnet18'), ('resnet50_mrla', 'resnet50'), ('resnet50_mrla_base', 'resnet50c')])
def test_everything_but_mrla_is_timms_resnet(name, base_name):
    torch.manual_seed(0)
    base = timm.create_model(base_name).eval()
    model = timm.create_model(name).eval()
    _timm_weights_into(model, base)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x))


def test_drop_path_reaches_mrla_branch_only_at_a_constant_rate():
    model = timm.create_model('resnet50_mrla', drop_path_rate=0.2)
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    assert all(b.drop_path is None for b in blocks)
    assert all(b.drop_path_mrla.drop_prob == 0.2 for b in blocks)
    assert all(isinstance(b.drop_path_mrla, torch.nn.Identity) for b in timm.create_model('resnet50_mrla').layer1)


def test_drop_path_is_active_in_training():
    model = timm.create_model('resnet18_mrla', drop_path_rate=0.5).train()
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)


def test_lambda_is_excluded_from_weight_decay():
    model = timm.create_model('resnet50_mrla')
    assert model.no_weight_decay() == {'*lambda_t'}
    optimizer = create_optimizer_v2(model, 'sgd', lr=0.1, weight_decay=1e-4)
    decay_of = {id(p): group['weight_decay'] for group in optimizer.param_groups for p in group['params']}
    lambdas = [p for n, p in model.named_parameters() if n.endswith('lambda_t')]
    assert len(lambdas) == 16 and all(decay_of[id(p)] == 0 for p in lambdas)
    assert decay_of[id(model.layer1[0].mrla.v.weight)] == 1e-4
    assert timm.create_model('resnet50_mrla_base').no_weight_decay() == set()


def test_group_matcher_keeps_mrla_in_its_block():
    model = timm.create_model('resnet50_mrla')
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    for name in ('layer3.2.mrla.lambda_t', 'layer3.2.mrla.q.weight', 'layer3.2.bn_mrla.weight'):
        assert groups[name] == groups['layer3.2.conv1.weight']
    assert groups['layer3.2.conv1.weight'] != groups['layer3.1.conv1.weight']


def test_base_stages_carry_their_cache_and_restart_it():
    model = timm.create_model('resnet50_mrla_base').eval()
    seen = []
    for stage in (model.layer1, model.layer2):
        assert isinstance(stage, MRLABaseStage)
        for block in stage:
            block.mrla.register_forward_hook(lambda m, args, out: seen.append(len(args[1])))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert seen == [0, 1, 2, 0, 1, 2, 3]


@pytest.mark.parametrize('name', ['resnet50_mrla', 'resnet50_mrla_base'])
def test_grad_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5).train()
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(0)
        model(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:  # MRLA-base checkpoints the plain modules, not its training unit: fp32 rounding apart
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize('name', ['resnet50_mrla', 'resnet50_mrla_base', 'resnet18_mrla', 'resnet50d_mrla'])
def test_features_only_matches_forward_intermediates(name):
    small = SMALL_CONFIGS.get(name, {})
    torch.manual_seed(0)
    model = timm.create_model(name, **small).eval()
    torch.manual_seed(0)
    features = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4), **small).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=(1, 2, 3, 4), intermediates_only=True)
        got = features(x)
    assert [f.shape[1] for f in got] == features.feature_info.channels()
    assert [tuple(f.shape[-2:]) for f in got] == [(24, 32), (12, 16), (6, 8), (3, 4)]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_reset_classifier_and_pretrained_cfg():
    model = timm.create_model('resnet101_mrla_base')
    cfg = model.pretrained_cfg
    assert cfg['first_conv'] == 'conv1.0' and cfg['classifier'] == 'fc'
    assert cfg['paper_ids'] == 'arXiv:2302.03985' and cfg['input_size'] == (3, 224, 224)
    model.reset_classifier(7)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_in_chans_and_output_stride():
    model = timm.create_model('resnet50_mrla', in_chans=1, output_stride=16).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 1, 64, 64)).shape == (1, 2048, 4, 4)


def test_unknown_argument_is_a_type_error():
    with pytest.raises(TypeError):
        timm.create_model('resnet50_mrla', not_an_argument=1)
