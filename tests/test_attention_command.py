"""``timm-mrla attention``: the figure and numbers for every family, pretrained weights loaded offline, errors."""
import json
import sys

import pytest
import timm
import torch
from PIL import Image

import timm_mrla  # noqa: F401
from timm_mrla import layer_attention
from timm_mrla.cli import main
from timm_mrla.hub.cache import add_to_cache
from timm_mrla.hub.offline import WEIGHTS_DIR
from timm_mrla.hub.zoo import weights_for
from timm_mrla.photos import sample_photo


def _attention(*args) -> int:
    return main(['attention', *map(str, args)])


def _assert_png(path) -> None:
    with Image.open(path) as image:
        assert image.format == 'PNG' and image.width > 600 and image.height > 400


@pytest.mark.parametrize('name', ['resnet18_mrla', 'resnet50_mrla_base', 'efficientnet_b0_mrla', 'deit_tiny_mrla',
                                  'deit_tiny_mrla_base', 'resnext50_32x4d_mrla', 'deit3_small_patch16_224_mrla'])
def test_figure_and_numbers_for_every_family(name, tmp_path, capsys):
    out, numbers = tmp_path / 'attention.png', tmp_path / 'attention.json'
    assert _attention(name, 'skimage:coffee', 'skimage:chelsea', '--random-init', '--out', out, '--json', numbers) == 0
    assert f'wrote {out} and {numbers}' in capsys.readouterr().out
    _assert_png(out)
    written = json.loads(numbers.read_text())
    assert written['images'] == ['skimage:coffee', 'skimage:chelsea'] and written['weights'] == 'random init'
    for group in written['groups']:
        weights = torch.tensor(group['weights'])
        assert weights.shape[:3] == (2, len(group['blocks']), len(group['blocks']))
        assert ('gates' in group) == (group['variant'] == 'light')


def test_pretrained_one_channel_model_gets_grey_input(tmp_path, hub_cache):
    """resnet18_mrla.fmnist, loaded by its tag from an offline Hub cache, takes the colour photo as a grey 28x28
    image prepared with its own data config; the numbers written are those of that input."""
    weight = weights_for(['resnet18_mrla.fmnist'])[0]
    add_to_cache(WEIGHTS_DIR / weight.name, weight.repo_id(), hub_cache)
    photo = tmp_path / 'coffee.jpg'
    sample_photo('coffee').save(photo)
    out, numbers = tmp_path / 'fmnist.png', tmp_path / 'fmnist.json'
    assert _attention(weight.name, photo, '--out', out, '--json', numbers) == 0
    _assert_png(out)
    written = json.loads(numbers.read_text())
    assert written['input_size'] == [1, 28, 28] and weight.repo_id() in written['weights']

    model = timm.create_model(weight.name, pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    grey = transform(Image.open(photo).convert('L'))[None]
    expected = layer_attention(model, grey)
    assert [g['name'] for g in written['groups']] == [g.name for g in expected]
    for group, exp in zip(written['groups'], expected):
        torch.testing.assert_close(torch.tensor(group['gates']), exp.gates)
        torch.testing.assert_close(torch.tensor(group['weights']), exp.weights)


@pytest.mark.parametrize('args, message', [
    (['resnet10t', 'skimage:coffee', '--random-init'], 'resnet10t is not an MRLA model'),
    (['no_such_model_mrla', 'skimage:coffee'], 'not a timm model name'),
    # every name has pretrained weights (resnet50_mrla: the warm start from timm's resnet50.a1_in1k), not cached here
    (['resnet50_mrla', 'skimage:coffee'],
     "cannot load resnet50_mrla: cannot download 'model.safetensors' of timm/resnet50.a1_in1k"),
    (['resnet18_mrla.no_such_tag', 'skimage:coffee'], 'or --random-init'),
    (['local-dir:no_such_folder', 'skimage:coffee'], 'cannot load local-dir:no_such_folder'),
    (['resnet18_mrla', 'missing.png', '--random-init'], 'missing.png: no such image file'),
    (['resnet18_mrla', 'skimage:moon_landing', '--random-init'], 'scikit-image photographs are'),
])
def test_clear_errors(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _attention(*args, '--out', tmp_path / 'a.png') == 2
    err = capsys.readouterr().err
    assert err.startswith('timm-mrla attention: error: ') and message in err
    assert not (tmp_path / 'a.png').exists()


def test_unreadable_image_and_missing_output_folder(tmp_path, capsys):
    not_an_image = tmp_path / 'notes.png'
    not_an_image.write_text('not an image')
    assert _attention('resnet18_mrla', not_an_image, '--random-init', '--out', tmp_path / 'a.png') == 2
    assert 'notes.png: not an image PIL can read' in capsys.readouterr().err
    assert _attention('resnet18_mrla', 'skimage:coffee', '--random-init', '--out', tmp_path / 'no' / 'a.png') == 2
    assert 'does not exist' in capsys.readouterr().err


def test_existing_files_are_replaced_only_with_force(tmp_path, capsys):
    out = tmp_path / 'mine.png'
    out.write_bytes(b'a figure someone made')
    assert _attention('resnet18_mrla', 'skimage:coffee', '--random-init', '--out', out) == 2
    assert 'mine.png exists; pass --force' in capsys.readouterr().err and out.read_bytes() == b'a figure someone made'
    assert _attention('resnet18_mrla', 'skimage:coffee', '--random-init', '--out', out, '--force') == 0
    _assert_png(out)


def test_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib raises ImportError
    assert _attention('resnet18_mrla', 'skimage:coffee', '--random-init', '--out', tmp_path / 'a.png') == 2
    assert "pip install 'timm-mrla[plot]'" in capsys.readouterr().err
