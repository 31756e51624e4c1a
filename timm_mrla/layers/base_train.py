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

Under torch.compile the unit runs as custom operators that Dynamo and Inductor treat as opaque (a forward one
whose backward formula recomputes, see the comment above ``_base_branch_op``), so that a compiled model keeps the
same saving instead of the maps Inductor's partitioner would otherwise keep.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from .mrla import expand_heads, weighted_values
from .recompute import (average_factor, batchnorm_scale_shift, drop_path_keep_scale, is_plain_batchnorm,
                        needs_plain_modules, observed, update_running_stats)

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
    ``DropPath``, a layer without value activation, nobody observing the modules, grad mode, no FX trace, and
    ``needs_plain_modules`` false. The stage decides once for all its blocks, as each block's unit needs the values
    of all before it. (Under torch.compile the unit runs as its operators.)"""
    if isinstance(x, torch.fx.Proxy) or not torch.is_grad_enabled():
        return False  # FX records the plain modules
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


def _branch_output(summed: torch.Tensor, out: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                   bn_weight: Optional[torch.Tensor], bn_bias: Optional[torch.Tensor],
                   keep_scale: Optional[torch.Tensor]) -> torch.Tensor:
    """``out + keep_scale * ReLU(BN(summed))`` given the batch statistics, written over ``summed``."""
    scale, shift = batchnorm_scale_shift(mean, invstd, bn_weight, bn_bias, keep_scale)
    return torch.addcmul(shift, summed, scale, out=summed).relu_().add_(out)


def _branch_backward(grad_result: torch.Tensor, attn: torch.Tensor, values: List[torch.Tensor],
                     bn_weight: Optional[torch.Tensor], bn_bias: Optional[torch.Tensor], mean: torch.Tensor,
                     invstd: torch.Tensor, keep_scale: Optional[torch.Tensor], eps: float, head_dim: int):
    """The gradients of ``attn``, of each value and of the BatchNorm affine (None without one), from the recomputed
    values; the residual ``out`` takes ``grad_result`` as it is."""
    summed = weighted_values(attn, values, head_dim)
    scale, shift = batchnorm_scale_shift(mean, invstd, bn_weight, bn_bias, keep_scale)
    # through the ReLU, its mask taken in the maps' dtype as in forward
    grad_norm_out = torch.addcmul(shift, summed, scale, out=torch.empty_like(summed)).gt_(0).mul_(grad_result)
    if keep_scale is not None:
        grad_norm_out.mul_(keep_scale)
    affine = bn_weight is not None
    grad_summed, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
        grad_norm_out, summed, bn_weight, None, None, mean, invstd, True, eps, [True, affine, affine])
    del grad_norm_out
    grad_attn, grad_values = [], []
    for s, value in enumerate(values):
        per_channel = torch.mul(grad_summed, value, out=summed).sum((2, 3))
        grad_attn.append(per_channel.unflatten(1, (-1, head_dim)).sum(-1))
        grad_values.append(grad_summed * expand_heads(attn[:, s], head_dim))
    return torch.stack(grad_attn, 1).to(attn.dtype), grad_values, grad_bn_weight, grad_bn_bias


def _value(source: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """An MRLA-base value, ``mrla.v(source)`` (a depthwise 3x3 convolution), recomputed."""
    return F.conv2d(source, kernel.to(source.dtype), None, 1, 1, 1, source.shape[1])


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
        result = _branch_output(summed, out, mean, invstd, bn_weight, bn_bias, keep_scale)
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
                ctx.recomputed[s] = _value(maps[s], kernels[s])
            values.append(ctx.recomputed[s])
        # this block made the last value it uses; no block before it attends to it
        del ctx.recomputed[num_values - 1]
        grad_attn, grad_values, grad_bn_weight, grad_bn_bias = _branch_backward(
            grad_result, attn, values, bn_weight, bn_bias, mean, invstd, keep_scale, ctx.eps, ctx.head_dim)
        return (None, None, grad_attn, grad_result, grad_bn_weight, grad_bn_bias, None, None, None, None, None, None,
                *grad_values, *[None] * (2 * num_values))


# Under torch.compile the forward runs as a custom operator, which Dynamo and Inductor treat as opaque, so nothing
# in it is kept for backward; it returns the batch statistics (an operator with a backward formula must not mutate
# its inputs) and the running statistics are updated outside it. Its backward formula is traced, so Inductor fuses
# it; it recomputes the values with an operator of its own, which the joint graph's common-subexpression
# elimination merges across the stage's blocks, so each value is recomputed once per backward pass, as
# ``ValueCache.recomputed`` does in eager mode. The forward's own value convolution is a plain one, which that
# elimination cannot merge with the recompute (the value would then be kept), and the recomputed weighted sum
# differs from the forward's in its inputs for the same reason.

@torch.library.custom_op('timm_mrla::base_branch', mutates_args=())
def _base_branch_op(attn: torch.Tensor, out: torch.Tensor, values: List[torch.Tensor], maps: List[torch.Tensor],
                    kernels: List[torch.Tensor], bn_weight: Optional[torch.Tensor], bn_bias: Optional[torch.Tensor],
                    keep_scale: Optional[torch.Tensor], stats_dtype: torch.dtype, eps: float, head_dim: int
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_BaseBranch.forward`` as an operator: the result, and the batch mean and biased variance in
    ``stats_dtype`` (the running statistics' dtype, as ``batch_norm_update_stats`` returns them). ``maps`` and
    ``kernels`` are there for the backward formula."""
    summed = weighted_values(attn, values, head_dim)
    scratch = summed.new_zeros(summed.shape[1], dtype=stats_dtype)  # momentum 0: read only for the dtype
    mean, var = torch.batch_norm_update_stats(summed, scratch, scratch.clone(), 0.)
    return _branch_output(summed, out, mean, torch.rsqrt(var + eps), bn_weight, bn_bias, keep_scale), mean, var


@_base_branch_op.register_fake
def _(attn, out, values, maps, kernels, bn_weight, bn_bias, keep_scale, stats_dtype, eps, head_dim):
    stats = out.new_empty(out.shape[1], dtype=stats_dtype)
    # the weighted sum's dtype and layout (that of ``values[0] * attention weight``), which the result overwrites
    result = torch.empty_like(values[0], dtype=torch.promote_types(values[0].dtype, attn.dtype))
    return result, stats, torch.empty_like(stats)


@torch.library.custom_op('timm_mrla::base_value', mutates_args=())
def _value_op(source: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``_value`` as an operator, for the backward formula: identical calls merge with each other, not with the
    forward's convolution."""
    return _value(source, kernel)


@_value_op.register_fake
def _(source, kernel):
    return torch.empty_like(source)


@torch.library.custom_op('timm_mrla::drop_path_keep_scale', mutates_args=(),
                         tags=(torch.Tag.nondeterministic_seeded,))
def _keep_scale_op(like: torch.Tensor, drop_prob: float, scale_by_keep: bool) -> torch.Tensor:
    """``drop_path_keep_scale`` as an operator: Inductor would draw a random op with its own generator, an opaque
    one draws from torch's, where eager mode does."""
    return drop_path_keep_scale(like, drop_prob, scale_by_keep)


@_keep_scale_op.register_fake
def _(like, drop_prob, scale_by_keep):
    return like.new_empty((like.shape[0], 1, 1, 1))


def _setup_context(ctx, inputs, output):
    attn, out, values, maps, kernels, bn_weight, bn_bias, keep_scale, stats_dtype, eps, head_dim = inputs
    _, mean, var = output
    ctx.save_for_backward(attn, bn_weight, bn_bias, mean, var, keep_scale, *maps, *kernels)
    ctx.eps, ctx.head_dim = eps, head_dim


def _backward(ctx, grad_result, *_):  # the statistics feed only the running averages
    attn, bn_weight, bn_bias, mean, var, keep_scale, *sources = ctx.saved_tensors
    num_values = attn.shape[1]
    values = [_value_op(m, k) for m, k in zip(sources[:num_values], sources[num_values:])]
    grad_attn, grad_values, grad_bn_weight, grad_bn_bias = _branch_backward(
        grad_result, attn, values, bn_weight, bn_bias, mean, torch.rsqrt(var + ctx.eps), keep_scale, ctx.eps,
        ctx.head_dim)
    no_grads = [None] * num_values
    return (grad_attn, grad_result, grad_values, no_grads, no_grads, grad_bn_weight, grad_bn_bias, None, None, None,
            None)


_base_branch_op.register_autograd(_backward, setup_context=_setup_context)


def _base_branch_compiled(out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, cache: ValueCache,
                          block: nn.Module) -> torch.Tensor:
    """``base_branch_train`` through the operators (``cache`` holds this block's map and kernel already)."""
    norm, drop_path, mrla = block.bn_mrla, block.drop_path_mrla, block.mrla
    drop_prob = getattr(drop_path, 'drop_prob', 0.)
    keep_scale = _keep_scale_op(out.detach(), drop_prob, drop_path.scale_by_keep) if drop_prob > 0. else None
    # batch_norm_update_stats's: the running statistics' dtype, or without them the weighted sum's
    stats_dtype = norm.running_mean.dtype if norm.track_running_stats else torch.promote_types(value.dtype,
                                                                                                 attn.dtype)
    result, mean, var = _base_branch_op(attn, out, [*cache, value], cache.maps, cache.kernels, norm.weight,
                                        norm.bias, keep_scale, stats_dtype, norm.eps, mrla.head_dim)
    if norm.track_running_stats:
        update_running_stats(norm.running_mean, norm.running_var,
                             average_factor(norm.num_batches_tracked, norm.momentum), mean, var,
                             out.numel() // out.shape[1])
    return result


def base_branch_train(out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, cache: ValueCache,
                      block: nn.Module) -> torch.Tensor:
    """``out + drop_path(ReLU(BN(attention output)))`` of an MRLA-base block in training mode, through
    ``_BaseBranch``, or its operators under torch.compile (``base_branch_applies`` says when it is exact).
    ``attn`` [B, T, num_heads] are the block's softmax weights over the stage's values so far (``cache``) and its
    own ``value``, computed from ``out``."""
    norm, drop_path, mrla = block.bn_mrla, block.drop_path_mrla, block.mrla
    cache.maps.append(out)
    cache.kernels.append(mrla.v.weight)
    if torch.compiler.is_compiling():
        return _base_branch_compiled(out, attn, value, cache, block)
    track = norm.track_running_stats
    momentum = average_factor(norm.num_batches_tracked if track else None, norm.momentum)
    return _BaseBranch.apply(
        cache.recomputed, mrla.head_dim, attn, out, norm.weight, norm.bias,
        norm.running_mean if track else None, norm.running_var if track else None, momentum, norm.eps,
        getattr(drop_path, 'drop_prob', 0.), getattr(drop_path, 'scale_by_keep', True),
        *cache, value, *cache.maps, *cache.kernels)
