"""CeiT with multi-head recurrent layer attention (MRLA).

Papers: `Cross-Layer Retrospective Retrieving via Layer Attention` - https://arxiv.org/abs/2302.03985
and CeiT, `Incorporating Convolution Designs into Visual Transformers` - https://arxiv.org/abs/2103.11816.
Authors' code: https://github.com/joyfang1106/MRLA, ``ceit/ceit_mrla.py`` (in the history only, commit 2915affe).

timm has no CeiT, so the whole model is here, on timm's layers:

* Image-to-Tokens stem: conv 7x7/2, BatchNorm, max-pool 3x3/2, then a 4x4/4 patch projection (14x14 tokens at 224);
* blocks of attention, the locally-enhanced feed-forward (LeFF: 1x1 conv, depthwise 3x3, 1x1 conv, each followed by
  BatchNorm, GELU after the first two) on the patch-token grid, and MRLA-light (value: depthwise 3x3, BatchNorm,
  GELU; 32 channels per head);
* a layer-wise class-token attention (LCA) head: the class token of the last block attends over the class tokens
  of every block (plus a per-layer position embedding), then a feed-forward, a LayerNorm and the classifier.

The authors' forward has quirks that their checkpoints depend on; they are kept:

* each block starts by replacing its input with ``norm1(x)``: the residual stream of the attention carries the
  normalised tokens, and MRLA's ``o_{t-1}`` (times ``lambda``) is that same normalised input;
* LeFF and MRLA pass the class token through, so the class token receives ``norm2(x)[cls]`` and
  ``norm_mrla(x)[cls]`` as the branch outputs of its slot;
* one drop-path rate per block (timm's linear rule) acts on all three branches, MRLA included;
* the LCA block adds its attention to the last class token before normalisation (``norm1`` only feeds the
  attention) and has no drop path.

No pretrained weights exist; the authors' checkpoints (``ceit/main.py``: ``model``, ``optimizer``, ...) load by
every route the DeiT ones do.
"""
from functools import partial
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Attention, BatchNormAct2d, DropPath, LayerNorm, Mlp, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models._builder import resolve_pretrained_cfg

from timm_mrla.layers import MRLALight
from timm_mrla.layers.light_train import token_light
from timm_mrla.hub import pretrained_cfgs
from ._helpers import AuthorsLayoutMixin, build_mrla_model, lambda_no_weight_decay, remap_state_dict
from .deit import _to_grid, _to_tokens, split_intermediates

__all__ = ['CeiTMRLA', 'CeiTMRLABlock', 'LayerClassAttention', 'LocallyEnhancedFeedForward', 'ImageToTokens']

# the authors' state-dict keys -> ours (checkpoint_filter_fn, and load_state_dict of the models)
_AUTHORS_KEY_RULES = (
    (r'^i2t\.backbone\.', 'patch_embed.'),
    (r'^i2t\.proj\.', 'patch_embed.proj.'),
    (r'\.mrla\.mla\.W([qkv])\.', lambda m: f'.mrla.{m[1].lower()}.'),
    (r'\.mrla\.mla\.bn_v\.', '.mrla.value_act.'),
    (r'^lca\.feedforward\.', 'lca.mlp.'),
)


class ImageToTokens(nn.Module):
    """CeiT's Image-to-Tokens stem: conv, BatchNorm and max-pool (stride 4 together, no activation), then a
    ``patch_size`` convolution projecting patches of the low-level features to tokens [B, N, C]."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            embed_dim: int = 768,
            stem_chans: int = 64,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv = nn.Conv2d(in_chans, stem_chans, 7, stride=2, padding=3, bias=False, **dd)
        self.bn = nn.BatchNorm2d(stem_chans, **dd)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.proj = nn.Conv2d(stem_chans, embed_dim, patch_size, stride=patch_size, **dd)
        # conv and pool both map s -> (s - 1) // 2 + 1; the projection drops a partial patch
        self.grid_size = tuple((((s - 1) // 2) // 2 + 1) // patch_size for s in to_2tuple(img_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_tokens(self.proj(self.pool(self.bn(self.conv(x)))))


class LocallyEnhancedFeedForward(nn.Module):
    """LeFF on a feature map [B, C, H, W]: pointwise expansion, depthwise ``kernel_size`` conv, pointwise
    projection, each followed by BatchNorm (GELU after the first two)."""

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int = 3, act_layer=nn.GELU, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv1 = nn.Conv2d(dim, hidden_dim, 1, **dd)
        self.bn1 = nn.BatchNorm2d(hidden_dim, **dd)
        self.conv2 = nn.Conv2d(hidden_dim, hidden_dim, kernel_size, padding=kernel_size // 2, groups=hidden_dim, **dd)
        self.bn2 = nn.BatchNorm2d(hidden_dim, **dd)
        self.conv3 = nn.Conv2d(hidden_dim, dim, 1, **dd)
        self.bn3 = nn.BatchNorm2d(dim, **dd)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


class _AttentionBlock(nn.Module):
    """``norm1``, timm's ``Attention`` and ``norm2``: what CeiT's blocks and its LCA block share."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            norm_layer=LayerNorm,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm1 = norm_layer(dim, **dd)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.norm2 = norm_layer(dim, **dd)


class CeiTMRLABlock(_AttentionBlock):
    """Attention, LeFF and MRLA-light, as the authors' CeiT-MRLA block (see the module docstring for its quirks).

    ``forward(x, grid)``: tokens [B, 1 + H*W, C] and the patch grid (H, W); returns the block's tokens. Takes
    ``_AttentionBlock``'s arguments besides its own.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            drop_path: float = 0.,
            act_layer=nn.GELU,
            leff_kernel_size: int = 3,
            mrla_head_dim: int = 32,
            norm_layer=LayerNorm,
            mrla: bool = True,
            device=None,
            dtype=None,
            **kwargs,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__(dim, num_heads, norm_layer=norm_layer, **dd, **kwargs)
        self.leff = LocallyEnhancedFeedForward(dim, int(dim * mlp_ratio), leff_kernel_size, act_layer, **dd)
        self.norm_mrla = norm_layer(dim, **dd) if mrla else None
        self.mrla = MRLALight(
            dim, head_dim=mrla_head_dim, value_act_layer=partial(BatchNormAct2d, dim, act_layer=act_layer, **dd),
            **dd) if mrla else None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        x = self.norm1(x)  # the authors' block continues from its normalised input (module docstring)
        prev = x
        x = x + self.drop_path(self.attn(x))
        x_norm = self.norm2(x)
        leff = _to_tokens(self.leff(_to_grid(x_norm[:, 1:], grid)))
        x = x + self.drop_path(torch.cat([x_norm[:, :1], leff], dim=1))
        if self.mrla is None or self.norm_mrla is None:  # plain CeiT
            return x
        x_norm = self.norm_mrla(x)
        x_grid, prev_grid = _to_grid(x_norm[:, 1:], grid), _to_grid(prev[:, 1:], grid)
        if torch.jit.is_scripting():
            mrla = self.mrla(x_grid, prev_grid)
        else:  # in training: a unit that recomputes its maps from x and prev, which the block keeps anyway
            mrla = token_light(x_grid, prev_grid, self.mrla, x, self.norm_mrla)
        return x + self.drop_path(torch.cat([x_norm[:, :1], _to_tokens(mrla)], dim=1))


class LayerClassAttention(_AttentionBlock):
    """CeiT's LCA block: the last of the layer class tokens [B, L, C] attends over all of them, then an MLP;
    returns [B, 1, C]. Takes ``_AttentionBlock``'s arguments besides its own."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., act_layer=nn.GELU, proj_drop: float = 0.,
                 device=None, dtype=None, **kwargs):
        dd = {'device': device, 'dtype': dtype}
        super().__init__(dim, num_heads, proj_drop=proj_drop, **dd, **kwargs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # only the last token's query is needed; over a dozen tokens, computing every row and keeping the last
        # costs nothing and keeps timm's Attention (and its fused kernels)
        x = x[:, -1:] + self.attn(self.norm1(x))[:, -1:]
        return x + self.mlp(self.norm2(x))


class CeiTMRLA(AuthorsLayoutMixin, nn.Module):
    """CeiT with MRLA-light in every block and the LCA head (the authors' ``CeIT_MRLA``).

    ``forward_features`` returns the normalised output of the LCA head as a 1x1 map [B, C, 1, 1]: CeiT's
    features end pooled (over layers, by attention), and timm's API wants spatial features; ``forward_head`` with
    ``global_pool='token'`` flattens it. ``forward_intermediates`` / ``features_only`` give the blocks' patch tokens
    on their 14x14 grid (stride 16); CeiT has no final norm over those tokens, so their ``norm`` does nothing.
    The input size is fixed by the position embedding (``img_size``). ``mrla=False`` builds the same model without
    its MRLA branches: plain CeiT, as the authors' blocks are otherwise (the baseline of the README's model table).
    """

    authors_key_rules = _AUTHORS_KEY_RULES

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            stem_chans: int = 64,
            leff_kernel_size: int = 3,
            mrla_head_dim: int = 32,
            norm_layer=partial(LayerNorm, eps=1e-6),
            act_layer=nn.GELU,
            mrla: bool = True,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        assert global_pool in ('token', '')
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False

        self.patch_embed = ImageToTokens(img_size, patch_size, in_chans, embed_dim, stem_chans, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device='cpu')]  # stochastic depth decay
        self.blocks = nn.ModuleList([
            CeiTMRLABlock(
                embed_dim, num_heads, mlp_ratio, dpr[i], act_layer, leff_kernel_size, mrla_head_dim, norm_layer, mrla,
                qkv_bias=qkv_bias, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, **dd)
            for i in range(depth)])
        reduction = to_2tuple(img_size)[0] // self.patch_embed.grid_size[0]
        self.feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=reduction) for i in range(depth)]

        self.pos_layer_embed = nn.Parameter(torch.zeros(1, depth, embed_dim, **dd))
        self.lca = LayerClassAttention(
            embed_dim, num_heads, mlp_ratio, act_layer, proj_drop_rate, qkv_bias=qkv_bias, attn_drop=attn_drop_rate,
            norm_layer=norm_layer, **dd)
        self.norm = norm_layer(embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {'pos_embed', 'cls_token'} | lambda_no_weight_decay(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^cls_token|pos_embed|patch_embed',
            blocks=[(r'^blocks\.(\d+)', None), (r'^pos_layer_embed|^lca|^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            assert global_pool in ('token', '')
            self.global_pool = global_pool
        device, dtype = self.cls_token.device, self.cls_token.dtype
        self.head = nn.Linear(self.embed_dim, num_classes, device=device, dtype=dtype) if num_classes > 0 \
            else nn.Identity()
        self.head.train(self.training)  # a new head follows the model's mode (timm's contract)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def _run_blocks(
            self,
            x: torch.Tensor,
            take_indices: List[int],
            last_index: int,
    ) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        """Blocks 0..last_index; returns the tokens, every block's class token and the tokens of take_indices."""
        grid = self.patch_embed.grid_size
        cls_tokens: List[torch.Tensor] = []
        intermediates: List[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            if i <= last_index:
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    x = checkpoint(block, x, grid)
                else:
                    x = block(x, grid)
                cls_tokens.append(x[:, 0])
                if i in take_indices:
                    intermediates.append(x)
        return x, cls_tokens, intermediates

    def _class_head_features(self, cls_tokens: List[torch.Tensor]) -> torch.Tensor:
        """Layer class tokens -> the LCA head's normalised class token as [B, C, 1, 1]. After
        ``prune_intermediate_layers`` removed the head: the last kept block's class token."""
        x = torch.stack(cls_tokens, dim=1)
        if self.pos_layer_embed is not None:
            x = x + self.pos_layer_embed
        x = self.norm(self.lca(x))[:, -1]
        return x[:, :, None, None]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _, cls_tokens, _ = self._run_blocks(self._embed(x), [], len(self.blocks) - 1)
        return self._class_head_features(cls_tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool:
            x = x.flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

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
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The blocks' patch tokens (NCHW on their grid, or NLC), as ``VisionTransformer.forward_intermediates``;
        ``norm`` is accepted for the API and changes nothing (CeiT's only final norm is in its class-token head)."""
        assert output_fmt in ('NCHW', 'NLC'), 'Output format must be one of NCHW or NLC.'
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        last_index = max_index if stop_early else len(self.blocks) - 1
        _, cls_tokens, intermediates = self._run_blocks(self._embed(x), take_indices, last_index)
        grid = self.patch_embed.grid_size
        intermediates, prefix_tokens = split_intermediates(intermediates, 1, grid, output_fmt)
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self._class_head_features(cls_tokens), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Keep the blocks up to the last of ``indices``; ``prune_head`` removes the whole class-token head (LCA,
        its layer embedding and norm, classifier), ``prune_norm`` that norm alone."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm or prune_head:
            self.norm = nn.Identity()
        if prune_head:
            self.pos_layer_embed = None
            self.lca = nn.Identity()
            self.reset_classifier(0, '')
        return take_indices


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map a state dict of the authors' ``CeIT_MRLA`` (ceit/main.py) onto ours."""
    return remap_state_dict(state_dict, model, _AUTHORS_KEY_RULES)


def _create_ceit(variant: str, pretrained: bool = False, **kwargs) -> CeiTMRLA:
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
        if not (cfg.hf_hub_id or cfg.url or cfg.file or cfg.state_dict):  # timm would only warn, then train from zero
            raise RuntimeError(
                f'no pretrained weights exist for {variant}: nobody has published CeiT-MRLA weights. Load a '
                f'checkpoint with pretrained_cfg_overlay=dict(file=PATH) or checkpoint_path=PATH, or create the '
                f'model with pretrained=False.')
    out_indices = kwargs.pop('out_indices', 3)
    return build_mrla_model(
        CeiTMRLA,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (1, 1),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.conv', 'classifier': 'head',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2302.03985',
        'paper_name': 'Cross-Layer Retrospective Retrieving via Layer Attention',
        'origin_url': 'https://github.com/joyfang1106/MRLA',
        **kwargs,
    }


# timm has no CeiT: no base model to compare with or warm-start from, so no pretrained tags
default_cfgs = generate_default_cfgs(pretrained_cfgs({
    'ceit_tiny_mrla': _cfg(),
    'ceit_small_mrla': _cfg(),
    'ceit_base_mrla': _cfg(),
}, {}))


@register_model
def ceit_tiny_mrla(pretrained: bool = False, **kwargs) -> CeiTMRLA:
    """CeiT-Tiny with MRLA-light (the authors' ``ceit_mrla_tiny_patch16_224``)."""
    return _create_ceit('ceit_tiny_mrla', pretrained, **dict(dict(embed_dim=192, num_heads=3), **kwargs))


@register_model
def ceit_small_mrla(pretrained: bool = False, **kwargs) -> CeiTMRLA:
    """CeiT-Small with MRLA-light (the authors' ``ceit_mrla_small_patch16_224``)."""
    return _create_ceit('ceit_small_mrla', pretrained, **dict(dict(embed_dim=384, num_heads=6), **kwargs))


@register_model
def ceit_base_mrla(pretrained: bool = False, **kwargs) -> CeiTMRLA:
    """CeiT-Base with MRLA-light (the authors' ``ceit_mrla_base_patch16_224``)."""
    return _create_ceit('ceit_base_mrla', pretrained, **dict(dict(embed_dim=768, num_heads=12), **kwargs))
