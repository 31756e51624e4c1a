"""ConvNeXt with multi-head recurrent layer attention (MRLA-light), on timm's ``ConvNeXt``.

Paper: `Cross-Layer Retrospective Retrieving via Layer Attention` - https://arxiv.org/abs/2302.03985
The authors made no ConvNeXt; this places MRLA-light as in their ResNets, after each block's residual add:
``x = drop_path(gamma * mlp(norm(dwconv(x)))) + shortcut; x = x + drop_path_mrla(BN(mrla_light(x) + lambda *
shortcut))``, ``shortcut`` being the block input (the authors' ``o_{t-1}``), 32 channels per head. MRLA-light
looks back one block only, so it restarts at each stage by construction: a stage's first block is fed the
stage's downsampled input. LayerScale (``gamma``) and the block's drop path stay on the residual branch as in
timm; the MRLA branch draws its own drop path at the block's rate (as the authors' EfficientNet does).

The branch's norm is a BatchNorm, although ConvNeXt itself has none:

* it is the CNN MRLA-light's form, so the branch runs through ``add_mrla_light``: at inference the norm folds
  into the value convolution and ``lambda_t`` (no norm pass), in training the branch is one unit that recomputes
  its maps in backward; a ``LayerNorm2d`` normalises over channels per position, which folds into neither;
* it is per channel, as ``lambda_t`` and the per-head gate are: a LayerNorm over channels would mix the heads'
  scales and ``lambda_t * o_{t-1}`` into one statistic;
* at zero weight and bias it outputs exactly zero in training and at inference, whatever its statistics, so a warm
  start (``with_mrla_switched_off``) computes exactly timm's ConvNeXt, and gradients still reach it (the branch
  grows from zero; in a fresh model it starts at weight 1, the authors' init).

Its batch statistics are the cost: fine-tune with the per-device batches BatchNorm needs, or convert the model with
``timm.layers.convert_sync_batchnorm``.
"""
import copy
from typing import Any, Dict

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import ConvNeXt, generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXtBlock, _init_weights
from timm.models.convnext import checkpoint_filter_fn as convnext_filter_fn

from timm_mrla.hub import pretrained_cfgs
from timm_mrla.layers import MRLALight, add_mrla_light
from ._helpers import build_mrla_model, lambda_no_weight_decay, with_mrla_switched_off

__all__ = ['MRLAConvNeXt', 'MRLAConvNeXtBlock']


class MRLAConvNeXtBlock(ConvNeXtBlock):
    """timm ``ConvNeXtBlock`` followed by MRLA-light (see the module doc).

    timm's ``ConvNeXtStage`` builds its blocks itself, so an MRLA block is made from a built one with ``extend``,
    which adds ``mrla``, ``bn_mrla`` and ``drop_path_mrla`` (a copy of the block's own drop path).
    """

    @classmethod
    def extend(cls, block: ConvNeXtBlock, head_dim: int = 32) -> 'MRLAConvNeXtBlock':
        if type(block) is not ConvNeXtBlock:
            raise ValueError(f'MRLA extends plain ConvNeXtBlock modules, got {type(block).__name__}')
        weight = block.conv_dw.weight
        dim, dd = weight.shape[0], {'device': weight.device, 'dtype': weight.dtype}
        block.__class__ = cls
        block.mrla = MRLALight(dim, head_dim=head_dim, **dd)
        _init_weights(block.mrla.v)  # truncated normal, as ConvNeXt's own depthwise convolutions
        block.bn_mrla = nn.BatchNorm2d(dim, **dd)
        block.drop_path_mrla = copy.deepcopy(block.drop_path)
        return block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.conv_dw(x)
        if self.use_conv_mlp:
            x = self.norm(x)
            x = self.mlp(x)
        else:
            x = x.permute(0, 2, 3, 1)
            x = self.norm(x)
            x = self.mlp(x)
            x = x.permute(0, 3, 1, 2)
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        x = self.drop_path(x) + shortcut
        if torch.jit.is_scripting():
            return x + self.drop_path_mrla(self.bn_mrla(self.mrla(x, shortcut)))
        return add_mrla_light(x, shortcut, self.mrla, self.bn_mrla, self.drop_path_mrla)


class MRLAConvNeXt(ConvNeXt):
    """timm ``ConvNeXt`` whose blocks carry MRLA-light; takes every ``ConvNeXt`` argument."""

    def __init__(self, *args, mrla_head_dim: int = 32, **kwargs):
        super().__init__(*args, **kwargs)
        for stage in self.stages:
            for block in stage.blocks:
                MRLAConvNeXtBlock.extend(block, head_dim=mrla_head_dim)

    @torch.jit.ignore
    def no_weight_decay(self):
        return lambda_no_weight_decay(self)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm's ConvNeXt filter (Meta's checkpoints -> timm's keys); the base timm model's weights become a warm
    start (``with_mrla_switched_off``)."""
    return with_mrla_switched_off(convnext_filter_fn(state_dict, model), model)


def _create_mrla_convnext(variant: str, pretrained: bool = False, **kwargs) -> MRLAConvNeXt:
    return build_mrla_model(
        MRLAConvNeXt,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),  # as timm's ConvNeXt
        **kwargs,
    )


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0', 'classifier': 'head.fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2302.03985',
        'paper_name': 'Cross-Layer Retrospective Retrieving via Layer Attention',
        'origin_url': 'https://github.com/joyfang1106/MRLA',
        **kwargs,
    }


# each model -> the timm model it extends (baseline in benchmarks, source of warm starts)
BASE_MODELS = {
    'convnext_tiny_mrla': 'convnext_tiny',
    'convnext_small_mrla': 'convnext_small',
    'convnext_base_mrla': 'convnext_base',
}

default_cfgs = generate_default_cfgs(pretrained_cfgs({name: _cfg() for name in BASE_MODELS}, BASE_MODELS))


@register_model
def convnext_tiny_mrla(pretrained: bool = False, **kwargs) -> MRLAConvNeXt:
    """ConvNeXt-T with MRLA-light after every block (no reference model exists; see the module doc)."""
    model_args = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
    return _create_mrla_convnext('convnext_tiny_mrla', pretrained, **dict(model_args, **kwargs))


@register_model
def convnext_small_mrla(pretrained: bool = False, **kwargs) -> MRLAConvNeXt:
    """ConvNeXt-S with MRLA-light after every block (no reference model exists; see the module doc)."""
    model_args = dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))
    return _create_mrla_convnext('convnext_small_mrla', pretrained, **dict(model_args, **kwargs))


@register_model
def convnext_base_mrla(pretrained: bool = False, **kwargs) -> MRLAConvNeXt:
    """ConvNeXt-B with MRLA-light after every block (no reference model exists; see the module doc)."""
    model_args = dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))
    return _create_mrla_convnext('convnext_base_mrla', pretrained, **dict(model_args, **kwargs))
