"""The authors' checkpoints load by every route timm takes a checkpoint, each giving the authors' golden outputs:
``create_model(checkpoint_path=...)``, ``timm.models.load_checkpoint``, ``load_state_dict``, and timm's own
``validate.py --checkpoint`` and ``train.py --initial-checkpoint`` through our launcher (those two only where a
checkout of timm's repository is named by ``TIMM_REPO``). One that does not fit gets an error naming the keys."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from timm_mrla.launch import launch
from timm_mrla.models import AuthorsCheckpointError
from synthetic_checkpoints import (assert_golden_outputs, deit_main_checkpoint, golden_input, resnet_train_checkpoint,
                                   synthetic_state_dict, timm_train_checkpoint)

FIX = 'timm-mrla convert CHECKPOINT --model NAME --out DIR'


def _model(name: str, **kwargs) -> nn.Module:
    return timm.create_model(name, drop_path_rate=0., **kwargs)  # the golden train logits were taken without


def _ddp(state_dict: dict) -> dict:
    return {f'module.{k}': v for k, v in state_dict.items()}


# every family and variant of the authors' models, with and without DDP's 'module.' prefix
@pytest.mark.parametrize('authors_name, model_name, ddp', [
    ('resnet50_mrlal', 'resnet50_mrla', True),
    ('resnet50_mrlab', 'resnet50_mrla_base', False),
    ('efficientnet_mrla_b0', 'efficientnet_b0_mrla', True),
    ('deit_mrlal_tiny_patch16_224', 'deit_tiny_mrla', False),
    ('deit_mrlab_tiny_patch16_224', 'deit_tiny_mrla_base', True),
])
def test_load_state_dict_maps_the_authors_layouts(authors_name, model_name, ddp):
    state_dict = synthetic_state_dict(authors_name)
    model = _model(model_name)
    result = model.load_state_dict(_ddp(state_dict) if ddp else state_dict)
    assert not result.missing_keys and not result.unexpected_keys
    assert_golden_outputs(model, authors_name)


@pytest.mark.parametrize('authors_name, model_name, layout', [
    ('resnet50_mrlal', 'resnet50_mrla', resnet_train_checkpoint),  # as resnet/train.py saves it
    ('deit_mrlab_tiny_patch16_224', 'deit_tiny_mrla_base', deit_main_checkpoint),
])
def test_create_model_with_checkpoint_path(tmp_path, authors_name, model_name, layout):
    torch.save(layout(authors_name), tmp_path / 'checkpoint.pth.tar')
    model = _model(model_name, checkpoint_path=str(tmp_path / 'checkpoint.pth.tar'))
    assert_golden_outputs(model, authors_name)


def test_pretrained_cfg_overlay_file(tmp_path):
    """train.py's --pretrained-path: timm's pretrained loading, through the family's checkpoint filter."""
    file = str(tmp_path / 'checkpoint.pth')
    torch.save(deit_main_checkpoint('deit_mrlal_tiny_patch16_224'), file)
    model = _model('deit_tiny_mrla', pretrained=True, pretrained_cfg_overlay=dict(file=file))
    # with --num-classes, train.py asks for a new head (num_classes=-1); the rest is the authors'
    ten = _model('deit_tiny_mrla', pretrained=True, num_classes=10,
                 pretrained_cfg_overlay=dict(file=file, num_classes=-1))
    authors = model.state_dict()
    assert all(torch.equal(v, authors[k]) for k, v in ten.state_dict().items() if not k.startswith('head.'))
    assert ten.head.weight.shape == (10, 192)
    assert_golden_outputs(model, 'deit_mrlal_tiny_patch16_224')


def test_timm_load_checkpoint_takes_the_ema_weights_as_timm_does(tmp_path):
    checkpoint = timm_train_checkpoint('efficientnet_mrla_b0')
    checkpoint['state_dict'] = dict(checkpoint['state_dict'], **{'classifier.bias': torch.ones(1000)})
    torch.save(checkpoint, tmp_path / 'last.pth.tar')
    model = _model('efficientnet_b0_mrla')
    timm.models.load_checkpoint(model, str(tmp_path / 'last.pth.tar'))  # use_ema=True: 'state_dict_ema'
    assert_golden_outputs(model, 'efficientnet_mrla_b0')
    timm.models.load_checkpoint(model, str(tmp_path / 'last.pth.tar'), use_ema=False)
    torch.testing.assert_close(model.classifier.bias, torch.ones(1000), rtol=0, atol=0)


def test_timm_load_checkpoint_of_a_bare_safetensors_file(tmp_path):
    save_file(synthetic_state_dict('deit_mrlal_tiny_patch16_224'), str(tmp_path / 'weights.safetensors'))
    model = _model('deit_tiny_mrla')
    timm.models.load_checkpoint(model, str(tmp_path / 'weights.safetensors'))
    assert_golden_outputs(model, 'deit_mrlal_tiny_patch16_224')


def test_a_model_inside_a_larger_module():
    """The mapping works under the model's prefix, and ``strict=False`` reports what is missing in our names."""
    wrapper = nn.ModuleDict({'backbone': _model('deit_tiny_mrla'), 'extra': nn.Linear(2, 2)})
    state_dict = {f'backbone.{k}': v for k, v in _ddp(synthetic_state_dict('deit_mrlal_tiny_patch16_224')).items()}
    state_dict.update({f'extra.{k}': v for k, v in wrapper['extra'].state_dict().items()})
    assert not any(wrapper.load_state_dict(state_dict))
    assert_golden_outputs(wrapper['backbone'], 'deit_mrlal_tiny_patch16_224')

    del state_dict['backbone.module.blocks.3.mrla.normo.weight']
    result = _model('deit_tiny_mrla').load_state_dict({k[len('backbone.'):]: v for k, v in state_dict.items()
                                                       if k.startswith('backbone.')}, strict=False)
    assert result.missing_keys == ['blocks.3.norm_mrla_prev.weight'] and not result.unexpected_keys
    result = wrapper.load_state_dict(state_dict, strict=False)
    assert result.missing_keys == ['backbone.blocks.3.norm_mrla_prev.weight'] and not result.unexpected_keys


def test_timm_layout_state_dicts_load_as_before():
    model = _model('resnet18_mrla')
    state_dict = {k: torch.rand_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    other = _model('resnet18_mrla')
    assert not any(other.load_state_dict(state_dict))
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state_dict.items())
    # torch's own errors, as for any timm model: a DDP prefix (timm's load_checkpoint strips it) or a missing key
    with pytest.raises(RuntimeError, match='Unexpected key') as e:
        other.load_state_dict(_ddp(state_dict))
    assert not isinstance(e.value, AuthorsCheckpointError)
    del state_dict['layer1.0.mrla.v.weight']
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "layer1.0.mrla.v.weight"') as e:
        other.load_state_dict(state_dict)
    assert not isinstance(e.value, AuthorsCheckpointError)


def test_a_checkpoint_of_another_architecture_is_named(tmp_path):
    torch.save(resnet_train_checkpoint('resnet50_mrlab'), tmp_path / 'base.pth.tar')
    with pytest.raises(AuthorsCheckpointError) as e:
        _model('resnet50_mrla', checkpoint_path=str(tmp_path / 'base.pth.tar'))
    message = str(e.value)
    assert '13 checkpoint keys map to nothing in resnet50_mrla: conv1.0.weight, ' in message  # its deep stem
    assert 'more)' in message and FIX in message


def test_missing_keys_and_shape_mismatches_are_named():
    state_dict = _ddp(synthetic_state_dict('resnet50_mrlal'))
    del state_dict['module.layer2.1.bn_mrla.running_var']
    state_dict['module.layer3.0.mrla.mrla.Wv.weight'] = torch.zeros(512, 1, 3, 3)
    with pytest.raises(AuthorsCheckpointError) as e:
        _model('resnet50_mrla').load_state_dict(state_dict)
    message = str(e.value)
    assert '1 keys of resnet50_mrla are missing from the checkpoint: layer2.1.bn_mrla.running_var' in message
    assert 'module.layer3.0.mrla.mrla.Wv.weight (512, 1, 3, 3) vs (1024, 1, 3, 3)' in message and FIX in message
    # strict=False forgives missing keys, not shapes: a 1000-class checkpoint in a 10-class model
    with pytest.raises(AuthorsCheckpointError, match=r'module.fc.weight \(1000, 2048\) vs \(10, 2048\)'):
        _model('resnet50_mrla', num_classes=10).load_state_dict(state_dict, strict=False)


def test_train_resume_of_an_authors_checkpoint_is_refused(tmp_path, capsys, monkeypatch):
    """--resume would give timm's optimizer the authors' optimizer state: the launcher stops before train.py runs."""
    monkeypatch.setattr(sys, 'argv', list(sys.argv))
    monkeypatch.setattr(sys, 'path', list(sys.path))
    script = tmp_path / 'train.py'
    script.write_text('raise SystemExit("train.py ran")\n')
    authors = tmp_path / 'authors.pth.tar'
    torch.save(resnet_train_checkpoint('resnet50_mrlal'), authors)
    with pytest.raises(SystemExit) as e:
        launch('train', [str(script), '--model', 'resnet50_mrla', f'--resume={authors}'])
    assert e.value.code == 2
    message = capsys.readouterr().err
    assert f"--resume {authors} is a checkpoint of the MRLA authors' code" in message
    assert f'--initial-checkpoint {authors}' in message and '--no-resume-opt' in message

    config = tmp_path / 'args.yaml'  # as train.py writes it into its output folder, for -c to read back
    config.write_text(f'model: resnet50_mrla\nresume: {authors}\nno_resume_opt: false\n')
    with pytest.raises(SystemExit) as e:
        launch('train', [str(script), '-c', str(config)])
    assert e.value.code == 2 and "is a checkpoint of the MRLA authors' code" in capsys.readouterr().err
    with pytest.raises(SystemExit, match='train.py ran'):  # the command line overrides the file
        launch('train', [str(script), '--config', str(config), '--no-resume-opt'])

    ours = tmp_path / 'last.pth.tar'  # as train.py saves it
    torch.save({'epoch': 3, 'state_dict': _model('resnet18_mrla').state_dict(), 'optimizer': {}, 'version': 2}, ours)
    for args in (['--model', 'resnet50_mrla', '--resume', str(authors), '--no-resume-opt'],
                 ['--model', 'resnet18_mrla', '--resume', str(ours)],
                 ['--model', 'resnet50', '--resume', str(authors)]):  # not an MRLA model: timm's business
        with pytest.raises(SystemExit, match='train.py ran'):
            launch('train', [str(script), *args])


# timm's own scripts, run through our launcher from a checkout of timm's repository

@pytest.fixture(scope='module')
def timm_repo() -> Path:
    repo = os.environ.get('TIMM_REPO')
    if not repo:
        pytest.skip("TIMM_REPO (a checkout of github.com/huggingface/pytorch-image-models) is not set")
    repo = Path(repo)
    if not (repo / 'train.py').is_file() or not (repo / 'validate.py').is_file():
        pytest.fail(f'TIMM_REPO={repo} holds no train.py and validate.py')
    return repo


def _image_folder(root: Path, size: int = 64) -> torch.Tensor:
    """Two RGB PNGs of one class under ``root/a``; returns them as timm's eval transform at ``size`` with
    ``crop_pct=1`` gives them to the model (the images are already that size: nothing resizes or crops)."""
    pixels = ((golden_input(2, (size, size)) * 0.25 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    (root / 'a').mkdir(parents=True)
    for i, image in enumerate(pixels):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / 'a' / f'{i}.png')
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    return (pixels.float() / 255 - mean) / std


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)


def test_validate_py_checkpoint(tmp_path, timm_repo):
    checkpoint = tmp_path / 'r50_mrlal.pth.tar'
    torch.save(resnet_train_checkpoint('resnet50_mrlal'), checkpoint)
    images = _image_folder(tmp_path / 'data')
    model = _model('resnet50_mrla', checkpoint_path=str(checkpoint)).eval()
    with torch.no_grad():
        expected_loss = nn.functional.cross_entropy(model(images), torch.zeros(2, dtype=torch.long)).item()
    assert_golden_outputs(model, 'resnet50_mrlal')  # the weights validate.py is expected to evaluate

    done = _run('-m', 'timm_mrla.validate', str(timm_repo / 'validate.py'), str(tmp_path / 'data'),
                '--model', 'resnet50_mrla', '--checkpoint', str(checkpoint), '--device', 'cpu', '--img-size', '64',
                '--crop-pct', '1.0', '--batch-size', '2', '--workers', '1', '--log-freq', '1')
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    loss = float(re.search(r'Loss:\s+([\d.]+)', output)[1])
    assert abs(loss - expected_loss) <= 1e-3 * max(1., expected_loss), (loss, expected_loss)

    torch.save(resnet_train_checkpoint('resnet50_mrlab'), checkpoint)  # another architecture: a clear error
    done = _run('-m', 'timm_mrla.validate', str(timm_repo / 'validate.py'), str(tmp_path / 'data'),
                '--model', 'resnet50_mrla', '--checkpoint', str(checkpoint), '--device', 'cpu')
    assert done.returncode == 2, done.stderr[-3000:]
    assert 'timm_mrla.validate: error: ' in done.stderr and FIX in done.stderr and 'Traceback' not in done.stderr


def test_train_py_initial_checkpoint(tmp_path, timm_repo):
    """One epoch at learning rate 0 from the authors' checkpoint: the weights train.py saves are the authors'."""
    checkpoint = tmp_path / 'r50_mrlal.pth.tar'
    torch.save(resnet_train_checkpoint('resnet50_mrlal'), checkpoint)
    for split in ('train', 'validation'):
        _image_folder(tmp_path / 'data' / split)
    done = _run('-m', 'timm_mrla.train', str(timm_repo / 'train.py'), str(tmp_path / 'data'),
                '--model', 'resnet50_mrla', '--initial-checkpoint', str(checkpoint), '--device', 'cpu',
                '--input-size', '3', '64', '64', '--epochs', '1', '--batch-size', '2', '--lr-base', '0',
                '--warmup-epochs', '0', '--workers', '1', '--checkpoint-hist', '1',
                '--output', str(tmp_path / 'runs'), '--experiment', 'r50')
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    trained = _model('resnet50_mrla', checkpoint_path=str(tmp_path / 'runs' / 'r50' / 'last.pth.tar'))
    # training moved the BatchNorm statistics and nothing else: put the authors' back, then every output is theirs
    authors = _model('resnet50_mrla', checkpoint_path=str(checkpoint)).state_dict()
    statistics = {k: v for k, v in authors.items()
                  if k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))}
    assert any(not torch.equal(trained.state_dict()[k], v) for k, v in statistics.items())
    trained.load_state_dict(statistics, strict=False)
    assert_golden_outputs(trained, 'resnet50_mrlal')
