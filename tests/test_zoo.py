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
from timm_mrla.hub.offline import offline_cache
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


def test_fashion_mnist_weights_classify_real_test_images(hub_cache):
    """The published resnet18_mrla.fmnist, laid out offline from hub/weights/ and loaded by its tag through the
    Hub code path with its own preprocessing, classifies the first 200 real Fashion-MNIST test images about as
    well as its card's test top-1 says (an untrained model scores about 10%)."""
    done, missing = offline_cache(hub_cache)
    assert 'resnet18_mrla.fmnist' in done and not missing
    model = timm.create_model('resnet18_mrla.fmnist', pretrained=True).eval()
    assert model.num_classes == 10 and model.pretrained_cfg['label_names'][9] == 'Ankle boot'
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    sample = load_file(FMNIST_SAMPLE)
    x = torch.stack([transform(Image.fromarray(image.numpy())) for image in sample['images']])
    assert x.shape == (200, 1, 28, 28)
    with torch.inference_mode():
        accuracy = (model(x).argmax(-1) == sample['labels']).float().mean().item()
    assert accuracy >= 0.85


def test_zoo_folder_names_an_entry_for_an_unknown_model(tmp_path, capsys):
    from timm_mrla.cli import main
    data = read_manifest(MANIFEST_PATH)
    entry = dict(data['weights'][0], model='resnet18', tag='x', sha256='', revision='')
    manifest = tmp_path / 'manifest.json'
    manifest.write_text(json.dumps(dict(data, weights=data['weights'] + [entry])))
    assert main(['zoo', 'folder', 'resnet18.x', '--manifest', str(manifest), '--checkpoint', str(tmp_path / 'c.pth'),
                 '--out', str(tmp_path / 'out')]) == 2
    assert "entry resnet18.x: 'resnet18' is not a timm-mrla model" in capsys.readouterr().err
