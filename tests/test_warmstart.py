"""Warm starts compute exactly the base model, train from there, and come out the same wherever built."""
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import DropPath

import timm_mrla  # noqa: F401
from timm_mrla.cli import main
from timm_mrla.convert import ConversionError
from timm_mrla.hub.download import sha256_of
from timm_mrla.hub.folder import verify_folder
from timm_mrla.warmstart import MRLA_INPUT_NORMS, load_base_model, warm_start, write_warm_start


@pytest.mark.parametrize('name', ['resnet18_mrla', 'resnet50_mrla_base', 'efficientnet_b0_mrla', 'deit_tiny_mrla',
                                  'deit_tiny_mrla_base'])
def test_warm_start_computes_the_base_function(name):
    torch.manual_seed(0)
    base = timm.create_model(timm_mrla.models.BASE_MODELS[name]).eval()
    for module in base.modules():  # trained-looking statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
    model = warm_start(base, name)
    for module in model.modules():  # deit_*_mrla_base drops paths by default; compare without randomness
        if isinstance(module, DropPath):
            module.drop_prob = 0.
    size = 224 if name.startswith('deit') else 96
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert float((model(x) - base(x)).abs().max()) <= 1e-5
        assert float((model.train()(x) - base.train()(x)).abs().max()) <= 1e-4  # batch statistics too


def test_warm_start_learns_mrla():
    """The branches start silent but not dead: one step of training moves them away from zero."""
    torch.manual_seed(0)
    model = warm_start(timm.create_model('resnet18'), 'resnet18_mrla').train()
    norm = model.layer2[1].bn_mrla
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([1, 2, 3, 4])).backward()
    assert norm.weight.grad.abs().sum() > 0 and norm.bias.grad.abs().sum() > 0
    assert model.layer2[1].mrla.v.weight.grad.abs().sum() == 0  # reached once the norm is non-zero


def test_warm_start_from_a_file(tmp_path, capsys):
    torch.manual_seed(0)
    base = timm.create_model('resnet18', num_classes=10)
    save_file(base.state_dict(), str(tmp_path / 'resnet18.safetensors'))
    out = tmp_path / 'out'
    assert main(['warmstart', '--from', str(tmp_path / 'resnet18.safetensors'), '--model', 'resnet18_mrla',
                 '--out', str(out)]) == 0
    assert 'largest logit difference to resnet18 0.0e+00, top-1 agreement 100%' in capsys.readouterr().out
    assert verify_folder(out).ok
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert model.num_classes == 10
    zeroed = [m for n, m in model.named_modules() if n.rsplit('.', 1)[-1] in MRLA_INPUT_NORMS]
    assert len(zeroed) == 8 and all(float(m.weight.abs().sum()) == 0 for m in zeroed)


def test_the_same_file_wherever_built(tmp_path):
    torch.manual_seed(0)
    base = timm.create_model('efficientnet_b0')
    save_file(base.state_dict(), str(tmp_path / 'b0.safetensors'))
    shas = []
    for seed in (1, 2):  # torch's generator state does not reach the MRLA weights
        torch.manual_seed(seed)
        folder, _ = write_warm_start(str(tmp_path / 'b0.safetensors'), 'efficientnet_b0_mrla', tmp_path / f'o{seed}')
        shas.append(sha256_of(folder / 'model.safetensors'))
    assert shas[0] == shas[1]


def test_bad_sources(tmp_path):
    with pytest.raises(ConversionError, match='neither a file nor a timm model name'):
        load_base_model(str(tmp_path / 'nothing.pth'), 'resnet18')
    save_file(timm.create_model('resnet34').state_dict(), str(tmp_path / 'r34.safetensors'))
    with pytest.raises(ConversionError, match='does not hold resnet18 weights'):
        load_base_model(str(tmp_path / 'r34.safetensors'), 'resnet18')
    with pytest.raises(ConversionError, match="unknown MRLA model 'resnet18'"):
        write_warm_start(str(tmp_path / 'r34.safetensors'), 'resnet18', tmp_path / 'o')


def test_offline_warm_start_from_a_timm_tag_says_what_to_do(hub_cache, tmp_path, capsys):
    """Offline with nothing cached: one line naming the repository, the file and the remedy; nothing written."""
    out = tmp_path / 'out'
    assert main(['warmstart', '--from', 'resnet18.a1_in1k', '--model', 'resnet18_mrla', '--out', str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('timm-mrla warmstart: error:')
    assert "'model.safetensors' of timm/resnet18.a1_in1k" in err and 'HF_HUB_OFFLINE' in err
    assert not out.exists()
