"""ResNet with multi-head recurrent layer attention (MRLA), on timm's ``ResNet``.

Paper: `Cross-Layer Retrospective Retrieving via Layer Attention` - https://arxiv.org/abs/2302.03985
Authors' code: https://github.com/joyfang1106/MRLA

* MRLA-light (``resnet*_mrla``): after a block's residual add and activation,
  ``out = out + drop_path(BN(mrla_light(out) + lambda * shortcut))``, ``shortcut`` being the block input
  after the downsample projection (the authors' ``o_{t-1}``), 32 channels per head.
* MRLA-base (``resnet*_mrla_base``): ``out = out + drop_path(ReLU(BN(mrla_base(out))))`` with a key/value
  cache that restarts at each stage, 16 channels per head, and the authors' deep 3x3 stem (timm's
  ``stem_type='deep'``, ``stem_width=32``). This follows ``resnet_mrla_base.py``, the file the authors'
  package imports; their sibling ``resnet_mrla_base22.py`` (no ReLU, 7x7 stem) is not ported.
* The same MRLA-light on timm's ResNet variants, each built with its timm base model's exact arguments so that
  timm's weights of it load as a warm start: ResNet-D (``resnet50d_mrla``, ``resnet101d_mrla``: deep stem,
  average-pool downsample), SE-ResNet (``seresnet50_mrla``: MRLA after the residual add that follows the SE
  gate, as RLA-Net combines them), ResNeXt (``resnext50_32x4d_mrla``) and Wide ResNet (``wide_resnet50_2_mrla``).
  Cardinality and base width change only the bottleneck's inner width: MRLA sees the block output,
  ``planes * 4`` channels, as in ResNet-50.

``drop_path_rate`` is applied as the authors do: one constant rate on the MRLA branch only, no stochastic
depth on the residual branch.
"""
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath
from timm.models import BasicBlock, Bottleneck, ResNet, generate_default_cfgs, register_model

from timm_mrla.layers import MRLABase, MRLALight, add_mrla_light, batchnorm_affine
from timm_mrla.layers.base_train import ValueCache, base_branch_applies, base_branch_train
from timm_mrla.layers.recompute import observed
from timm_mrla.hub import pretrained_cfgs
from ._helpers import (AuthorsLayoutMixin, build_mrla_model, lambda_no_weight_decay, remap_state_dict,
                       with_mrla_switched_off)

__all__ = ['MRLAResNet', 'MRLABaseResNet', 'MRLABasicBlock', 'MRLABottleneck', 'MRLABaseBottleneck']

# the authors' state-dict keys -> ours (checkpoint_filter_fn, and load_state_dict of the models)
_AUTHORS_KEY_RULES = (
    (r'^stages\.(\d+)\.', lambda m: f'layer{int(m[1]) + 1}.'),  # MRLA-base keeps its stages in a list
    (r'\.mrla\.mrla\.W([qkv])\.', lambda m: f'.mrla.{m[1].lower()}.'),
)


def _projected_shortcut(downsample: Optional[nn.Module], x: torch.Tensor
                        ) -> Tuple[torch.Tensor, Optional[Tuple[torch.Tensor, nn.Module]]]:
    """A block's shortcut and, when its downsample projection ends in a BatchNorm, that norm's input and the norm
    (``add_mrla_light``'s ``prev_source``: the MRLA training path then recomputes the shortcut in backward from
    the input the norm keeps anyway, instead of keeping the shortcut too)."""
    if downsample is None:
        return x, None
    if not isinstance(downsample, nn.Sequential) or not isinstance(downsample[-1], nn.BatchNorm2d) \
            or downsample._forward_hooks or downsample._forward_pre_hooks:
        return downsample(x), None
    for layer in downsample[:-1]:
        x = layer(x)
    return downsample[-1](x), (x, downsample[-1])


class MRLABasicBlock(BasicBlock):
    """timm ``BasicBlock`` followed by MRLA-light.

    The authors define MRLA only for bottleneck ResNets; this places it exactly as in their bottleneck
    (after the residual add and activation, fed the block's shortcut as ``o_{t-1}``). No reference
    implementation or checkpoint exists for it.
    """

    def __init__(
            self,
            inplanes: int,
            planes: int,
            *args,
            mrla_head_dim: int = 32,
            mrla_drop_path: float = 0.,
            norm_layer=nn.BatchNorm2d,
            device=None,
            dtype=None,
            **kwargs,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__(inplanes, planes, *args, norm_layer=norm_layer, **dd, **kwargs)
        dim = planes * self.expansion
        self.mrla = MRLALight(dim, head_dim=mrla_head_dim, **dd)
        self.bn_mrla = norm_layer(dim, **dd)
        self.drop_path_mrla = DropPath(mrla_drop_path) if mrla_drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            shortcut = x if self.downsample is None else self.downsample(x)
            prev_source = None
        else:
            shortcut, prev_source = _projected_shortcut(self.downsample, x)
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.drop_block(out)
        out = self.act1(out)
        out = self.aa(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        out += shortcut  # in place, as timm's blocks do: a fresh map costs page faults
        out = self.act2(out)
        if torch.jit.is_scripting():
            return out + self.drop_path_mrla(self.bn_mrla(self.mrla(out, shortcut)))
        return add_mrla_light(out, shortcut, self.mrla, self.bn_mrla, self.drop_path_mrla, prev_source)


class MRLABottleneck(Bottleneck):
    """timm ``Bottleneck`` followed by MRLA-light (the authors' ``resnet_mrla_light.py`` block)."""

    def __init__(
            self,
            inplanes: int,
            planes: int,
            *args,
            mrla_head_dim: int = 32,
            mrla_drop_path: float = 0.,
            norm_layer=nn.BatchNorm2d,
            device=None,
            dtype=None,
            **kwargs,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__(inplanes, planes, *args, norm_layer=norm_layer, **dd, **kwargs)
        dim = planes * self.expansion
        self.mrla = self._make_mrla(dim, mrla_head_dim, dd)
        self.bn_mrla = norm_layer(dim, **dd)
        self.drop_path_mrla = DropPath(mrla_drop_path) if mrla_drop_path > 0. else nn.Identity()

    @staticmethod
    def _make_mrla(dim: int, head_dim: int, dd: Dict[str, Any]) -> nn.Module:
        return MRLALight(dim, head_dim=head_dim, **dd)

    def residual(self, x: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The plain bottleneck: returns its activated output and the (projected, unless given) shortcut."""
        if shortcut is None:
            shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.act1(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.drop_block(out)
        out = self.act2(out)
        out = self.aa(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        out += shortcut  # in place, as timm's blocks do: a fresh map costs page faults
        return self.act3(out), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            out, shortcut = self.residual(x)
            return out + self.drop_path_mrla(self.bn_mrla(self.mrla(out, shortcut)))
        shortcut, prev_source = _projected_shortcut(self.downsample, x)
        out, _ = self.residual(x, shortcut)
        return add_mrla_light(out, shortcut, self.mrla, self.bn_mrla, self.drop_path_mrla, prev_source)


class MRLABaseBottleneck(MRLABottleneck):
    """timm ``Bottleneck`` followed by MRLA-base (the authors' ``resnet_mrla_base.py`` block).

    ``forward(x, keys, values)`` takes the stage's cache and returns ``(out, key, value)``.
    """

    def __init__(self, *args, mrla_head_dim: int = 16, act_layer=nn.ReLU, **kwargs):
        super().__init__(*args, mrla_head_dim=mrla_head_dim, act_layer=act_layer, **kwargs)
        self.act_mrla = act_layer(inplace=True)

    @staticmethod
    def _make_mrla(dim: int, head_dim: int, dd: Dict[str, Any]) -> nn.Module:
        return MRLABase(dim, head_dim=head_dim, **dd)

    def _folded_norm(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """``bn_mrla`` as ``(scale, shift)`` where the branch may fold it at inference (``MRLABase.forward_folded``):
        an eval BatchNorm and ReLU, no drop path, nobody observing the layer, not torch.compile's inference (Inductor
        fuses the plain branch) unless it exports."""
        if self.drop_path_mrla.training or type(self.act_mrla) is not nn.ReLU or observed(self.mrla):
            return None
        if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
            return None
        return batchnorm_affine(self.bn_mrla)

    def forward(
            self,
            x: torch.Tensor,
            keys: List[torch.Tensor],
            values: List[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, _ = self.residual(x)
        if not torch.jit.is_scripting():
            if isinstance(values, ValueCache):  # the stage chose the training path
                attn, key, value = self.mrla.attend(out, keys)
                return base_branch_train(out, attn, value, values, self), key, value
            affine = self._folded_norm()
            if affine is not None:
                return self.mrla.forward_folded(out, keys, values, *affine)
        attn, key, value = self.mrla(out, keys, values)
        return out + self.drop_path_mrla(self.act_mrla(self.bn_mrla(attn))), key, value


class MRLABaseStage(nn.Sequential):
    """A stage of ``MRLABaseBottleneck`` blocks sharing a key/value cache that starts empty here."""

    def __init__(self, *blocks: nn.Module):
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys: List[torch.Tensor] = []
        values: List[torch.Tensor] = []
        if not torch.jit.is_scripting():
            if not self.grad_checkpointing and base_branch_applies(x, list(self)):
                values = ValueCache()  # the blocks take the training path, which recomputes values in backward
        for block in self:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                # fresh list copies: the recompute in backward must see the cache as it was here
                x, key, value = checkpoint(block, x, list(keys), list(values), use_reentrant=False)
            else:
                x, key, value = block(x, keys, values)
            keys.append(key)
            values.append(value)
        return x


class MRLAResNet(AuthorsLayoutMixin, ResNet):
    """timm ``ResNet`` built from MRLA blocks.

    Takes every ``ResNet`` argument; ``drop_path_rate`` becomes the constant drop-path rate of each
    block's MRLA branch (the residual branch gets none, as in the authors' models).
    """

    authors_key_rules = _AUTHORS_KEY_RULES

    def __init__(self, block, layers, drop_path_rate: float = 0., block_args=None, **kwargs):
        block_args = dict(block_args or {}, mrla_drop_path=drop_path_rate)
        super().__init__(block, layers, drop_path_rate=0., block_args=block_args, **kwargs)

    @torch.jit.ignore
    def no_weight_decay(self):
        return lambda_no_weight_decay(self)


class MRLABaseResNet(MRLAResNet):
    """``MRLAResNet`` of ``MRLABaseBottleneck`` blocks, each stage wrapped in an ``MRLABaseStage``."""

    def __init__(self, block, layers, **kwargs):
        super().__init__(block, layers, **kwargs)
        for name in ('layer1', 'layer2', 'layer3', 'layer4'):
            setattr(self, name, MRLABaseStage(*getattr(self, name)))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # the cache runs through a stage, so each stage checkpoints its own blocks; ResNet's flat
        # per-block checkpointing (self.grad_checkpointing) would drop it and stays off
        for name in ('layer1', 'layer2', 'layer3', 'layer4'):
            stage = getattr(self, name)
            if isinstance(stage, MRLABaseStage):
                stage.grad_checkpointing = enable


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map a state dict of the authors' ``ResNet_mrlal`` / ``ResNet_mrlab`` onto ours; the base timm
    model's weights become a warm start (``with_mrla_switched_off``)."""
    return with_mrla_switched_off(remap_state_dict(state_dict, model, _AUTHORS_KEY_RULES), model)


def _create_mrla_resnet(variant: str, pretrained: bool = False, **kwargs) -> MRLAResNet:
    model_cls = MRLABaseResNet if kwargs.get('block') is MRLABaseBottleneck else MRLAResNet
    return build_mrla_model(model_cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2302.03985',
        'paper_name': 'Cross-Layer Retrospective Retrieving via Layer Attention',
        'origin_url': 'https://github.com/joyfang1106/MRLA',
        **kwargs,
    }


# each model -> the timm model it extends (baseline in benchmarks, source of warm starts)
BASE_MODELS = {
    'resnet18_mrla': 'resnet18',
    'resnet34_mrla': 'resnet34',
    'resnet50_mrla': 'resnet50',
    'resnet101_mrla': 'resnet101',
    'resnet152_mrla': 'resnet152',
    'resnet50_mrla_base': 'resnet50c',
    'resnet101_mrla_base': 'resnet101c',
    'resnet50d_mrla': 'resnet50d',
    'resnet101d_mrla': 'resnet101d',
    'seresnet50_mrla': 'seresnet50',
    'resnext50_32x4d_mrla': 'resnext50_32x4d',
    'wide_resnet50_2_mrla': 'wide_resnet50_2',
}

default_cfgs = generate_default_cfgs(pretrained_cfgs({
    'resnet18_mrla': _cfg(),
    'resnet34_mrla': _cfg(),
    'resnet50_mrla': _cfg(),
    'resnet101_mrla': _cfg(),
    'resnet152_mrla': _cfg(),
    'resnet50_mrla_base': _cfg(first_conv='conv1.0'),
    'resnet101_mrla_base': _cfg(first_conv='conv1.0'),
    'resnet50d_mrla': _cfg(first_conv='conv1.0'),
    'resnet101d_mrla': _cfg(first_conv='conv1.0'),
    'seresnet50_mrla': _cfg(),
    'resnext50_32x4d_mrla': _cfg(),
    'wide_resnet50_2_mrla': _cfg(),
}, BASE_MODELS))


@register_model
def resnet18_mrla(pretrained: bool = False, **kwargs) -> MRLAResNet:
    """ResNet-18 with MRLA-light after every basic block (no reference model exists; see ``MRLABasicBlock``)."""
    model_args = dict(block=MRLABasicBlock, layers=(2, 2, 2, 2))
    return _create_mrla_resnet('resnet18_mrla', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet34_mrla(pretrained: bool = False, **kwargs) -> MRLAResNet:
    """ResNet-34 with MRLA-light after every basic block (no reference model exists; see ``MRLABasicBlock``)."""
    model_args = dict(block=MRLABasicBlock, layers=(3, 4, 6, 3))
    return _create_mrla_resnet('resnet34_mrla', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_mrla(pretrained: bool = False, **kwargs) -> MRLAResNet:
    """ResNet-50 with MRLA-light (the authors' ``resnet50_mrlal``)."""
    model_args = dict(block=MRLABottleneck, layers=(3, 4, 6, 3))
    return _create_mrla_resnet('resnet50_mrla', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet101_mrla(pretrained: bool = False, **kwargs) -> MRLAResNet:
    """ResNet-101 with MRLA-light (the authors' ``resnet101_mrlal``)."""
    model_args = dict(block=MRLABottleneck, layers=(3, 4, 23, 3))
    return _create_mrla_resnet('resnet101_mrla', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet152_mrla(pretrained: bool = False, **kwargs) -> MRLAResNet:
    """ResNet-152 with MRLA-light; the authors list ``resnet152_mrlal`` but never define it."""
    model_args = dict(block=MRLABottleneck, layers=(3, 8, 36, 3))
    return _create_mrla_resnet('resnet152_mrla', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_mrla_base(pretrained: bool = False, **kwargs) -> MRLABaseResNet:
    """ResNet-50 with MRLA-base and a deep stem (the authors' ``resnet50_mrlab``)."""
    model_args = dict(block=MRLABaseBottleneck, layers=(3, 4, 6, 3), stem_width=32, stem_type='deep')
    return _create_mrla_resnet('resnet50_mrla_base', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet101_mrla_base(pretrained: bool = False, **kwargs) -> MRLABaseResNet:
    """ResNet-101 with MRLA-base and a deep stem (the authors' ``resnet101_mrlab``)."""
    model_args = dict(block=MRLABaseBottleneck, layers=(3, 4, 23, 3), stem_width=32, stem_type='deep')
    return _create_mrla_resnet('resnet101_mrla_base', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50d_mrla(pretrained: bool = False, **kwargs) -> MRLAResNet:
    """ResNet-50-D (timm's ``resnet50d``: deep stem, average-pool downsample) with MRLA-light."""
    model_args = dict(block=MRLABottleneck, layers=(3, 4, 6, 3), stem_width=32, stem_type='deep', avg_down=True)
    return _create_mrla_resnet('resnet50d_mrla', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet101d_mrla(pretrained: bool = False, **kwargs) -> MRLAResNet:
    """ResNet-101-D (timm's ``resnet101d``: deep stem, average-pool downsample) with MRLA-light."""
    model_args = dict(block=MRLABottleneck, layers=(3, 4, 23, 3), stem_width=32, stem_type='deep', avg_down=True)
    return _create_mrla_resnet('resnet101d_mrla', pretrained, **dict(model_args, **kwargs))


@register_model
def seresnet50_mrla(pretrained: bool = False, **kwargs) -> MRLAResNet:
    """SE-ResNet-50 (timm's ``seresnet50``) with MRLA-light after each block's SE gate and residual add."""
    model_args = dict(block=MRLABottleneck, layers=(3, 4, 6, 3), block_args=dict(attn_layer='se'))
    return _create_mrla_resnet('seresnet50_mrla', pretrained, **dict(model_args, **kwargs))


@register_model
def resnext50_32x4d_mrla(pretrained: bool = False, **kwargs) -> MRLAResNet:
    """ResNeXt-50 32x4d (timm's ``resnext50_32x4d``) with MRLA-light."""
    model_args = dict(block=MRLABottleneck, layers=(3, 4, 6, 3), cardinality=32, base_width=4)
    return _create_mrla_resnet('resnext50_32x4d_mrla', pretrained, **dict(model_args, **kwargs))


@register_model
def wide_resnet50_2_mrla(pretrained: bool = False, **kwargs) -> MRLAResNet:
    """Wide ResNet-50-2 (timm's ``wide_resnet50_2``) with MRLA-light."""
    model_args = dict(block=MRLABottleneck, layers=(3, 4, 6, 3), base_width=128)
    return _create_mrla_resnet('wide_resnet50_2_mrla', pretrained, **dict(model_args, **kwargs))
