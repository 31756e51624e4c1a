"""Warm-start tags: every MRLA name loads timm's own weights of its base model from ``timm/...`` repositories.

timm's real files cannot be downloaded here, so the tests lay out STAND-INS (``timm_standins``: random weights
in timm's layout under the same repository names) in an offline Hugging Face cache or serve them from the
loopback Hub; the loading code is the real one (timm, huggingface_hub, our checkpoint filters).
"""
import functools
import logging
from typing import Any, Tuple

import pytest
import timm
import torch

import timm_mrla  # noqa: F401
from timm_mrla.hub import WeightsUnavailableError, zoo
from timm_mrla.hub.zoo import WARM_START_DATA_FIELDS, warm_start_named, warm_starts
from timm_mrla.models import BASE_MODELS
from timm_mrla.models._helpers import MRLA_INPUT_NORMS
from timm_standins import SMALL_CONFIGS, add_standin, standin_model, write_standin_folder

# the models with a timm base model: CeiT has none, so no warm start and no tag (tests/test_ceit.py)
# every registered name but CeiT's, which extends no timm model (timm has no CeiT): no warm start exists for it
MRLA_NAMES = [n for n in timm.list_models('*mrla*') if n not in timm.list_models(module='ceit')]
WARM_STARTS = warm_starts(BASE_MODELS)


def _input(name: str) -> torch.Tensor:
    torch.manual_seed(0)
    size = 224 if name.startswith(('deit', 'vit')) else 64  # the ViTs' input size is fixed
    return torch.randn(1, 3, size, size)


@functools.lru_cache(maxsize=1)  # aliases and variants of one base run one after another (see the parametrize)
def _standin(arch: str, config: Tuple[Tuple[str, Any], ...] = ()) -> torch.nn.Module:
    return standin_model(arch, **dict(config))


@pytest.fixture(scope='module')
def standin_cache(tmp_path_factory):
    """One offline cache for the module's stand-ins, each laid out once."""
    return tmp_path_factory.mktemp('standin-cache')


def _relative_max_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


def test_every_name_has_pretrained_tags():
    assert sorted(MRLA_NAMES) == sorted(BASE_MODELS)  # every registered name extends a timm model
    tagged = timm.list_models('*mrla*', pretrained=True)
    published = {w.name for w in zoo()}
    assert sorted(tagged) == sorted(published | {w.name for w in WARM_STARTS})
    for name in MRLA_NAMES:
        assert any(t.startswith(f'{name}.') for t in tagged), name
    # at least each base's default tag, and the ResNet recipes that matter
    for model, base in BASE_MODELS.items():
        default = timm.models.get_pretrained_cfg(base).tag
        assert f'{model}.{default}_warmstart' in tagged, model
    for tag in ('a1_in1k', 'tv_in1k', 'tv2_in1k'):
        assert f'resnet50_mrla.{tag}_warmstart' in tagged


def test_what_the_untagged_name_loads():
    """The decision the README documents: the untagged name loads the model's first published (ImageNet) zoo
    weight if it has one, otherwise the warm start from its base model's default timm tag."""
    for name in MRLA_NAMES:
        default_zoo = [w.tag for w in zoo() if w.model == name and w.default]
        base_default = timm.models.get_pretrained_cfg(BASE_MODELS[name]).tag
        assert timm.models.get_pretrained_cfg(name).tag == (default_zoo + [f'{base_default}_warmstart'])[0], name
    # the zoo's published warm start, with its sha256
    assert timm.models.get_pretrained_cfg('tf_efficientnet_lite0_mrla').tag == 'in1k_warmstart'
    assert timm.models.get_pretrained_cfg('resnet50_mrla').tag == 'a1_in1k_warmstart'
    assert timm.models.get_pretrained_cfg('resnet18_mrla').tag == 'a1_in1k_warmstart'  # not .fmnist


@pytest.mark.parametrize('warm_start', WARM_STARTS, ids=lambda w: w.name)
def test_warm_start_config_is_the_base_tags(warm_start):
    cfg = timm.models.get_pretrained_cfg(warm_start.name)
    base = timm.models.get_pretrained_cfg(warm_start.base)
    assert cfg.hf_hub_id == base.hf_hub_id and cfg.hf_hub_id.startswith('timm/') and '@' not in cfg.hf_hub_id
    for key in WARM_START_DATA_FIELDS:
        assert getattr(cfg, key) == getattr(base, key) or getattr(base, key) is None, key
    assert cfg.tag.endswith('_warmstart')
    assert f"MRLA branches untrained; computes exactly timm's {warm_start.base}; for fine-tuning" in cfg.notes[0]
    assert cfg.first_conv == timm.models.get_pretrained_cfg(warm_start.model.split('.')[0]).first_conv


def _default_name(name: str) -> str:
    return f'{name}.{timm.models.get_pretrained_cfg(name).tag}'


@pytest.mark.parametrize('name', sorted((n for n in MRLA_NAMES if warm_start_named(_default_name(n))),
                                         key=lambda n: BASE_MODELS[n]))
def test_untagged_name_loads_its_warm_start_equal_to_the_base(name, standin_cache, monkeypatch, caplog):
    """Every name whose default tag is a warm start: ``timm.create_model(name, pretrained=True)`` finds the base's
    stand-in in the offline cache and computes exactly the base model with those weights (both in the name's
    ``SMALL_CONFIGS`` entry where it has one)."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(standin_cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    warm_start = warm_start_named(_default_name(name))
    base = _standin(BASE_MODELS[name], tuple(SMALL_CONFIGS.get(name, {}).items()))
    if not (standin_cache / f'models--timm--{warm_start.base}').exists():
        add_standin(standin_cache, warm_start.base, base)
    with caplog.at_level(logging.WARNING, logger='timm_mrla'):
        model = timm.create_model(name, pretrained=True, **SMALL_CONFIGS.get(name, {})).eval()
    assert [r.getMessage() for r in caplog.records] == [
        f"{warm_start.name}: warm start from timm/{warm_start.base}: MRLA branches untrained (switched off); "
        f"computes exactly timm's {warm_start.base}; for fine-tuning"]
    zeroed = [m for n, m in model.named_modules() if n.rsplit('.', 1)[-1] in MRLA_INPUT_NORMS]
    assert zeroed and all(not m.weight.any() and not m.bias.any() for m in zeroed)
    x = _input(name)
    with torch.no_grad():
        assert _relative_max_diff(model(x), base(x)) <= 1e-5
    assert model.pretrained_cfg['crop_pct'] == base.pretrained_cfg['crop_pct']


def test_a_warm_start_equals_timms_own_model_loaded_from_the_same_repo(hub_cache):
    """The base side loaded through timm from the same cached repository, at another tag than the default."""
    add_standin(hub_cache, 'resnet18.tv_in1k', standin_model('resnet18'))
    model = timm.create_model('resnet18_mrla.tv_in1k_warmstart', pretrained=True).eval()
    base = timm.create_model('resnet18.tv_in1k', pretrained=True).eval()
    x = _input('resnet18')
    with torch.no_grad():
        assert _relative_max_diff(model(x), base(x)) <= 1e-5
        assert _relative_max_diff(model.train()(x), base.train()(x)) <= 1e-5  # batch statistics too
    assert model.pretrained_cfg['interpolation'] == base.pretrained_cfg['interpolation'] == 'bilinear'


def test_warm_start_adapts_classes_channels_and_features(hub_cache):
    base = standin_model('resnet18')
    add_standin(hub_cache, 'resnet18.a1_in1k', base)
    model = timm.create_model('resnet18_mrla', pretrained=True, num_classes=5, in_chans=1).eval()
    assert model.num_classes == 5 and model.conv1.in_channels == 1
    torch.testing.assert_close(model.conv1.weight, base.conv1.weight.sum(1, keepdim=True))  # timm's adaptation
    features = timm.create_model('resnet18_mrla', pretrained=True, features_only=True).eval()
    base_features = timm.create_model('resnet18', features_only=True).eval()
    base_features.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith('fc.')})
    x = _input('resnet18')
    with torch.no_grad():
        for a, b in zip(features(x), base_features(x)):
            assert _relative_max_diff(a, b) <= 1e-5


def test_deit_warm_start_at_another_image_size(hub_cache):
    """timm's ViT filter resamples the position embeddings, as for timm's own DeiT."""
    add_standin(hub_cache, 'deit_tiny_patch16_224.fb_in1k', standin_model('deit_tiny_patch16_224'))
    model = timm.create_model('deit_tiny_mrla', pretrained=True, img_size=96).eval()
    base = timm.create_model('deit_tiny_patch16_224.fb_in1k', pretrained=True, img_size=96).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert _relative_max_diff(model(x), base(x)) <= 1e-5


def test_convnext_warm_start_is_exact_in_training_too(hub_cache):
    """ConvNeXt has no BatchNorm; its MRLA branches' own, at zero, leave timm's ConvNeXt exactly, with batch
    statistics as at inference. A small ConvNeXt-T stands in for Meta's ImageNet-1k weights."""
    small = SMALL_CONFIGS['convnext_tiny_mrla']
    base = standin_model('convnext_tiny', **small)
    add_standin(hub_cache, 'convnext_tiny.fb_in1k', base)
    model = timm.create_model('convnext_tiny_mrla.fb_in1k_warmstart', pretrained=True, **small)
    x = _input('convnext_tiny')
    with torch.no_grad():
        assert _relative_max_diff(model.eval()(x), base.eval()(x)) <= 1e-5
        assert torch.equal(model.train()(x), base.train()(x))  # the training unit adds exactly zero
    assert model.pretrained_cfg['crop_pct'] == timm.models.get_pretrained_cfg('convnext_tiny.fb_in1k').crop_pct


def test_missing_base_repository_offline(hub_cache):
    with pytest.raises(WeightsUnavailableError) as e:
        timm.create_model('resnet50_mrla.tv2_in1k_warmstart', pretrained=True)
    for part in ("'model.safetensors' of timm/resnet50.tv2_in1k", 'not in the local cache', 'HF_HUB_OFFLINE',
                 'hf download timm/resnet50.tv2_in1k model.safetensors --cache-dir DIR'):
        assert part in str(e.value)


def test_base_repository_from_the_loopback_server(online, tmp_path, caplog):
    # a CNN, a ViT variant's base (DeiT-III: LayerScale) and a ConvNeXt's, in their small configurations
    for name, base_name in (('resnet18_mrla', 'resnet18.a1_in1k'),
                            ('deit3_small_patch16_224_mrla', 'deit3_small_patch16_224.fb_in1k'),
                            ('convnext_tiny_mrla', 'convnext_tiny.in12k_ft_in1k')):
        small = SMALL_CONFIGS.get(name, {})
        base = standin_model(base_name.split('.')[0], **small)
        online.add_repo(write_standin_folder(tmp_path / name, base_name, base), f'timm/{base_name}')
        model = timm.create_model(name, pretrained=True, **small).eval()
        x = _input(name)
        with torch.no_grad():
            assert _relative_max_diff(model(x), base(x)) <= 1e-5
    # a base repository the server does not have
    with pytest.raises(WeightsUnavailableError, match=r"'model.safetensors' of timm/resnet34.a1_in1k.*has no "
                                                      r"repository timm/resnet34.a1_in1k.*Check the name"):
        timm.create_model('resnet34_mrla', pretrained=True)
