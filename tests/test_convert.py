"""``timm-mrla convert``: the authors' checkpoints in, timm folders out, with their outputs reproduced."""
import argparse
import contextlib
import copy
import os
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import timm_mrla  # noqa: F401
from timm_mrla.cli import main
from timm_mrla.convert import ConversionError, convert_checkpoint
from timm_mrla.layers import reference_mode
from synthetic_checkpoints import (assert_golden_outputs, deit_main_checkpoint, resnet_train_checkpoint,
                                   synthetic_state_dict, timm_train_checkpoint)


def assert_reproduces_authors(folder: Path, authors_name: str) -> None:
    model = timm.create_model(f'local-dir:{folder}', pretrained=True, drop_path_rate=0.)
    state = copy.deepcopy(model.state_dict())
    for form in ('fast', 'reference'):  # the production paths and the literal layers both reproduce them
        model.load_state_dict(state)  # train mode moves the BatchNorm statistics
        with reference_mode(model) if form == 'reference' else contextlib.nullcontext():
            assert_golden_outputs(model, authors_name, form)


@pytest.mark.parametrize('authors_name, model_name, layout, source', [
    ('resnet50_mrlal', 'resnet50_mrla', resnet_train_checkpoint, 'state_dict'),
    ('resnet101_mrlal', 'resnet101_mrla', resnet_train_checkpoint, 'state_dict'),
    ('resnet50_mrlab', 'resnet50_mrla_base', resnet_train_checkpoint, 'state_dict'),
    ('efficientnet_mrla_b0', 'efficientnet_b0_mrla', timm_train_checkpoint, 'state_dict'),
    ('deit_mrlal_tiny_patch16_224', 'deit_tiny_mrla', deit_main_checkpoint, 'model'),
    ('deit_mrlal_small_patch16_224', 'deit_small_mrla', deit_main_checkpoint, 'model'),
    ('deit_mrlab_tiny_patch16_224', 'deit_tiny_mrla_base', deit_main_checkpoint, 'model'),
])
def test_convert_reproduces_authors_outputs(tmp_path, capsys, authors_name, model_name, layout, source):
    checkpoint = tmp_path / f'{authors_name}.pth.tar'
    torch.save(layout(authors_name), checkpoint)
    out = tmp_path / 'converted'
    assert main(['convert', str(checkpoint), '--model', model_name, '--out', str(out)]) == 0
    assert f"checkpoint['{source}']" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert_reproduces_authors(out, authors_name)


def test_a_wrong_weight_is_caught_by_the_golden_outputs(tmp_path):
    """The comparison above can fail: perturbing one MRLA weight moves the outputs past the tolerance."""
    state_dict = synthetic_state_dict('resnet50_mrlal')
    state_dict['layer4.2.mrla.lambda_t'] = state_dict['layer4.2.mrla.lambda_t'] + 0.5
    save_file(state_dict, str(tmp_path / 'w.safetensors'))
    convert_checkpoint(tmp_path / 'w.safetensors', 'resnet50_mrla', tmp_path / 'out')
    with pytest.raises(AssertionError):
        assert_reproduces_authors(tmp_path / 'out', 'resnet50_mrlal')


def test_ema_weights_are_taken_on_request(tmp_path):
    weights = synthetic_state_dict('resnet50_mrlal')
    other = {k: v.clone() if v.is_floating_point() else v for k, v in weights.items()}
    other['fc.bias'] += 1
    torch.save({'state_dict': other, 'state_dict_ema': weights, 'args': argparse.Namespace(model_ema=True)},
               tmp_path / 'last.pth.tar')
    folder, source = convert_checkpoint(tmp_path / 'last.pth.tar', 'resnet50_mrla', tmp_path / 'ema', use_ema=True)
    assert source == "checkpoint['state_dict_ema']"
    assert_reproduces_authors(folder, 'resnet50_mrlal')
    folder, source = convert_checkpoint(tmp_path / 'last.pth.tar', 'resnet50_mrla', tmp_path / 'plain')
    assert source == "checkpoint['state_dict']"
    torch.testing.assert_close(load_file(str(folder / 'model.safetensors'))['fc.bias'], weights['fc.bias'] + 1)


def test_bare_and_safetensors_checkpoints(tmp_path):
    weights = synthetic_state_dict('resnet50_mrlab')
    torch.save(weights, tmp_path / 'bare.pth')
    save_file(weights, str(tmp_path / 'bare.safetensors'))
    for name in ('bare.pth', 'bare.safetensors'):
        folder, source = convert_checkpoint(tmp_path / name, 'resnet50_mrla_base', tmp_path / f'out-{name}')
        assert source == 'the bare state dict'
        assert_reproduces_authors(folder, 'resnet50_mrlab')


def test_classifier_size_is_taken_from_the_checkpoint(tmp_path):
    weights = synthetic_state_dict('resnet50_mrlal')
    weights['fc.weight'] = weights['fc.weight'][:10].clone()
    weights['fc.bias'] = weights['fc.bias'][:10].clone()
    save_file(weights, str(tmp_path / 'ten.safetensors'))
    folder, _ = convert_checkpoint(tmp_path / 'ten.safetensors', 'resnet50_mrla', tmp_path / 'out')
    assert timm.create_model(f'local-dir:{folder}', pretrained=True).num_classes == 10


def _error(tmp_path, checkpoint_obj, model='resnet50_mrla', capsys=None):
    torch.save(checkpoint_obj, tmp_path / 'bad.pth')
    out = tmp_path / 'out'
    with pytest.raises(ConversionError) as e:
        convert_checkpoint(tmp_path / 'bad.pth', model, out)
    assert not out.exists()
    return str(e.value)


def test_unmapped_missing_and_mismatched_keys_are_named(tmp_path):
    weights = synthetic_state_dict('resnet50_mrlal')
    weights['layer1.0.mrla.mrla.Wz.weight'] = torch.zeros(1, 1, 5)
    del weights['layer2.1.bn_mrla.running_var']
    weights['layer3.0.mrla.mrla.Wv.weight'] = torch.zeros(512, 1, 3, 3)
    message = _error(tmp_path, {'state_dict': weights})
    assert '1 checkpoint keys map to nothing in resnet50_mrla: layer1.0.mrla.mrla.Wz.weight' in message
    assert '1 keys of resnet50_mrla are missing from the checkpoint: layer2.1.bn_mrla.running_var' in message
    assert 'layer3.0.mrla.mrla.Wv.weight (512, 1, 3, 3) vs (1024, 1, 3, 3)' in message


def test_wrong_architecture_lists_only_the_first_keys(tmp_path):
    message = _error(tmp_path, synthetic_state_dict('resnet50_mrlab'), model='resnet50_mrla')
    assert 'map to nothing in resnet50_mrla' in message and 'more)' in message
    assert 'Check --model' in message


def test_a_plain_timm_checkpoint_is_not_converted_but_pointed_to_warmstart(tmp_path):
    message = _error(tmp_path, {'state_dict': timm.create_model('resnet18').state_dict()}, model='resnet18_mrla')
    assert 'holds no MRLA layer' in message and 'timm-mrla warmstart --from CHECKPOINT --model resnet18_mrla' in message


def test_checkpoint_without_weights(tmp_path):
    message = _error(tmp_path, {'epoch': 3, 'optimizer': {}})
    assert "no state dict under 'state_dict' or 'model'" in message and "'epoch', 'optimizer'" in message


class _Exploit:
    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / 'code-ran'
    exploit = _Exploit()
    exploit.marker = marker
    torch.save({'state_dict': synthetic_state_dict('resnet50_mrlal'), 'hook': exploit}, tmp_path / 'evil.pth')
    with pytest.raises(ConversionError, match=r'holds a Python object of type .*system.*never executes pickled code'):
        convert_checkpoint(tmp_path / 'evil.pth', 'resnet50_mrla', tmp_path / 'out')
    assert not marker.exists()


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ConversionError, match='is not a readable PyTorch checkpoint'):
        convert_checkpoint(tmp_path / 'junk.pth', 'resnet50_mrla', tmp_path / 'out')
    (tmp_path / 'junk.safetensors').write_bytes(b'\x00' * 16)
    with pytest.raises(ConversionError, match='is not a readable safetensors file'):
        convert_checkpoint(tmp_path / 'junk.safetensors', 'resnet50_mrla', tmp_path / 'out')
    with pytest.raises(ConversionError, match='does not exist'):
        convert_checkpoint(tmp_path / 'nothing.pth', 'resnet50_mrla', tmp_path / 'out')


def test_unknown_model_name(tmp_path, capsys):
    torch.save({}, tmp_path / 'x.pth')
    assert main(['convert', str(tmp_path / 'x.pth'), '--model', 'resnet50', '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert "unknown MRLA model 'resnet50'" in err and 'resnet50_mrla_base' in err and 'Traceback' not in err


def test_existing_folder_is_not_overwritten_without_force(tmp_path, capsys):
    torch.save(synthetic_state_dict('resnet50_mrlal'), tmp_path / 'w.pth')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    (out / 'model.safetensors').write_text('an older model')
    args = ['convert', str(tmp_path / 'w.pth'), '--model', 'resnet50_mrla', '--out', str(out)]
    assert main(args) == 2
    assert 'is not empty' in capsys.readouterr().err
    assert (out / 'model.safetensors').read_text() == 'an older model'
    assert main(args + ['--force']) == 0
    assert (out / 'notes.txt').read_text() == 'mine'
    assert_reproduces_authors(out, 'resnet50_mrlal')
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.out.')]  # no staging folder left behind
