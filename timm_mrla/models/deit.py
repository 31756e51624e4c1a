"""DeiT with multi-head recurrent layer attention (MRLA), on timm's ``VisionTransformer``.

Paper: `Cross-Layer Retrospective Retrieving via Layer Attention` - https://arxiv.org/abs/2302.03985
Authors' code: https://github.com/joyfang1106/MRLA (``deit/deit_mrla_light.py``, ``deit/deit_mrla_base.py``).

After each block's attention and MLP the patch tokens are laid out on their grid (taken from the patch
embedding, so other image sizes and ``dynamic_img_size=True`` work) and pass through MRLA with 16 channels
per head. Two quirks of the authors' models are kept, as their checkpoints depend on them:

* the class token (every prefix token) slot of the MRLA output is the normalised input token itself, so
  each block adds ``LN(x)[cls]`` to the class token;
* MRLA-light normalises the block output and the block input with separate LayerNorms, applies GELU to
  the value and has no drop path; MRLA-base uses one LayerNorm, no GELU and no lambda, and its key/value
  cache restarts every 4 blocks (blocks 0, 4, 8 begin a group);
* the authors' MRLA-base model uses a constant drop-path rate of 0.1 in every block; ours takes
  ``drop_path_rate`` as that constant rate, 0.1 by default (MRLA-light keeps timm's linear rule).

The same MRLA-light block extends timm's other ViTs, built with their timm base model's exact arguments so that
timm's weights load as a warm start: ``vit_{small,base}_patch16_224_mrla`` (AugReg weights; the same
architecture as DeiT, other pretrained configs) and ``deit3_small_patch16_224_mrla`` (DeiT-III: LayerScale
``init_values``, position embeddings without the class token). In DeiT-III the MRLA branch sits after the
block's second residual add, outside both LayerScales: ``ls1``/``ls2`` keep scaling exactly the attention and
MLP outputs they were trained on, and the branch is gated by its own LayerNorms (zero in a warm start), not by a
LayerScale whose trained values (~1e-6 at init, small after training) would shrink its output and its gradients.
"""
from functools import partial
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import DropPath, LayerNorm
from timm.models import VisionTransformer, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.vision_transformer import Block
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter_fn

from timm_mrla.layers import MRLABase, MRLALight
from timm_mrla.layers.light_train import token_light
from timm_mrla.layers.recompute import is_plain_layer_norm, observed
from timm_mrla.hub import pretrained_cfgs
from ._helpers import (AuthorsLayoutMixin, build_mrla_model, lambda_no_weight_decay, remap_state_dict,
                       with_mrla_switched_off)

__all__ = ['MRLAVisionTransformer', 'MRLABaseVisionTransformer', 'MRLALightBlock', 'MRLABaseBlock']

# the authors' state-dict keys -> ours (checkpoint_filter_fn, and load_state_dict of the models)
_AUTHORS_KEY_RULES = (
    (r'\.mrla\.normx\.', '.norm_mrla.'),
    (r'\.mrla\.normo\.', '.norm_mrla_prev.'),
    (r'\.mrla\.mrla\.W([qkv])\.', lambda m: f'.mrla.{m[1].lower()}.'),
)


def _to_grid(tokens: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Patch tokens [B, H*W, C] -> feature map [B, C, H, W]."""
    return tokens.unflatten(1, grid).permute(0, 3, 1, 2)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """Feature map [B, C, H, W] -> tokens [B, H*W, C]."""
    return x.flatten(2).transpose(1, 2)


def split_intermediates(
        intermediates: List[torch.Tensor],
        num_prefix_tokens: int,
        grid: Tuple[int, int],
        output_fmt: str,
) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Block outputs [B, prefix + H*W, C] -> their patch tokens (NCHW on the grid, or NLC) and prefix tokens."""
    prefix_tokens = [y[:, :num_prefix_tokens] for y in intermediates]
    intermediates = [y[:, num_prefix_tokens:] for y in intermediates]
    if output_fmt == 'NCHW':
        intermediates = [_to_grid(y, grid).contiguous() for y in intermediates]
    return intermediates, prefix_tokens


class MRLALightBlock(Block):
    """timm ViT ``Block`` followed by the authors' token MRLA-light (``deit_mrla_light.py``).

    ``x + MRLA(x, block_input)`` where the patch tokens get
    ``mrla_light(LN_x(x)) + lambda * LN_prev(block_input)`` and the prefix tokens ``LN_x(x)``. In training the
    layer recomputes both normalised grids in backward instead of keeping them (``token_light``);
    TorchScript writes the layer out plainly.
    """

    def __init__(self, dim: int, num_heads: int, *args, norm_layer=LayerNorm, mrla_head_dim: int = 16,
                 device=None, dtype=None, **kwargs):
        dd = {'device': device, 'dtype': dtype}
        super().__init__(dim, num_heads, *args, norm_layer=norm_layer, **dd, **kwargs)
        self.norm_mrla = norm_layer(dim, **dd)
        self.norm_mrla_prev = norm_layer(dim, **dd)
        self.mrla = MRLALight(dim, head_dim=mrla_head_dim, value_act_layer=nn.GELU, **dd)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        prev = x
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        x_norm = self.norm_mrla(x)
        prev_tokens = prev[:, num_prefix_tokens:]
        x_grid = _to_grid(x_norm[:, num_prefix_tokens:], grid)
        if not torch.jit.is_scripting():
            if self._folds_lambda():
                out = self._folded_lambda_branch(x_grid, prev_tokens)
                return x + torch.cat([x_norm[:, :num_prefix_tokens], out], dim=1)
        prev_grid = _to_grid(self.norm_mrla_prev(prev_tokens), grid)
        if torch.jit.is_scripting():
            out = self.mrla(x_grid, prev_grid)
        else:
            out = token_light(x_grid, prev_grid, self.mrla, x, self.norm_mrla, prev_tokens, self.norm_mrla_prev)
        return x + torch.cat([x_norm[:, :num_prefix_tokens], _to_tokens(out)], dim=1)

    def _folds_lambda(self) -> bool:
        """At inference, with a plain LayerNorm and nobody observing the layer or the norm."""
        return (not self.mrla.training and is_plain_layer_norm(self.norm_mrla_prev)
                and not any(observed(m) for m in (self.mrla, self.norm_mrla_prev)))

    def _folded_lambda_branch(self, x_grid: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor:
        """The MRLA output's patch tokens [B, H*W, C] with ``lambda * LN_prev(prev)`` as one LayerNorm whose affine
        parameters carry lambda: one pass fewer, and the term stays in token layout (an exported graph has one
        Transpose and one Mul fewer per block)."""
        norm, lambda_t = self.norm_mrla_prev, self.mrla.lambda_t
        weight = lambda_t if norm.weight is None else norm.weight * lambda_t
        bias = None if norm.bias is None else norm.bias * lambda_t
        prev_term = F.layer_norm(prev_tokens, norm.normalized_shape, weight.to(prev_tokens.dtype),
                                 None if bias is None else bias.to(prev_tokens.dtype), norm.eps)
        return torch.addcmul(prev_term, _to_tokens(self.mrla.value(x_grid)), _to_tokens(self.mrla.gate(x_grid)))


class MRLABaseBlock(Block):
    """timm ViT ``Block`` followed by the authors' token MRLA-base (``deit_mrla_base.py``).

    ``forward(x, grid, num_prefix_tokens, keys, values)`` returns ``(x, key, value)`` for the group's cache.
    """

    def __init__(self, dim: int, num_heads: int, *args, norm_layer=LayerNorm, mrla_head_dim: int = 16,
                 device=None, dtype=None, **kwargs):
        dd = {'device': device, 'dtype': dtype}
        super().__init__(dim, num_heads, *args, norm_layer=norm_layer, **dd, **kwargs)
        self.norm_mrla = norm_layer(dim, **dd)
        self.mrla = MRLABase(dim, head_dim=mrla_head_dim, **dd)

    def forward(
            self,
            x: torch.Tensor,
            grid: Tuple[int, int],
            num_prefix_tokens: int,
            keys: List[torch.Tensor],
            values: List[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        x_norm = self.norm_mrla(x)
        out, key, value = self.mrla(_to_grid(x_norm[:, num_prefix_tokens:], grid), keys, values)
        return x + torch.cat([x_norm[:, :num_prefix_tokens], _to_tokens(out)], dim=1), key, value


class MRLAVisionTransformer(AuthorsLayoutMixin, VisionTransformer):
    """timm ``VisionTransformer`` of ``MRLALightBlock``: its blocks also receive the patch grid.

    Takes every ``VisionTransformer`` argument except ``patch_drop_rate``: MRLA lays the patch tokens out on
    their grid, which patch dropout would break.
    """

    authors_key_rules = _AUTHORS_KEY_RULES

    def __init__(self, *args, block_fn=MRLALightBlock, patch_drop_rate: float = 0., **kwargs):
        if patch_drop_rate:
            raise ValueError(f'MRLA needs every patch token on its grid; patch_drop_rate must be 0, '
                             f'got {patch_drop_rate}')
        super().__init__(*args, block_fn=block_fn, **kwargs)
        # the blocks take more than the tokens, so they are run by _run_blocks, never as a Sequential
        self.blocks = nn.ModuleList(self.blocks)

    @torch.jit.ignore
    def no_weight_decay(self):
        return super().no_weight_decay() | lambda_no_weight_decay(self)

    def _grid(self, x: torch.Tensor) -> Tuple[int, int]:
        if self.dynamic_img_size:
            return self.patch_embed.dynamic_feat_size((x.shape[-2], x.shape[-1]))
        return self.patch_embed.grid_size

    def _run_blocks(
            self,
            x: torch.Tensor,
            grid: Tuple[int, int],
            take_indices: List[int],
            last_index: int,
            norm: bool,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Blocks 0..last_index; returns the tokens and those of the blocks in take_indices."""
        intermediates: List[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            if i <= last_index:
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    x = checkpoint(block, x, grid, self.num_prefix_tokens)
                else:
                    x = block(x, grid, self.num_prefix_tokens)
                if i in take_indices:
                    intermediates.append(self.norm(x) if norm else x)
        return x, intermediates

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        grid = self._grid(x)
        x, _ = self._run_blocks(self._embed(x), grid, [], len(self.blocks) - 1, False)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            output_dict: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]], Dict[str, Any]]:
        """As ``VisionTransformer.forward_intermediates`` (without attention masks)."""
        assert output_fmt in ('NCHW', 'NLC'), 'Output format must be one of NCHW or NLC.'
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        grid = self._grid(x)
        last_index = max_index if stop_early else len(self.blocks) - 1
        x, intermediates = self._run_blocks(self._embed(x), grid, take_indices, last_index, norm)

        intermediates, prefix_tokens = split_intermediates(intermediates, self.num_prefix_tokens, grid, output_fmt)
        if output_dict:
            result: Dict[str, Any] = {'image_intermediates': intermediates}
            if return_prefix_tokens and self.num_prefix_tokens:
                result['image_intermediates_prefix'] = prefix_tokens
            if not intermediates_only:
                result['image_features'] = self.norm(x)
            return result
        if return_prefix_tokens and self.num_prefix_tokens:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


class MRLABaseVisionTransformer(MRLAVisionTransformer):
    """``MRLAVisionTransformer`` of ``MRLABaseBlock``, the key/value cache restarting every ``mrla_group_size``
    blocks (4 in the authors' models).

    The authors' base model hard-codes a drop-path rate of 0.1 in every block, whatever rate it is given;
    here ``drop_path_rate`` is that constant per-block rate, 0.1 by default.
    """

    def __init__(self, *args, mrla_group_size: int = 4, drop_path_rate: float = 0.1, **kwargs):
        super().__init__(*args, block_fn=MRLABaseBlock, **kwargs)
        self.mrla_group_size = mrla_group_size
        for block in self.blocks:
            block.drop_path1 = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()
            block.drop_path2 = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()

    def _run_blocks(
            self,
            x: torch.Tensor,
            grid: Tuple[int, int],
            take_indices: List[int],
            last_index: int,
            norm: bool,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        intermediates: List[torch.Tensor] = []
        keys: List[torch.Tensor] = []
        values: List[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            if i <= last_index:
                if i % self.mrla_group_size == 0:
                    keys = []
                    values = []
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    # list copies: the recompute in backward must see the cache as it was here
                    x, key, value = checkpoint(block, x, grid, self.num_prefix_tokens, list(keys), list(values))
                else:
                    x, key, value = block(x, grid, self.num_prefix_tokens, keys, values)
                keys.append(key)
                values.append(value)
                if i in take_indices:
                    intermediates.append(self.norm(x) if norm else x)
        return x, intermediates


def checkpoint_filter_fn(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        adapt_layer_scale: bool = False,
) -> Dict[str, torch.Tensor]:
    """Map a state dict of the authors' ``ViT_mrlal`` / ``ViT_mrlab`` (deit/main.py) onto ours; the base timm
    model's weights become a warm start (``with_mrla_switched_off``)."""
    # then timm's ViT filter, as for timm's own model: position embeddings resampled for another img_size,
    # DeiT-III's original gamma_1/gamma_2 keys renamed where adapt_layer_scale (as timm's _create_deit does)
    state_dict = vit_checkpoint_filter_fn(remap_state_dict(state_dict, model, _AUTHORS_KEY_RULES), model,
                                          adapt_layer_scale=adapt_layer_scale)
    return with_mrla_switched_off(state_dict, model)


def _create_mrla_deit(variant: str, pretrained: bool = False, **kwargs) -> MRLAVisionTransformer:
    base = kwargs.pop('mrla_base', False)
    adapt_layer_scale = kwargs.pop('adapt_layer_scale', False)
    out_indices = kwargs.pop('out_indices', 3)
    return build_mrla_model(
        MRLABaseVisionTransformer if base else MRLAVisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=partial(checkpoint_filter_fn, adapt_layer_scale=adapt_layer_scale),
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2302.03985',
        'paper_name': 'Cross-Layer Retrospective Retrieving via Layer Attention',
        'origin_url': 'https://github.com/joyfang1106/MRLA',
        **kwargs,
    }


# each model -> the timm model it extends (baseline in benchmarks, source of warm starts)
BASE_MODELS = {
    'deit_mrla': 'deit_tiny_patch16_224',
    'deit_tiny_mrla': 'deit_tiny_patch16_224',
    'deit_small_mrla': 'deit_small_patch16_224',
    'deit_base_mrla': 'deit_base_patch16_224',
    'deit_tiny_mrla_base': 'deit_tiny_patch16_224',
    'deit_small_mrla_base': 'deit_small_patch16_224',
    'deit_base_mrla_base': 'deit_base_patch16_224',
    'vit_small_patch16_224_mrla': 'vit_small_patch16_224',
    'vit_base_patch16_224_mrla': 'vit_base_patch16_224',
    'deit3_small_patch16_224_mrla': 'deit3_small_patch16_224',
}

default_cfgs = generate_default_cfgs(pretrained_cfgs({
    'deit_mrla': _cfg(),
    'deit_tiny_mrla': _cfg(),
    'deit_small_mrla': _cfg(),
    'deit_base_mrla': _cfg(),
    'deit_tiny_mrla_base': _cfg(),
    'deit_small_mrla_base': _cfg(),
    'deit_base_mrla_base': _cfg(),
    # the data configs of timm's ViT and DeiT-III families (a warm start takes its own base tag's)
    'vit_small_patch16_224_mrla': _cfg(crop_pct=0.9, mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD),
    'vit_base_patch16_224_mrla': _cfg(crop_pct=0.9, mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD),
    'deit3_small_patch16_224_mrla': _cfg(crop_pct=0.9),
}, BASE_MODELS))

_TINY = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
_SMALL = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
_BASE = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)


@register_model
def deit_tiny_mrla(pretrained: bool = False, **kwargs) -> MRLAVisionTransformer:
    """DeiT-Tiny with MRLA-light (the authors' ``deit_mrlal_tiny_patch16_224``)."""
    return _create_mrla_deit('deit_tiny_mrla', pretrained, **dict(_TINY, **kwargs))


@register_model
def deit_small_mrla(pretrained: bool = False, **kwargs) -> MRLAVisionTransformer:
    """DeiT-Small with MRLA-light (the authors' ``deit_mrlal_small_patch16_224``)."""
    return _create_mrla_deit('deit_small_mrla', pretrained, **dict(_SMALL, **kwargs))


@register_model
def deit_base_mrla(pretrained: bool = False, **kwargs) -> MRLAVisionTransformer:
    """DeiT-Base with MRLA-light (the authors' ``deit_mrlal_base_patch16_224``)."""
    return _create_mrla_deit('deit_base_mrla', pretrained, **dict(_BASE, **kwargs))


@register_model
def deit_mrla(pretrained: bool = False, **kwargs) -> MRLAVisionTransformer:
    """DeiT-Tiny with MRLA-light, the model the authors' README trains."""
    return _create_mrla_deit('deit_mrla', pretrained, **dict(_TINY, **kwargs))


@register_model
def deit_tiny_mrla_base(pretrained: bool = False, **kwargs) -> MRLABaseVisionTransformer:
    """DeiT-Tiny with MRLA-base (the authors' ``deit_mrlab_tiny_patch16_224``)."""
    return _create_mrla_deit('deit_tiny_mrla_base', pretrained, mrla_base=True, **dict(_TINY, **kwargs))


@register_model
def deit_small_mrla_base(pretrained: bool = False, **kwargs) -> MRLABaseVisionTransformer:
    """DeiT-Small with MRLA-base (the authors' ``deit_mrlab_small_patch16_224``)."""
    return _create_mrla_deit('deit_small_mrla_base', pretrained, mrla_base=True, **dict(_SMALL, **kwargs))


@register_model
def deit_base_mrla_base(pretrained: bool = False, **kwargs) -> MRLABaseVisionTransformer:
    """DeiT-Base with MRLA-base (the authors' ``deit_mrlab_base_patch16_224``)."""
    return _create_mrla_deit('deit_base_mrla_base', pretrained, mrla_base=True, **dict(_BASE, **kwargs))


@register_model
def vit_small_patch16_224_mrla(pretrained: bool = False, **kwargs) -> MRLAVisionTransformer:
    """ViT-S/16 (timm's ``vit_small_patch16_224``, AugReg weights) with MRLA-light."""
    return _create_mrla_deit('vit_small_patch16_224_mrla', pretrained, **dict(_SMALL, **kwargs))


@register_model
def vit_base_patch16_224_mrla(pretrained: bool = False, **kwargs) -> MRLAVisionTransformer:
    """ViT-B/16 (timm's ``vit_base_patch16_224``, AugReg weights) with MRLA-light."""
    return _create_mrla_deit('vit_base_patch16_224_mrla', pretrained, **dict(_BASE, **kwargs))


@register_model
def deit3_small_patch16_224_mrla(pretrained: bool = False, **kwargs) -> MRLAVisionTransformer:
    """DeiT-III Small (timm's ``deit3_small_patch16_224``) with MRLA-light after each block's LayerScaled residual
    adds (see the module doc)."""
    model_args = dict(_SMALL, no_embed_class=True, init_values=1e-6)
    return _create_mrla_deit('deit3_small_patch16_224_mrla', pretrained, adapt_layer_scale=True,
                             **dict(model_args, **kwargs))
