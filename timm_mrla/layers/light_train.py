"""Training paths of MRLA-light that recompute their feature maps in backward instead of storing them.

CNN blocks: ``x + drop_path(BN(mrla_light(x, prev)))``.

Autograd would keep, per block, the value ``dwconv(x)``, the pre-norm sum, the normalised map and a product
or two: several feature maps for a branch whose arithmetic is a depthwise convolution and a few per-channel
multiplies. ``_LightBranch`` computes the branch as one unit and keeps only ``x`` and ``prev`` (both kept by
the block anyway) and per-channel / per-sample vectors; its backward recomputes the value and the pre-norm
sum, which costs one depthwise convolution and a pass, less than storing them costs in memory traffic.

The per-head gate stays outside, in autograd: it is [B, C] and its own small graph (pooling, Conv1d, sigmoid)
carries its gradient back to ``x`` and the query/key weights. BatchNorm runs through torch's own kernels
(``native_batch_norm`` and its backward), so batch statistics and running-statistics updates are those of
``nn.BatchNorm2d``; drop-path draws its mask as timm's ``DropPath`` does.

Under torch.compile the CNN branch is the same arithmetic in plain operators under activation checkpointing
(``_light_branch_traced``): Inductor fuses it and recomputes it in backward, keeping what ``_LightBranch`` keeps
(measured: resnet50_mrla's compiled step peak 1.19x the compiled resnet50, against 1.26x with the branch as one
opaque op whose eager kernels Inductor cannot fuse, and faster). Plain modules traced instead leave Inductor's
partitioner to keep the value and the other intermediates (1.72x).

DeiT blocks: ``mrla_light(LN_x(x), LN_prev(prev))`` with a GELU value, on the patch tokens' grid. Autograd would
keep the normalised ``x`` (for the convolution), the convolution's output (for GELU), the value (for the gate's
gradient) and the normalised ``prev`` (for lambda's): four token maps. Both LayerNorms and the gate stay in
autograd, which keeps their inputs: ``x`` and ``prev`` (the block input, kept by its first norm anyway).
``_token_light_op`` takes the normalised grids as inputs without saving them and in backward recomputes them from
``x`` and ``prev`` with the same ``F.layer_norm`` calls, then the value, so the branch keeps no token map of its
own. It is a ``torch.library`` op, in eager mode and under torch.compile alike: Dynamo records it as one opaque
node and traces only its backward, which recomputes.

CeiT blocks: the same layer on the grids of ``LN(x)`` and of the block's normalised input ``prev`` (which its
attention keeps), with a value ``GELU(BN_train(dwconv(x)))``. Autograd would keep four token maps again (the
normalised ``x``, the convolution's output for BatchNorm, BatchNorm's output for GELU, the value). The same op, with
``batch_norm``, saves ``prev`` as it is and recomputes the rest, and returns BatchNorm's batch statistics, as an op
with an autograd formula may not update buffers. Under torch.compile the caller updates the running statistics after
the op. In eager mode ``_TokenLightNormed`` (an autograd.Function over the op's own forward, saves and backward)
updates them before it saves: updated after the op they would be skipped where timm's gradient checkpointing
recomputes a block (its non-reentrant checkpoint stops at the last saved tensor), while the plain BatchNorm updates
them in both passes. Under torch.compile the op, as for DeiT, rather than a checkpointed region as for the CNN
branch: it reuses DeiT's recompute and keeps what it keeps in eager mode (measured with Inductor: ceit_tiny_mrla's
compiled step peak 1.02x plain CeiT's, against 1.12x through the plain modules; a checkpointed region was not
built to compare).
"""
from typing import Optional, Tuple

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from timm.layers import BatchNormAct2d, DropPath

from .recompute import (average_factor, batchnorm_scale_shift, batchnorm_stats_dtype, drop_path_keep_scale,
                        is_plain_batchnorm, is_plain_layer_norm, needs_plain_modules, observed, update_running_stats)

__all__ = ['light_branch_applies', 'light_branch_train', 'token_light', 'token_light_applies']


def light_branch_applies(x: torch.Tensor, prev: torch.Tensor, mrla: nn.Module, norm: nn.Module,
                         drop_path: nn.Module) -> bool:
    """Whether ``light_branch_train`` computes exactly what the plain modules would.

    That needs a training-mode ``nn.BatchNorm2d`` (timm's ``BatchNormAct2d`` without activation and drop
    included; not SyncBatchNorm, whose statistics span processes), identity or timm ``DropPath`` on the branch,
    a layer without value activation, inputs of one dtype and shape, and nobody observing the modules.
    """
    if not is_plain_batchnorm(norm):
        return False
    if type(drop_path) not in (nn.Identity, DropPath) or not isinstance(mrla.value_act, nn.Identity):
        return False
    if not norm.training or any(observed(m) for m in (mrla, norm, drop_path)):
        return False
    if isinstance(x, torch.fx.Proxy) or isinstance(prev, torch.fx.Proxy):
        return True  # FX tracing: the dtypes are only known when the traced model runs
    if needs_plain_modules(x):
        return False
    return x.dtype == prev.dtype and x.shape == prev.shape


class _LightBranch(torch.autograd.Function):
    """``x + keep_scale * BN_train(gate * dwconv3x3(x, weight) + lambda_t * prev)``, saving no feature map of its own.

    ``gate`` [B, C, 1, 1]; the drop-path factors ``keep_scale`` [B, 1, 1, 1] are drawn here; BatchNorm's running
    statistics are updated in place with ``momentum`` (already resolved as ``nn.BatchNorm2d`` does). Everything
    runs in ``x``'s dtype and layout (``light_branch_applies`` leaves any other autocast dtype to the plain
    modules). Each feature map is allocated once and then reused in place: on the CPU a fresh map costs several
    element-wise passes in page faults.
    """

    @staticmethod
    def forward(ctx, x, prev, gate, weight, lambda_t, bn_weight, bn_bias, running_mean, running_var, momentum,
                eps, drop_prob, scale_by_keep, prev_input, prev_weight, prev_bias, prev_eps):
        channels = x.shape[1]
        pre_norm = F.conv2d(x, weight.to(x.dtype), None, 1, 1, 1, channels)
        pre_norm.mul_(gate).addcmul_(prev, lambda_t.to(x.dtype)[:, None, None])
        mean, var = torch.batch_norm_update_stats(pre_norm, running_mean, running_var, momentum)
        invstd = torch.rsqrt(var + eps)
        keep_scale = drop_path_keep_scale(x, drop_prob, scale_by_keep)
        scale, shift = batchnorm_scale_shift(mean, invstd, bn_weight, bn_bias, keep_scale)
        out = torch.addcmul(shift, pre_norm, scale, out=pre_norm).add_(x)
        # a prev that a training BatchNorm made from prev_input (kept by that norm) is recomputed, not kept
        ctx.save_for_backward(x, prev if prev_input is None else prev_input, gate, weight, lambda_t, bn_weight,
                              mean, invstd, keep_scale, prev_weight, prev_bias)
        ctx.eps, ctx.prev_eps, ctx.prev_recomputed = eps, prev_eps, prev_input is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, prev, gate, weight_param, lambda_t, bn_weight, mean, invstd, keep_scale, prev_weight, prev_bias = \
            ctx.saved_tensors
        if ctx.prev_recomputed:
            prev = torch.ops.aten.native_batch_norm(prev, prev_weight, prev_bias, None, None, True, 0., ctx.prev_eps)[0]
        channels = x.shape[1]
        weight = weight_param.to(x.dtype)
        lambda_map = lambda_t.to(x.dtype)[:, None, None]
        # recompute the value and the pre-norm sum, bit for bit as forward did: in x's dtype, as forward's in-place
        # product kept it (under CUDA autocast the gate is float32: its head sums run in float32)
        value = F.conv2d(x, weight, None, 1, 1, 1, channels)
        pre_norm = torch.mul(value, gate, out=torch.empty_like(value)).addcmul_(prev, lambda_map)
        grad_norm_out = grad_out if keep_scale is None else grad_out * keep_scale
        affine = bn_weight is not None
        grad_pre, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
            grad_norm_out, pre_norm, bn_weight, None, None, mean, invstd, True, ctx.eps, [True, affine, affine])
        del grad_norm_out
        # per-channel sums and grad_prev through the dead buffers, not fresh products
        grad_gate = value.mul_(grad_pre).sum((2, 3), keepdim=True).to(gate.dtype)
        grad_lambda = torch.mul(grad_pre, prev, out=value).sum((0, 2, 3)).to(lambda_t.dtype)
        del value
        grad_prev = torch.mul(grad_pre, lambda_map, out=pre_norm)
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_pre.mul_(gate), x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], channels,
            [True, True, False])
        del grad_pre
        return (grad_x.add_(grad_out), grad_prev, grad_gate, grad_weight.to(weight_param.dtype), grad_lambda,
                grad_bn_weight, grad_bn_bias, None, None, None, None, None, None, None, None, None, None)


def _light_branch_traced(x: torch.Tensor, prev: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor,
                         lambda_t: torch.Tensor, bn_weight: Optional[torch.Tensor], bn_bias: Optional[torch.Tensor],
                         keep_scale: Optional[torch.Tensor], eps: float, stats_dtype: torch.dtype
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_LightBranch``'s forward in plain operators for torch.compile, which runs it under activation
    checkpointing: Inductor fuses it, and its partitioner recomputes it in backward from the inputs instead of
    keeping its maps. Returns the output and BatchNorm's batch mean and biased variance (in ``stats_dtype``), from
    which the caller updates the running statistics: a checkpointed region would run an update twice."""
    lambda_map = lambda_t.to(x.dtype)[:, None, None]
    pre_norm = F.conv2d(x, weight.to(x.dtype), None, 1, 1, 1, x.shape[1]) * gate + prev * lambda_map
    var, mean = torch.var_mean(pre_norm.to(stats_dtype), (0, 2, 3), correction=0)
    scale, shift = batchnorm_scale_shift(mean, torch.rsqrt(var + eps), bn_weight, bn_bias, keep_scale)
    return torch.addcmul(shift, pre_norm, scale).to(x.dtype) + x, mean.detach(), var.detach()


def _light_branch(x: torch.Tensor, prev: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor,
                  lambda_t: torch.Tensor, bn_weight: Optional[torch.Tensor], bn_bias: Optional[torch.Tensor],
                  running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                  num_batches_tracked: Optional[torch.Tensor], momentum: Optional[float], eps: float,
                  drop_prob: float, scale_by_keep: bool, prev_input: Optional[torch.Tensor],
                  prev_weight: Optional[torch.Tensor], prev_bias: Optional[torch.Tensor], prev_eps: float
                  ) -> torch.Tensor:
    momentum = average_factor(num_batches_tracked, momentum)
    if not torch.compiler.is_compiling():
        return _LightBranch.apply(x, prev, gate, weight, lambda_t, bn_weight, bn_bias, running_mean, running_var,
                                  momentum, eps, drop_prob, scale_by_keep, prev_input, prev_weight, prev_bias,
                                  prev_eps)
    # drawn outside the checkpointed region, which would otherwise replay the generator's state in backward
    keep_scale = drop_path_keep_scale(x, drop_prob, scale_by_keep)
    stats_dtype = batchnorm_stats_dtype(x, bn_weight, bn_bias, running_mean)
    out, mean, var = checkpoint(_light_branch_traced, x, prev, gate, weight, lambda_t, bn_weight, bn_bias,
                                keep_scale, eps, stats_dtype, use_reentrant=False)
    if running_mean is not None and running_var is not None:
        update_running_stats(running_mean, running_var, momentum, mean, var, x.numel() // x.shape[1])
    return out


# FX records the call as one node (statistics update included): a traced training model runs the same unit
torch.fx.wrap('_light_branch')


def light_branch_train(x: torch.Tensor, prev: torch.Tensor, mrla: nn.Module, norm: nn.BatchNorm2d,
                       drop_path: nn.Module, prev_source: Optional[Tuple[torch.Tensor, nn.Module]] = None
                       ) -> torch.Tensor:
    """``x + drop_path(norm(mrla(x, prev)))`` in training mode through ``_LightBranch`` (see
    ``light_branch_applies`` for when it is exact).

    ``prev_source``: ``(prev_input, prev_norm)`` when ``prev`` is ``prev_norm(prev_input)`` (a downsample
    projection's BatchNorm); in training mode that norm keeps ``prev_input`` anyway, so the branch keeps it
    instead of ``prev`` and renormalises it in backward.
    """
    track = norm.track_running_stats
    prev_input, prev_norm = prev_source if prev_source is not None else (None, None)
    if prev_norm is not None and not (type(prev_norm) is nn.BatchNorm2d and prev_norm.training):
        prev_input, prev_norm = None, None
    return _light_branch(
        x, prev, mrla.gate(x), mrla.v.weight, mrla.lambda_t, norm.weight, norm.bias,
        norm.running_mean if track else None, norm.running_var if track else None,
        norm.num_batches_tracked if track else None, norm.momentum, norm.eps,
        getattr(drop_path, 'drop_prob', 0.), getattr(drop_path, 'scale_by_keep', True),
        prev_input, getattr(prev_norm, 'weight', None), getattr(prev_norm, 'bias', None),
        getattr(prev_norm, 'eps', 0.))


def _token_value(mrla: nn.Module) -> Optional[Tuple[nn.GELU, Optional[nn.Module]]]:
    """The value's GELU and its training-mode BatchNorm (None for DeiT's value, a GELU alone), when the value is one
    of these two; None for any other value."""
    act = mrla.value_act
    if type(act) is nn.GELU:
        return act, None
    if type(act) is BatchNormAct2d and type(act.act) is nn.GELU and isinstance(act.drop, nn.Identity) and act.training:
        return act.act, act
    return None


def token_light_applies(x: torch.Tensor, prev: torch.Tensor, mrla: nn.Module, norm: nn.Module,
                        prev_norm: Optional[nn.Module] = None) -> bool:
    """Whether ``token_light``'s unit computes exactly what ``mrla(x, prev)`` would, where ``x`` is the grid of a
    ``norm`` output and ``prev`` that of a ``prev_norm`` output (or, without ``prev_norm``, a grid kept anyway).

    That needs a training layer whose value is a GELU (DeiT) or a training ``BatchNormAct2d`` with GELU (CeiT; not
    SyncBatchNorm, whose statistics span processes, with parameters and buffers in the grids' dtype), plain
    LayerNorms, grad mode, grids of one dtype and shape (outside any autocast of another dtype), and nobody
    observing the layer's modules or altering the norms' outputs (hooks, a patched forward), which the recompute
    would miss.
    """
    value = _token_value(mrla)
    if not (mrla.training and value is not None and is_plain_layer_norm(norm)
            and (prev_norm is None or is_plain_layer_norm(prev_norm))):
        return False
    act, bn = value
    if any(observed(m) for m in (mrla, mrla.v, mrla.value_act, act, norm, prev_norm) if m is not None):
        return False
    if isinstance(x, torch.fx.Proxy) or isinstance(prev, torch.fx.Proxy):
        return True  # FX tracing: grad mode and dtypes are only known when the traced model runs
    if needs_plain_modules(x):
        return False
    if bn is not None and any(t is not None and t.dtype != x.dtype for t in (bn.weight, bn.bias, bn.running_mean)):
        return False  # BatchNorm's mixed-dtype kernel: left to the plain modules
    return torch.is_grad_enabled() and x.dtype == prev.dtype and x.shape == prev.shape


def _normed_value(value: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: Optional[torch.Tensor],
                  bias: Optional[torch.Tensor], eps: float, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """BatchNorm of ``value`` with its batch ``mean`` and biased ``var``: forward and its recompute alike."""
    scale, shift = batchnorm_scale_shift(mean, torch.rsqrt(var + eps), weight, bias, None)
    return torch.addcmul(shift, value, scale, out=out)


def _token_light_forward(x: torch.Tensor, prev: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor,
                         lambda_t: torch.Tensor, approximate: str, x_src: torch.Tensor,
                         x_weight: Optional[torch.Tensor], x_bias: Optional[torch.Tensor], x_eps: float,
                         prev_src: Optional[torch.Tensor], prev_weight: Optional[torch.Tensor],
                         prev_bias: Optional[torch.Tensor], prev_eps: float, batch_norm: bool,
                         bn_weight: Optional[torch.Tensor], bn_bias: Optional[torch.Tensor], bn_eps: float
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``lambda_t * prev + gate * GELU(BN(dwconv3x3(x, weight)))`` for the grids [B, C, H, W] ``x`` and ``prev``,
    BN a training BatchNorm with batch statistics (without ``batch_norm``, none: DeiT's value). ``x`` is the grid of
    the last H*W tokens of an ``F.layer_norm`` output and is not saved: backward recomputes it from the LayerNorm
    input ``x_src`` [B, prefix + H*W, C] with the same call and views; so is ``prev`` from ``prev_src`` [B, H*W, C]
    where that is given, else ``prev`` is saved (CeiT's, the block's normalised input, which its attention keeps).

    Returns the output, in ``prev``'s layout (a token-major grid stays one), and BatchNorm's batch mean and biased
    variance (empty without ``batch_norm``), from which the caller updates the running statistics: an op with an
    autograd formula may not mutate its inputs. A torch.library op, so that torch.compile treats it as one opaque
    node and traces only its backward, which recomputes.
    """
    channels = x.shape[1]
    value = F.conv2d(x, weight.to(x.dtype), None, 1, 1, 1, channels)
    if batch_norm:
        mean, var = torch.batch_norm_update_stats(value, None, None, 0.)
        _normed_value(value, mean, var, bn_weight, bn_bias, bn_eps, out=value)
    else:
        mean, var = value.new_empty(0), value.new_empty(0)
    torch.ops.aten.gelu_(value, approximate=approximate)
    out = torch.empty_like(prev)  # the layout the op's fake promises
    return torch.mul(lambda_t.to(x.dtype)[:, None, None], prev, out=out).addcmul_(value, gate), mean, var


_token_light_op = torch.library.custom_op('timm_mrla::token_light', _token_light_forward, mutates_args=())


@_token_light_op.register_fake
def _(x, prev, gate, weight, lambda_t, approximate, x_src, x_weight, x_bias, x_eps, prev_src, prev_weight,
      prev_bias, prev_eps, batch_norm, bn_weight, bn_bias, bn_eps):
    stats = x.shape[1] if batch_norm else 0
    return torch.empty_like(prev), x.new_empty(stats), x.new_empty(stats)


def _token_light_save(ctx, inputs, output):
    (x, prev, gate, weight, lambda_t, approximate, x_src, x_weight, x_bias, x_eps, prev_src, prev_weight, prev_bias,
     prev_eps, batch_norm, bn_weight, bn_bias, bn_eps) = inputs
    _, mean, var = output
    ctx.save_for_backward(gate, weight, lambda_t, x_src, x_weight, x_bias, prev if prev_src is None else prev_src,
                          prev_weight, prev_bias, bn_weight, bn_bias, mean, var)
    ctx.approximate, ctx.x_eps, ctx.prev_eps, ctx.grid = approximate, x_eps, prev_eps, tuple(x.shape[2:])
    ctx.prev_recomputed, ctx.batch_norm, ctx.bn_eps = prev_src is not None, batch_norm, bn_eps


def _normalised_grid(tokens: torch.Tensor, grid: Tuple[int, int], weight: Optional[torch.Tensor],
                     bias: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """The last H*W tokens of ``tokens`` [B, N, C] layer-normalised, as a grid [B, C, H, W]: token by token what
    forward's LayerNorm gave. Normalising these tokens alone also keeps torch.compile's common-subexpression pass
    from merging the call with forward's LayerNorm, which would have the partitioner keep forward's output."""
    patches = tokens[:, tokens.shape[1] - grid[0] * grid[1]:]
    return F.layer_norm(patches, patches.shape[-1:], weight, bias, eps).unflatten(1, grid).permute(0, 3, 1, 2)


def _token_light_backward(ctx, grad_out, _grad_mean, _grad_var):
    (gate, weight_param, lambda_t, x_src, x_weight, x_bias, prev, prev_weight, prev_bias, bn_weight, bn_bias, mean,
     var) = ctx.saved_tensors
    channels = gate.shape[1]
    # the grids as forward saw them (under torch.compile forward's came from Inductor's LayerNorm)
    x = _normalised_grid(x_src, ctx.grid, x_weight, x_bias, ctx.x_eps)
    if ctx.prev_recomputed:
        prev = _normalised_grid(prev, ctx.grid, prev_weight, prev_bias, ctx.prev_eps)
    weight = weight_param.to(x.dtype)
    value_pre = F.conv2d(x, weight, None, 1, 1, 1, channels)
    act_in = _normed_value(value_pre, mean, var, bn_weight, bn_bias, ctx.bn_eps) if ctx.batch_norm else value_pre
    value = F.gelu(act_in, approximate=ctx.approximate)
    # per-channel sums and gradients through the dead buffers, not fresh products (a saved prev is the block's own)
    grad_gate = value.mul_(grad_out).sum((2, 3), keepdim=True)
    grad_lambda = torch.mul(grad_out, prev, out=value).sum((0, 2, 3)).to(lambda_t.dtype)
    grad_prev = torch.mul(grad_out, lambda_t.to(x.dtype)[:, None, None], out=prev if ctx.prev_recomputed else None)
    grad_act = torch.ops.aten.gelu_backward.grad_input(
        torch.mul(grad_out, gate, out=value), act_in, approximate=ctx.approximate, grad_input=act_in)
    del value
    grad_bn_weight = grad_bn_bias = None
    if ctx.batch_norm:
        grad_act, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
            grad_act, value_pre, bn_weight, None, None, mean, torch.rsqrt(var + ctx.bn_eps), True, ctx.bn_eps,
            [True, bn_weight is not None, bn_bias is not None])
    grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad_act, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], channels, [True, True, False])
    return (grad_x, grad_prev, grad_gate, grad_weight.to(weight_param.dtype), grad_lambda, None, None, None, None,
            None, None, None, None, None, None, grad_bn_weight, grad_bn_bias, None)


_token_light_op.register_autograd(_token_light_backward, setup_context=_token_light_save)


class _TokenLightNormed(torch.autograd.Function):
    """``_token_light_op`` with a BatchNorm'd value, in eager mode: the same forward, saves and backward, with the
    running statistics updated in forward before anything is saved. Updated after the op they would be skipped where
    gradient checkpointing recomputes the block: its non-reentrant checkpoint stops the recompute at the block's last
    saved tensor, which may be the op's, while the plain BatchNorm updates its statistics in both passes."""

    @staticmethod
    def forward(ctx, running_mean, running_var, num_batches_tracked, momentum, *inputs):
        out, mean, var = _token_light_forward(*inputs)
        _update_value_stats(running_mean, running_var, num_batches_tracked, momentum, mean, var, inputs[0])
        _token_light_save(ctx, inputs, (out, mean, var))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return (None, None, None, None, *_token_light_backward(ctx, grad_out, None, None))


def _update_value_stats(running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                        num_batches_tracked: Optional[torch.Tensor], momentum: Optional[float], mean: torch.Tensor,
                        var: torch.Tensor, x: torch.Tensor) -> None:
    if running_mean is not None and running_var is not None:
        update_running_stats(running_mean, running_var, average_factor(num_batches_tracked, momentum), mean, var,
                             x.numel() // x.shape[1])


def _token_light(x: torch.Tensor, prev: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor,
                 lambda_t: torch.Tensor, approximate: str, x_src: torch.Tensor, x_weight: Optional[torch.Tensor],
                 x_bias: Optional[torch.Tensor], x_eps: float, prev_src: Optional[torch.Tensor],
                 prev_weight: Optional[torch.Tensor], prev_bias: Optional[torch.Tensor], prev_eps: float,
                 batch_norm: bool, bn_weight: Optional[torch.Tensor], bn_bias: Optional[torch.Tensor], bn_eps: float,
                 running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                 num_batches_tracked: Optional[torch.Tensor], momentum: Optional[float]) -> torch.Tensor:
    inputs = (x, prev, gate, weight, lambda_t, approximate, x_src, x_weight, x_bias, x_eps, prev_src, prev_weight,
              prev_bias, prev_eps, batch_norm, bn_weight, bn_bias, bn_eps)
    if batch_norm and not torch.compiler.is_compiling():
        return _TokenLightNormed.apply(running_mean, running_var, num_batches_tracked, momentum, *inputs)
    # compiled, the update follows the op in the graph (a compiled block is not recomputed by eager checkpointing)
    out, mean, var = _token_light_op(*inputs)
    if batch_norm:
        _update_value_stats(running_mean, running_var, num_batches_tracked, momentum, mean, var, x)
    return out


# FX records the call as one node (it cannot name the op object itself; the statistics update included): a traced
# training model runs the same unit
torch.fx.wrap('_token_light')


def token_light(x: torch.Tensor, prev: torch.Tensor, mrla: nn.Module, x_src: torch.Tensor, norm: nn.Module,
                prev_src: Optional[torch.Tensor] = None, prev_norm: Optional[nn.Module] = None) -> torch.Tensor:
    """``mrla(x, prev)``, where ``x`` is the grid of the last H*W tokens (the patch tokens) of ``norm(x_src)`` and
    ``prev`` that of ``prev_norm(prev_src)`` (DeiT), or without them a grid that the caller's graph keeps anyway
    (CeiT). In training it runs through the op ``_token_light_op`` where ``token_light_applies`` (with a BatchNorm'd
    value, in eager mode, through ``_TokenLightNormed``): the norms keep ``x_src`` and ``prev_src``, the layer
    nothing more than its gate and, for a BatchNorm'd value, per-channel statistics. Running statistics are updated
    as ``nn.BatchNorm2d`` updates them.
    """
    if not token_light_applies(x, prev, mrla, norm, prev_norm):
        return mrla(x, prev)
    act, bn = _token_value(mrla)
    track = bn is not None and bn.track_running_stats
    return _token_light(x, prev, mrla.gate(x), mrla.v.weight, mrla.lambda_t, act.approximate, x_src, norm.weight,
                        norm.bias, norm.eps, prev_src, getattr(prev_norm, 'weight', None),
                        getattr(prev_norm, 'bias', None), getattr(prev_norm, 'eps', 0.), bn is not None,
                        getattr(bn, 'weight', None), getattr(bn, 'bias', None), getattr(bn, 'eps', 0.),
                        bn.running_mean if track else None, bn.running_var if track else None,
                        bn.num_batches_tracked if track else None, getattr(bn, 'momentum', None))
