"""The training path of the MRLA-base branch of the CNN blocks: ``out + drop_path(ReLU(BN(sum_s a_s * v_s)))``.

Autograd would keep, per block, the value ``v_t = dwconv(out_t)`` (each later block's weighted sum saves it for
the gradient of its attention weights), the weighted sum (saved by BatchNorm) and the ReLU output: three feature
maps beyond the block output itself. ``_BaseBranch`` computes the weighted sum, BatchNorm, ReLU, drop-path and
the residual add as one unit and keeps none of them: its backward recomputes the weighted sum, and the values
are recomputed from the block outputs ``out_s`` (kept by the blocks' own ReLUs anyway) once per backward pass
and shared by every block of the stage that attends to them, through the stage's ``ValueCache``.

The attention weights (softmax over the stage's keys) and the values stay in autograd: they are small, or
computed by the depthwise convolution whose own backward then runs once per value. BatchNorm runs through
torch's own kernels, so batch statistics and running-statistics updates are those of ``nn.BatchNorm2d``;
drop-path draws its mask as timm's ``DropPath`` does.
"""
from typing import Dict, List

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from .mrla import expand_heads, weighted_values
from .recompute import (average_factor, batchnorm_scale_shift, drop_path_keep_scale, is_plain_batchnorm,
                        needs_plain_modules, observed)

__all__ = ['ValueCache', 'base_branch_applies', 'base_branch_train']


class ValueCache(list):
    """The values of one MRLA-base stage (a list, as the plain blocks take it) that also records, for the training
    path, the map and the kernel each value was computed from, and holds during backward the values recomputed
    from them."""

    def __init__(self):
        super().__init__()
        self.maps: List[torch.Tensor] = []
        self.kernels: List[torch.Tensor] = []
        self.recomputed: Dict[int, torch.Tensor] = {}


def base_branch_applies(x: torch.Tensor, blocks: List[nn.Module]) -> bool:
    """Whether ``base_branch_train`` computes exactly what the plain modules of every block would: training-mode
    ``nn.BatchNorm2d`` (or timm's ``BatchNormAct2d`` without activation and drop), ``nn.ReLU``, identity or timm
    ``DropPath``, a layer without value activation, nobody observing the modules, grad mode, no tracer, and
    ``needs_plain_modules`` false. The stage decides once for all its blocks, as each block's unit needs the values
    of all before it."""
    if isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling() or not torch.is_grad_enabled():
        return False  # tracers take the plain modules: FX records them, Inductor recomputes on its own
    if needs_plain_modules(x):
        return False
    for block in blocks:
        norm, act, drop_path, mrla = block.bn_mrla, block.act_mrla, block.drop_path_mrla, block.mrla
        if not is_plain_batchnorm(norm):
            return False
        if type(act) is not nn.ReLU or type(drop_path) not in (nn.Identity, DropPath):
            return False
        if not isinstance(mrla.value_act, nn.Identity) or not norm.training:
            return False
        if any(observed(m) for m in (mrla, norm, act, drop_path)):
            return False
    return True


class _BaseBranch(torch.autograd.Function):
    """``out + keep_scale * ReLU(BN_train(sum_s attn[:, s] * values[s])))``, saving no feature map of its own.

    ``attn`` [B, T, num_heads]; ``values`` the T values [B, C, H, W] (used, not saved), computed from ``maps`` by
    depthwise convolution with ``kernels`` (saved: the maps are kept by the blocks anyway); ``recomputed``, shared
    by a stage's units, holds the values recomputed in backward until the block that made them is done. The
    drop-path factors ``keep_scale`` [B, 1, 1, 1] (non-negative, so they commute with the ReLU) are drawn here.
    """

    @staticmethod
    def forward(ctx, recomputed, head_dim, attn, out, bn_weight, bn_bias, running_mean, running_var, momentum,
                eps, drop_prob, scale_by_keep, *tensors):
        num_values = attn.shape[1]
        values, maps, kernels = tensors[:num_values], tensors[num_values:2 * num_values], tensors[2 * num_values:]
        summed = weighted_values(attn, values, head_dim)
        mean, var = torch.batch_norm_update_stats(summed, running_mean, running_var, momentum)
        invstd = torch.rsqrt(var + eps)
        keep_scale = drop_path_keep_scale(out, drop_prob, scale_by_keep)
        scale, shift = batchnorm_scale_shift(mean, invstd, bn_weight, bn_bias, keep_scale)
        result = torch.addcmul(shift, summed, scale, out=summed).relu_().add_(out)
        ctx.save_for_backward(attn, bn_weight, bn_bias, mean, invstd, keep_scale, *maps, *kernels)
        ctx.recomputed, ctx.head_dim, ctx.eps = recomputed, head_dim, eps
        return result

    @staticmethod
    def backward(ctx, grad_result):
        attn, bn_weight, bn_bias, mean, invstd, keep_scale, *sources = ctx.saved_tensors
        num_values = attn.shape[1]
        maps, kernels = sources[:num_values], sources[num_values:]
        values = []
        for s in range(num_values):
            if s not in ctx.recomputed:  # the first block of the backward pass to need it (or a second pass)
                ctx.recomputed[s] = F.conv2d(maps[s], kernels[s].to(maps[s].dtype), None, 1, 1, 1, maps[s].shape[1])
            values.append(ctx.recomputed[s])
        # this block made the last value it uses; no block before it attends to it
        del ctx.recomputed[num_values - 1]
        summed = weighted_values(attn, values, ctx.head_dim)
        scale, shift = batchnorm_scale_shift(mean, invstd, bn_weight, bn_bias, keep_scale)
        # through the ReLU, its mask taken in the maps' dtype as in forward
        grad_norm_out = torch.addcmul(shift, summed, scale, out=torch.empty_like(summed)).gt_(0).mul_(grad_result)
        if keep_scale is not None:
            grad_norm_out.mul_(keep_scale)
        affine = bn_weight is not None
        grad_summed, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
            grad_norm_out, summed, bn_weight, None, None, mean, invstd, True, ctx.eps, [True, affine, affine])
        del grad_norm_out
        grad_attn, grad_values = [], []
        for s, value in enumerate(values):
            per_channel = torch.mul(grad_summed, value, out=summed).sum((2, 3))
            grad_attn.append(per_channel.unflatten(1, (-1, ctx.head_dim)).sum(-1))
            grad_values.append(grad_summed * expand_heads(attn[:, s], ctx.head_dim))
        grad_attn = torch.stack(grad_attn, 1).to(attn.dtype)
        return (None, None, grad_attn, grad_result, grad_bn_weight, grad_bn_bias, None, None, None, None, None, None,
                *grad_values, *[None] * (2 * num_values))


def base_branch_train(out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, cache: ValueCache,
                      block: nn.Module) -> torch.Tensor:
    """``out + drop_path(ReLU(BN(attention output)))`` of an MRLA-base block in training mode, through
    ``_BaseBranch`` (``base_branch_applies`` says when it is exact). ``attn`` [B, T, num_heads] are the block's
    softmax weights over the stage's values so far (``cache``) and its own ``value``, computed from ``out``."""
    norm, drop_path, mrla = block.bn_mrla, block.drop_path_mrla, block.mrla
    cache.maps.append(out)
    cache.kernels.append(mrla.v.weight)
    track = norm.track_running_stats
    momentum = average_factor(norm.num_batches_tracked if track else None, norm.momentum)
    return _BaseBranch.apply(
        cache.recomputed, mrla.head_dim, attn, out, norm.weight, norm.bias,
        norm.running_mean if track else None, norm.running_var if track else None, momentum, norm.eps,
        getattr(drop_path, 'drop_prob', 0.), getattr(drop_path, 'scale_by_keep', True),
        *cache, value, *cache.maps, *cache.kernels)
