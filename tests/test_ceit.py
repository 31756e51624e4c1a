"""CeiT with MRLA: the authors' outputs (golden), their checkpoints by every route, the quirks, timm's APIs."""
import math

import pytest
import timm
import torch
from safetensors.torch import load_file

import timm_mrla  # noqa: F401
from timm_mrla.cli import main
from timm_mrla.models.ceit import CeiTMRLABlock
from synthetic_checkpoints import (GOLDEN_DIR, assert_golden_outputs, deit_main_checkpoint, golden_input,
                                   read_key_list, synthetic_state_dict)

AUTHORS = 'ceit_mrla_tiny_patch16_224'
CEIT_MODELS = ['ceit_tiny_mrla', 'ceit_small_mrla', 'ceit_base_mrla']
SMALL = dict(depth=3, img_size=64)  # a 4x4 patch grid: cheap, every part of the model still there


def test_golden_outputs_of_the_authors_code():
    """Their ceit_mrla.py computed these logits from the same weights (tests/golden/make_golden.py)."""
    model = timm.create_model('ceit_tiny_mrla')
    assert not any(model.load_state_dict(synthetic_state_dict(AUTHORS)))  # their keys, mapped
    golden = load_file(str(GOLDEN_DIR / f'{AUTHORS}.safetensors'))
    with torch.no_grad():
        eval_logits = model.eval()(golden_input())
    assert float((eval_logits - golden['eval_logits']).abs().max()) <= 1e-5  # measured: 1.7e-6
    assert_golden_outputs(model, AUTHORS)  # eval and train mode, relative


@pytest.mark.parametrize('route', ['checkpoint_path', 'pretrained_file', 'convert'])
def test_the_authors_checkpoint_loads_by_every_route(tmp_path, capsys, route):
    file = tmp_path / 'checkpoint.pth'
    torch.save(deit_main_checkpoint(AUTHORS), file)  # ceit/main.py saves what deit/main.py does
    if route == 'checkpoint_path':
        model = timm.create_model('ceit_tiny_mrla', checkpoint_path=str(file))
    elif route == 'pretrained_file':
        model = timm.create_model('ceit_tiny_mrla', pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))
    else:
        assert main(['convert', str(file), '--model', 'ceit_tiny_mrla', '--out', str(tmp_path / 'out')]) == 0
        assert "checkpoint['model']" in capsys.readouterr().out
        model = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True)
    assert_golden_outputs(model, AUTHORS)


def test_state_size_equals_authors():
    with torch.device('meta'):
        model = timm.create_model('ceit_tiny_mrla')
    assert sum(p.numel() for p in model.parameters()) == 6_389_280  # the authors' model, counted with their code
    assert sum(v.numel() for v in model.state_dict().values()) == sum(math.prod(s) for _, s, _ in read_key_list(AUTHORS))


def test_sizes_and_no_pretrained_weights():
    assert set(CEIT_MODELS) <= set(timm.list_models(module='ceit'))
    assert not timm.list_models('ceit*', pretrained=True)  # no weights and no timm base model: no tags
    for name, dim, heads in zip(CEIT_MODELS, (192, 384, 768), (3, 6, 12)):
        with torch.device('meta'):
            model = timm.create_model(name)
        assert (model.embed_dim, model.blocks[0].attn.num_heads, len(model.blocks)) == (dim, heads, 12)
        assert model.blocks[0].mrla.head_dim == 32 and model.pos_embed.shape == (1, 197, dim)
        with pytest.raises(RuntimeError, match='no pretrained weights exist'):
            timm.create_model(name, pretrained=True)
    model = timm.create_model('ceit_small_mrla', num_classes=7, **SMALL).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_plain_ceit_is_the_model_without_its_mrla_branches():
    """mrla=False (the model table's baseline) drops exactly the MRLA parameters; everything else loads unchanged."""
    model, plain = (timm.create_model('ceit_tiny_mrla', mrla=mrla, **SMALL).eval() for mrla in (True, False))
    state = model.state_dict()
    kept = {k: v for k, v in state.items() if '.mrla.' not in k and '.norm_mrla.' not in k}
    assert len(kept) < len(state)
    plain.load_state_dict(kept, strict=True)
    block = model.blocks[0]
    x = torch.randn(2, 1 + 16, model.embed_dim)
    with torch.no_grad():  # a plain block is the MRLA block up to its MRLA branch
        block.mrla, block.norm_mrla = None, None
        torch.testing.assert_close(plain.blocks[0](x, (4, 4)), block(x, (4, 4)))
        assert plain(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_block_continues_from_its_normalised_input():
    """The authors' block replaces its input by norm1(x); LeFF and MRLA pass the class token slot through."""
    torch.manual_seed(0)
    block = CeiTMRLABlock(64, 2).eval()
    x = torch.randn(2, 1 + 12, 64)
    with torch.no_grad():
        y = block.norm1(x)
        y = y + block.attn(y)
        y = y + torch.cat([block.norm2(y)[:, :1], torch.zeros_like(y[:, 1:])], dim=1)
        out = block(x, (3, 4))
    torch.testing.assert_close(out[:, :1], y[:, :1] + block.norm_mrla(y)[:, :1])


def test_reset_classifier_and_head():
    model = timm.create_model('ceit_tiny_mrla', **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 192, 1, 1)
        pre_logits = model.forward_head(features, pre_logits=True)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre_logits)
        model.reset_classifier(0, '')
        assert model(x).shape == (2, 192, 1, 1)


def test_grad_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    model = timm.create_model('ceit_tiny_mrla', num_classes=5, **SMALL).train()
    x = torch.randn(2, 3, 64, 64)
    outputs, grads = [], []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        out = model(x)
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(outputs[1], outputs[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


def test_forward_intermediates_and_features_only():
    model = timm.create_model('ceit_tiny_mrla', **SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, taps = model.forward_intermediates(x, indices=[0, 2])
        torch.testing.assert_close(final, model.forward_features(x))
        assert [t.shape for t in taps] == [(1, 192, 4, 4)] * 2
        nlc = model.forward_intermediates(x, indices=1, output_fmt='NLC', intermediates_only=True)
        assert [t.shape for t in nlc] == [(1, 16, 192)]
        backbone = timm.create_model('ceit_tiny_mrla', features_only=True, out_indices=(1, 2), **SMALL).eval()
        backbone.load_state_dict(model.state_dict(), strict=False)
        assert [f.shape for f in backbone(x)] == [(1, 192, 4, 4)] * 2
    assert backbone.feature_info.reduction() == [16, 16]


def test_torchscript():
    model = timm.create_model('ceit_tiny_mrla', num_classes=5, **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def test_weight_decay_groups():
    model = timm.create_model('ceit_tiny_mrla', **SMALL)
    assert model.no_weight_decay() == {'pos_embed', 'cls_token', '*lambda_t'}
    from timm.models._manipulate import group_parameters
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert groups['blocks.1.mrla.lambda_t'] == groups['blocks.1.leff.conv1.weight'] != groups['blocks.2.attn.qkv.weight']
    assert groups['lca.attn.qkv.weight'] == groups['norm.weight'] == groups['pos_layer_embed']
