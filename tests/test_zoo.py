"""The zoo: manifest, registry tags, generated files, the demo."""
import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

import timm_mrla  # noqa: F401
from timm_mrla.demo import DEMO_WEIGHT, run_demo
from timm_mrla.hub import zoo
from timm_mrla.hub.sync import MODEL_CARDS_PATH, sync
from timm_mrla.hub.offline import base_repo, package_base_cache
from timm_mrla.warmstart import WEIGHT_PACKAGES
from timm_mrla.hub.zoo import (MANIFEST_PATH, architecture_cfg, find_weight, parse_manifest, read_manifest,
                               warm_start_named, warm_starts)
from timm_mrla.models import BASE_MODELS

FMNIST_SAMPLE = Path(__file__).parent / 'golden' / 'fmnist_test_sample.safetensors'


def test_every_zoo_weight_is_a_pretrained_tag():
    """The manifest's weights are tags as published; every other tag is a warm start from timm's own weights
    (tests/test_warmstart_tags.py)."""
    manifest = parse_manifest(read_manifest(MANIFEST_PATH))
    tagged = timm.list_models('*mrla*', pretrained=True)
    assert {w.name for w in manifest} <= set(tagged)
    assert all(warm_start_named(t) for t in tagged if t not in {w.name for w in manifest})
    for w in manifest:
        cfg = timm.models.get_pretrained_cfg(w.name)
        assert cfg.hf_hub_id == f'{read_manifest(MANIFEST_PATH)["hub_org"]}/{w.repo}@{w.revision}'
        assert cfg.license == w.license and cfg.notes == (w.summary,)
        for key, value in w.pretrained_cfg.items():
            assert getattr(cfg, key) == (tuple(value) if isinstance(value, list) else value)
    # a model with published default weights loads the first of them by default, as timm's untagged names do;
    # weights for another input (Fashion-MNIST) load only by their tag
    for w in manifest:
        first = next((x for x in manifest if x.model == w.model and x.default), None)
        if first:
            assert timm.models.get_pretrained_cfg(w.model).tag == first.tag
    assert timm.create_model('resnet18_mrla').num_classes == 1000
    assert timm.create_model('resnet18_mrla.fmnist').num_classes == 10


def test_generated_files_are_up_to_date():
    stale = sync(check=True)
    assert not stale, f'run `timm-mrla zoo sync`: {stale}'


def test_manifest_is_validated(tmp_path):
    data = read_manifest(MANIFEST_PATH)
    entry = dict(data['weights'][0])
    with pytest.raises(ValueError, match='listed twice'):
        parse_manifest(dict(data, weights=[entry, entry]))
    with pytest.raises(ValueError, match='lacks sha256'):
        parse_manifest(dict(data, weights=[dict(entry, sha256='')]))
    # a draft (no sha256, no revision yet) is no weight: `import timm_mrla` works while it is being published
    assert parse_manifest(dict(data, weights=[dict(entry, sha256='', revision='')])) == []
    assert len(zoo()) == len(data['weights']), 'the shipped manifest holds a draft: finish publishing it'
    with pytest.raises(ValueError, match='full 40-hex revision'):
        parse_manifest(dict(data, weights=[dict(entry, revision='main')]))
    with pytest.raises(ValueError, match='use true or false'):
        parse_manifest(dict(data, weights=[dict(entry, default='no')]))
    with pytest.raises(ValueError, match="'resnet18' is not a timm-mrla model"):
        architecture_cfg('resnet18')
    other_org = tmp_path / 'manifest.json'
    other_org.write_text(json.dumps(dict(data, hub_org='elsewhere')))
    assert sync(other_org, MODEL_CARDS_PATH, check=True) == [MODEL_CARDS_PATH]  # the cards name the organisation


def test_find_weight_matches_repo_and_revision_in_any_org():
    weight = {w.name: w for w in zoo()}[DEMO_WEIGHT]
    assert find_weight(f'mirror/{weight.repo}', weight.revision) == weight
    assert find_weight(f'mirror/{weight.repo}', 'main') is None


def test_demo_runs_offline(tmp_path, hub_cache, capsys):
    assert run_demo(cache_dir=tmp_path / 'demo-cache') == 0
    out = capsys.readouterr().out
    assert f'model: {DEMO_WEIGHT}' in out and 'not from the Hub' in out and 'rebuilt from the' in out
    lines = {line.split(':')[0]: line for line in out.splitlines()}
    assert 'tiger cat' in lines['chelsea'] and 'espresso' in lines['coffee']
    # a second run finds the local cache already laid out
    assert run_demo(cache_dir=tmp_path / 'demo-cache') == 0
    assert 'espresso' in capsys.readouterr().out


def test_model_cards_lists_every_weight():
    text = MODEL_CARDS_PATH.read_text()
    for w in zoo():
        assert f'## {w.name}' in text and w.sha256 in text
        for metric in w.metrics:
            assert metric.command in text
    assert "**MRLA branches untrained; computes exactly timm's X; for fine-tuning**" in text
    for w in warm_starts(BASE_MODELS):
        assert f'| `{w.name}` | `{w.base}` | `timm/{w.base}` |' in text


@pytest.mark.parametrize('name', ['resnet18_mrla.fmnist'] + [f'tf_efficientnet_lite{i}_mrla.in1k_ft_fmnist' for i in range(3)])
def test_fashion_mnist_weights_classify_real_test_images(name, zoo_cache):
    """A published Fashion-MNIST weight, laid out offline from hub/weights/ and loaded by its tag through the Hub
    code path with its own preprocessing, classifies the first 200 real Fashion-MNIST test images as well as its
    card's test top-1 (on all 10,000) says, within the sampling error of 200 images (untrained: about 10%)."""
    _, done, missing = zoo_cache
    assert name in done and not missing
    weight = {w.name: w for w in zoo()}[name]
    model = timm.create_model(name, pretrained=True).eval()
    assert model.num_classes == 10 and model.pretrained_cfg['label_names'][9] == 'Ankle boot'
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    sample = load_file(FMNIST_SAMPLE)
    x = torch.stack([transform(Image.fromarray(image.numpy())) for image in sample['images']])
    assert x.shape == (200, 1, 28, 28)
    with torch.inference_mode():
        accuracy = (model(x).argmax(-1) == sample['labels']).float().mean().item()
    test_top1 = weight.metrics[0].value / 100  # the first metric is that of these weights
    assert abs(accuracy - test_top1) <= 0.05, (accuracy, test_top1)


def test_lite_bases_laid_out_from_the_packages_compute_the_warm_starts(zoo_cache):
    """`zoo cache` lays out timm's tf_efficientnet_lite{0,1,2}.in1k from the packages the warm starts are built from,
    so the Lite transfer recipe starts timm's model and the MRLA warm start from the same function, also as the
    recipe adapts them (one input channel, a new 10-class head); a repository already in the cache is left alone."""
    cache, done, _ = zoo_cache
    for package, base_arch in WEIGHT_PACKAGES.items():
        assert any(name.startswith(base_repo(package)) for name in done)
        for kwargs, x in (({}, torch.randn(2, 3, 96, 96)),
                          (dict(in_chans=1, num_classes=10), torch.randn(2, 1, 28, 28))):
            base = timm.create_model(f'{base_arch}.in1k', pretrained=True, **kwargs).eval()
            warm_start = timm.create_model(f'{base_arch}_mrla.in1k_warmstart', pretrained=True, **kwargs).eval()
            with torch.no_grad():
                torch.testing.assert_close(warm_start.forward_head(warm_start.forward_features(x), pre_logits=True),
                                           base.forward_head(base.forward_features(x), pre_logits=True))
                if not kwargs:
                    torch.testing.assert_close(warm_start(x), base(x))
        assert package_base_cache(cache, package) is None


def test_zoo_folder_names_an_entry_for_an_unknown_model(tmp_path, capsys):
    from timm_mrla.cli import main
    data = read_manifest(MANIFEST_PATH)
    entry = dict(data['weights'][0], model='resnet18', tag='x', sha256='', revision='')
    manifest = tmp_path / 'manifest.json'
    manifest.write_text(json.dumps(dict(data, weights=data['weights'] + [entry])))
    assert main(['zoo', 'folder', 'resnet18.x', '--manifest', str(manifest), '--checkpoint', str(tmp_path / 'c.pth'),
                 '--out', str(tmp_path / 'out')]) == 2
    assert "entry resnet18.x: 'resnet18' is not a timm-mrla model" in capsys.readouterr().err
