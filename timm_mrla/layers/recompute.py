"""Pieces shared by the training units that recompute their feature maps in backward (``light_train``,
``base_train``): when a unit may stand in for the plain modules, and training-mode BatchNorm and drop-path
computed by hand exactly as ``nn.BatchNorm2d`` and timm's ``DropPath`` compute them."""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d, LayerNorm

__all__ = ['observed', 'needs_plain_modules', 'is_plain_batchnorm', 'is_plain_layer_norm', 'average_factor',
           'drop_path_keep_scale', 'batchnorm_stats_dtype', 'update_running_stats', 'batchnorm_scale_shift']


def observed(module: nn.Module) -> bool:
    """True when something outside the module would miss the plain call: hooks, or a patched forward
    (e.g. ``reference_mode``)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or 'forward' in vars(module))


def needs_plain_modules(x: torch.Tensor) -> bool:
    """True when a unit must not run on ``x`` although its modules qualify: on the meta device (torch has no meta
    kernel for ``batch_norm_update_stats``), or under an autocast that would cast inside the unit to a dtype other
    than ``x``'s (the plain modules do that)."""
    device = x.device.type
    if device == 'meta':
        return True
    # Dynamo (torch 2.11) cannot trace is_autocast_available: asked only for devices other than the CPU and CUDA,
    # a compiled model's graph does not break here
    if device not in ('cpu', 'cuda') and not torch.amp.is_autocast_available(device):
        return False
    if not torch.is_autocast_enabled(device):
        return False
    return torch.get_autocast_dtype(device) != x.dtype


def is_plain_batchnorm(norm: nn.Module) -> bool:
    """``nn.BatchNorm2d``, or timm's ``BatchNormAct2d`` without activation and drop (not SyncBatchNorm, whose
    statistics span processes)."""
    if type(norm) is BatchNormAct2d:
        return isinstance(norm.act, nn.Identity) and isinstance(norm.drop, nn.Identity)
    return type(norm) is nn.BatchNorm2d


def is_plain_layer_norm(norm: nn.Module) -> bool:
    """A LayerNorm over the last dim whose forward is exactly ``F.layer_norm`` (timm's without fast-norm)."""
    if type(norm) is LayerNorm:
        return not norm._fast_norm
    return type(norm) is nn.LayerNorm


def average_factor(num_batches_tracked: Optional[torch.Tensor], momentum: Optional[float]
                   ) -> Union[float, torch.Tensor]:
    """``nn.BatchNorm2d.forward``'s running-average factor, counting this batch in ``num_batches_tracked``. Under
    torch.compile the cumulative average's factor stays a tensor, so that the graph does not break on it."""
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
        if momentum is None:  # cumulative moving average
            if torch.compiler.is_compiling():
                return 1.0 / num_batches_tracked
            return 1.0 / float(num_batches_tracked)
    return 0.0 if momentum is None else momentum


def drop_path_keep_scale(like: torch.Tensor, drop_prob: float, scale_by_keep: bool) -> Optional[torch.Tensor]:
    """timm ``DropPath``'s per-sample factors [B, 1, 1, 1] (None when nothing drops), drawn as it draws them, so
    at the same point in the RNG stream the same samples drop."""
    if drop_prob <= 0.:
        return None
    keep_prob = 1. - drop_prob
    keep_scale = like.new_empty((like.shape[0], 1, 1, 1)).bernoulli_(keep_prob)
    if keep_prob > 0. and scale_by_keep:
        keep_scale.div_(keep_prob)
    return keep_scale


def batchnorm_stats_dtype(x: torch.Tensor, *params: Optional[torch.Tensor]) -> torch.dtype:
    """The dtype of ``nn.BatchNorm2d``'s batch statistics for ``x``: that of its parameters and running buffers
    ``params`` (float32 ones make a bfloat16 ``x`` take the mixed-dtype kernel), ``x``'s if it has none."""
    return next((p.dtype for p in params if p is not None), x.dtype)


def update_running_stats(running_mean: torch.Tensor, running_var: torch.Tensor, factor: Union[float, torch.Tensor],
                         mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """``nn.BatchNorm2d``'s running-statistics update from the batch ``mean`` and biased ``var`` of ``count``
    values per channel, with ``average_factor``'s ``factor``: the running variance is the unbiased one. For units
    that return their batch statistics instead of updating the buffers themselves (a region that torch.compile
    recomputes, a torch.library op, which may not mutate its inputs)."""
    if count < 2:
        raise ValueError(f'BatchNorm in training needs more than 1 value per channel, got {count}')
    with torch.no_grad():
        running_mean.mul_(1. - factor).add_(mean * factor)
        running_var.mul_(1. - factor).add_(var * (factor * count / (count - 1)))


def batchnorm_scale_shift(mean: torch.Tensor, invstd: torch.Tensor, weight: Optional[torch.Tensor],
                          bias: Optional[torch.Tensor], keep_scale: Optional[torch.Tensor]
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm with batch statistics as one per-channel affine map ``(scale, shift)`` broadcasting over
    [B, C, H, W], the drop-path factors folded in."""
    scale = invstd if weight is None else invstd * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    scale, shift = scale[:, None, None], shift[:, None, None]
    if keep_scale is not None:
        scale, shift = scale * keep_scale, shift * keep_scale
    return scale, shift
