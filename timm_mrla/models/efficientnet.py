"""EfficientNet with multi-head recurrent layer attention (MRLA-light), on timm's ``EfficientNet``.

Paper: `Cross-Layer Retrospective Retrieving via Layer Attention` - https://arxiv.org/abs/2302.03985
Authors' code: https://github.com/joyfang1106/MRLA (EfficientNet in the repo's history, commit 87d22997,
``timm/models/efficientnet_{mrla,blocks,builder}.py``).

As the authors' ``InvertedResidual_MRLA``, only inverted-residual blocks with a skip connection
(stride 1, in == out channels) get MRLA-light, with 8 heads:
``x = drop_path(branch(x)) + shortcut; x = x + drop_path(BN(mrla_light(x) + lambda * shortcut))``,
the MRLA branch using the block's own drop-path rate. The rest is timm's EfficientNet unchanged.
"""
import copy
from functools import partial
from typing import Any, Dict

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import EfficientNet, generate_default_cfgs, register_model
from timm.models._efficientnet_blocks import InvertedResidual
from timm.models._efficientnet_builder import (
    BN_EPS_TF_DEFAULT, decode_arch_def, efficientnet_init_weights, resolve_act_layer, resolve_bn_args, round_channels)

from timm_mrla.layers import MRLALight, add_mrla_light
from timm_mrla.hub import pretrained_cfgs
from ._helpers import (AuthorsLayoutMixin, build_mrla_model, lambda_no_weight_decay, remap_state_dict,
                       with_mrla_switched_off)

__all__ = ['MRLAEfficientNet', 'MRLAInvertedResidual']

# the authors' state-dict keys -> ours (checkpoint_filter_fn, and load_state_dict of the models)
_AUTHORS_KEY_RULES = (
    (r'\.mrla\.mla\.W([qkv])\.', lambda m: f'.mrla.{m[1].lower()}.'),
)


class MRLAInvertedResidual(InvertedResidual):
    """timm ``InvertedResidual`` (with a skip connection) followed by MRLA-light.

    timm's ``EfficientNet`` builds its blocks itself, so an MRLA block is made from a built one with
    ``extend``, which adds the MRLA modules; ``bn_mrla`` and ``drop_path_mrla`` are configured as the
    block's own ``bn3`` and ``drop_path``.
    """

    @classmethod
    def extend(cls, block: InvertedResidual, num_heads: int = 8) -> 'MRLAInvertedResidual':
        if type(block) is not InvertedResidual or not block.has_skip:
            raise ValueError(f'MRLA extends plain InvertedResidual blocks with a skip connection, got {block!r}')
        weight = block.conv_pwl.weight
        block.__class__ = cls
        block.mrla = MRLALight(block.conv_pwl.out_channels, num_heads=num_heads, device=weight.device,
                               dtype=weight.dtype)
        block.bn_mrla = copy.deepcopy(block.bn3)
        block.drop_path_mrla = copy.deepcopy(block.drop_path)
        efficientnet_init_weights(block.bn_mrla)
        block.bn_mrla.reset_running_stats()
        efficientnet_init_weights(block.mrla)  # TF-style fan-out init of the value conv, as the model's convs
        return block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.conv_s2d is not None:
            x = self.conv_s2d(x)
            x = self.bn_s2d(x)
        x = self.conv_pw(x)
        x = self.bn1(x)
        x = self.conv_dw(x)
        x = self.bn2(x)
        x = self.aa(x)
        x = self.se(x)
        x = self.conv_pwl(x)
        x = self.bn3(x)
        x = self.drop_path(x) + shortcut
        if torch.jit.is_scripting():
            return x + self.drop_path_mrla(self.bn_mrla(self.mrla(x, shortcut)))
        return add_mrla_light(x, shortcut, self.mrla, self.bn_mrla, self.drop_path_mrla)


class MRLAEfficientNet(AuthorsLayoutMixin, EfficientNet):
    """timm ``EfficientNet`` whose inverted-residual blocks with a skip connection carry MRLA-light."""

    authors_key_rules = _AUTHORS_KEY_RULES

    def __init__(self, *args, mrla_num_heads: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        for stage in self.blocks:
            for block in stage:
                if type(block) is InvertedResidual and block.has_skip:
                    MRLAInvertedResidual.extend(block, num_heads=mrla_num_heads)

    @torch.jit.ignore
    def no_weight_decay(self):
        return lambda_no_weight_decay(self)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map a state dict of the authors' ``EfficientNet_MRLA`` (timm train.py) onto ours; the base timm
    model's weights become a warm start (``with_mrla_switched_off``)."""
    return with_mrla_switched_off(remap_state_dict(state_dict, model, _AUTHORS_KEY_RULES), model)


def _create_mrla_effnet(variant: str, pretrained: bool = False, **kwargs) -> MRLAEfficientNet:
    return build_mrla_model(
        MRLAEfficientNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls='getter'),
        **kwargs,
    )


# timm's (and the authors') EfficientNet-B0 stages; B1/B2 scale their width and depth
_EFFICIENTNET_ARCH_DEF = [
    ['ds_r1_k3_s1_e1_c16_se0.25'],
    ['ir_r2_k3_s2_e6_c24_se0.25'],
    ['ir_r2_k5_s2_e6_c40_se0.25'],
    ['ir_r3_k3_s2_e6_c80_se0.25'],
    ['ir_r3_k5_s1_e6_c112_se0.25'],
    ['ir_r4_k5_s2_e6_c192_se0.25'],
    ['ir_r1_k3_s1_e6_c320_se0.25'],
]
# EfficientNet-Lite: no squeeze-excitation (timm's tf_efficientnet_lite*)
_EFFICIENTNET_LITE_ARCH_DEF = [[block.replace('_se0.25', '') for block in stage] for stage in _EFFICIENTNET_ARCH_DEF]


def _gen_mrla_efficientnet(variant: str, channel_multiplier: float, depth_multiplier: float,
                           pretrained: bool = False, **kwargs) -> MRLAEfficientNet:
    """EfficientNet-B* as timm's ``efficientnet_b*`` (swish, BN), built as an ``MRLAEfficientNet``."""
    round_chs_fn = partial(round_channels, multiplier=channel_multiplier)
    model_kwargs = dict(
        block_args=decode_arch_def(_EFFICIENTNET_ARCH_DEF, depth_multiplier),
        num_features=round_chs_fn(1280),
        stem_size=32,
        round_chs_fn=round_chs_fn,
        act_layer=resolve_act_layer(kwargs, 'swish'),
        norm_layer=kwargs.pop('norm_layer', None) or partial(nn.BatchNorm2d, **resolve_bn_args(kwargs)),
        **kwargs,
    )
    return _create_mrla_effnet(variant, pretrained, **model_kwargs)


def _gen_mrla_efficientnet_lite(variant: str, channel_multiplier: float, depth_multiplier: float,
                                pretrained: bool = False, **kwargs) -> MRLAEfficientNet:
    """EfficientNet-Lite* as timm's ``tf_efficientnet_lite*`` (ReLU6, TF 'same' padding and BN eps; the stem and
    the first and last stages are not scaled)."""
    kwargs.setdefault('bn_eps', BN_EPS_TF_DEFAULT)
    kwargs.setdefault('pad_type', 'same')
    model_kwargs = dict(
        block_args=decode_arch_def(_EFFICIENTNET_LITE_ARCH_DEF, depth_multiplier, fix_first_last=True),
        num_features=1280,
        stem_size=32,
        fix_stem=True,
        round_chs_fn=partial(round_channels, multiplier=channel_multiplier),
        act_layer=resolve_act_layer(kwargs, 'relu6'),
        norm_layer=kwargs.pop('norm_layer', None) or partial(nn.BatchNorm2d, **resolve_bn_args(kwargs)),
        **kwargs,
    )
    return _create_mrla_effnet(variant, pretrained, **model_kwargs)


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv_stem', 'classifier': 'classifier',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2302.03985',
        'paper_name': 'Cross-Layer Retrospective Retrieving via Layer Attention',
        'origin_url': 'https://github.com/joyfang1106/MRLA',
        **kwargs,
    }


# each model -> the timm model it extends (baseline in benchmarks, source of warm starts)
BASE_MODELS = {
    'efficientnet_mrla': 'efficientnet_b0',
    'efficientnet_b0_mrla': 'efficientnet_b0',
    'efficientnet_b1_mrla': 'efficientnet_b1',
    'efficientnet_b2_mrla': 'efficientnet_b2',
    'tf_efficientnet_lite0_mrla': 'tf_efficientnet_lite0',
    'tf_efficientnet_lite1_mrla': 'tf_efficientnet_lite1',
    'tf_efficientnet_lite2_mrla': 'tf_efficientnet_lite2',
}

# input sizes and crops of the authors' configs
default_cfgs = generate_default_cfgs(pretrained_cfgs({
    'efficientnet_mrla': _cfg(),
    'efficientnet_b0_mrla': _cfg(),
    'efficientnet_b1_mrla': _cfg(input_size=(3, 240, 240), pool_size=(8, 8), crop_pct=0.882),
    'efficientnet_b2_mrla': _cfg(input_size=(3, 256, 256), pool_size=(8, 8), crop_pct=1.0,
                                 test_input_size=(3, 288, 288)),
    # as timm's tf_efficientnet_lite* (their TF-trained weights expect mean/std 0.5); MRLA placed as in the B*
    'tf_efficientnet_lite0_mrla': _cfg(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    'tf_efficientnet_lite1_mrla': _cfg(input_size=(3, 240, 240), pool_size=(8, 8), crop_pct=0.882,
                                       mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    'tf_efficientnet_lite2_mrla': _cfg(input_size=(3, 260, 260), pool_size=(9, 9), crop_pct=0.890,
                                       mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}, BASE_MODELS))


@register_model
def efficientnet_b0_mrla(pretrained: bool = False, **kwargs) -> MRLAEfficientNet:
    """EfficientNet-B0 with MRLA-light (the authors' ``efficientnet_mrla_b0``)."""
    return _gen_mrla_efficientnet('efficientnet_b0_mrla', 1.0, 1.0, pretrained=pretrained, **kwargs)


@register_model
def efficientnet_b1_mrla(pretrained: bool = False, **kwargs) -> MRLAEfficientNet:
    """EfficientNet-B1 with MRLA-light (the authors' ``efficientnet_mrla_b1``)."""
    return _gen_mrla_efficientnet('efficientnet_b1_mrla', 1.0, 1.1, pretrained=pretrained, **kwargs)


@register_model
def efficientnet_b2_mrla(pretrained: bool = False, **kwargs) -> MRLAEfficientNet:
    """EfficientNet-B2 with MRLA-light (the authors' ``efficientnet_mrla_b2``)."""
    return _gen_mrla_efficientnet('efficientnet_b2_mrla', 1.1, 1.2, pretrained=pretrained, **kwargs)


@register_model
def efficientnet_mrla(pretrained: bool = False, **kwargs) -> MRLAEfficientNet:
    """EfficientNet-B0 with MRLA-light, the authors' default EfficientNet."""
    return _gen_mrla_efficientnet('efficientnet_mrla', 1.0, 1.0, pretrained=pretrained, **kwargs)


@register_model
def tf_efficientnet_lite0_mrla(pretrained: bool = False, **kwargs) -> MRLAEfficientNet:
    """EfficientNet-Lite0 (timm's ``tf_efficientnet_lite0``) with MRLA-light placed as in the authors' B0; the
    authors made no Lite model. Its zoo weights are a warm start from the TF-trained Lite0 (see MODEL_CARDS.md)."""
    return _gen_mrla_efficientnet_lite('tf_efficientnet_lite0_mrla', 1.0, 1.0, pretrained=pretrained, **kwargs)


@register_model
def tf_efficientnet_lite1_mrla(pretrained: bool = False, **kwargs) -> MRLAEfficientNet:
    """EfficientNet-Lite1 (timm's ``tf_efficientnet_lite1``) with MRLA-light placed as in Lite0. Its zoo weights are
    a warm start from the TF-trained Lite1 (see MODEL_CARDS.md)."""
    return _gen_mrla_efficientnet_lite('tf_efficientnet_lite1_mrla', 1.0, 1.1, pretrained=pretrained, **kwargs)


@register_model
def tf_efficientnet_lite2_mrla(pretrained: bool = False, **kwargs) -> MRLAEfficientNet:
    """EfficientNet-Lite2 (timm's ``tf_efficientnet_lite2``) with MRLA-light placed as in Lite0. Its zoo weights are
    a warm start from the TF-trained Lite2 (see MODEL_CARDS.md)."""
    return _gen_mrla_efficientnet_lite('tf_efficientnet_lite2_mrla', 1.1, 1.2, pretrained=pretrained, **kwargs)
