"""Literal forms of the MRLA arithmetic, step by step as the paper and the authors state it.

They read the weights of an ``MRLALight`` / ``MRLABase`` module and recompute its output the plain way:
pooled descriptor as a [B, 1, C] sequence, explicit per-head views, einsum dot products and, for
MRLA-base, the key/value cache as concatenated tensors. They are slow on purpose; the tests prove the
production modules equal to them (forward and gradients) so the fast path can change freely.
"""
from contextlib import contextmanager
from functools import partial
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mrla import MRLABase, MRLALight

__all__ = ['mrla_light_reference', 'mrla_base_reference', 'reference_mode']


def _qkv(layer, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, c, h, w = x.shape
    pad = layer.q.weight.shape[-1] // 2
    y = F.adaptive_avg_pool2d(x, 1).squeeze(-1).transpose(-1, -2)  # [b, 1, c]
    q = F.conv1d(y, layer.q.weight, padding=pad)  # [b, 1, c]
    k = F.conv1d(y, layer.k.weight, padding=pad)  # [b, 1, c]
    v = layer.value_act(F.conv2d(x, layer.v.weight, padding=1, groups=c))  # [b, c, h, w]
    return q, k, v


def mrla_light_reference(layer: MRLALight, x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """``o_t = concat_h(sigmoid(q_h k_h^T / sqrt(d)) v_h) + lambda_t * o_{t-1}``, [B, C, H, W]."""
    b, c, h, w = x.shape
    g, d = layer.num_heads, layer.head_dim
    q, k, v = _qkv(layer, x)
    q = q.view(b, g, 1, d)
    k = k.view(b, g, 1, d)
    v = v.reshape(b, g, d, h, w)
    attn = torch.einsum('bgid,bgjd->bgij', q, k) * (d ** -0.5)  # [b, g, 1, 1]
    attn = torch.sigmoid(attn).view(b, g, 1, 1, 1)
    out = (v * attn).reshape(b, c, h, w)
    return out + layer.lambda_t.view(c, 1, 1) * prev


def mrla_base_reference(
        layer: MRLABase,
        x: torch.Tensor,
        prev_keys: Optional[torch.Tensor],
        prev_values: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax attention over the concatenated cache.

    ``prev_keys`` [B, T, C] and ``prev_values`` [B, T, C, H, W] hold the earlier blocks of the group (None at
    its first block). Returns the output [B, C, H, W] and the grown cache [B, T+1, C], [B, T+1, C, H, W].
    """
    b, c, h, w = x.shape
    g, d = layer.num_heads, layer.head_dim
    q, k, v = _qkv(layer, x)
    keys = k if prev_keys is None else torch.cat((prev_keys, k), dim=1)  # [b, t, c]
    values = v.unsqueeze(1) if prev_values is None else torch.cat((prev_values, v.unsqueeze(1)), dim=1)
    t = keys.shape[1]
    qh = q.view(b, g, 1, d)
    kh = keys.view(b, t, g, d).permute(0, 2, 1, 3)  # [b, g, t, d]
    vh = values.view(b, t, g, d, h, w).permute(0, 2, 1, 3, 4, 5).reshape(b, g, t, d * h * w)
    attn = torch.softmax(torch.einsum('bgid,bgtd->bgit', qh, kh) * (d ** -0.5), dim=-1)  # [b, g, 1, t]
    out = torch.einsum('bgit,bgtj->bgij', attn, vh).reshape(b, c, h, w)
    return out, keys, values


def _light_folded_reference(layer: MRLALight, x: torch.Tensor, prev: torch.Tensor, scale: torch.Tensor,
                            shift: torch.Tensor) -> torch.Tensor:
    """What ``MRLALight.forward_folded`` computes, written out: the residual plus the affine-normed output."""
    return x + scale.view(-1, 1, 1) * mrla_light_reference(layer, x, prev) + shift.view(-1, 1, 1)


def _base_reference_from_lists(layer: MRLABase, x: torch.Tensor, keys: List[torch.Tensor],
                               values: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``mrla_base_reference`` behind ``MRLABase.forward``'s list interface (the cache re-concatenated each call)."""
    prev_keys = torch.stack(keys, 1).flatten(2) if keys else None
    prev_values = torch.stack(values, 1) if values else None
    out, all_keys, all_values = mrla_base_reference(layer, x, prev_keys, prev_values)
    return out, all_keys[:, -1].unflatten(-1, (layer.num_heads, layer.head_dim)), all_values[:, -1]


def _reference_marker(module: nn.Module, args: tuple) -> None:
    """A forward pre-hook that does nothing (see ``reference_mode``)."""


@contextmanager
def reference_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every MRLA layer of ``model`` computes through its literal reference form.

    Every fast path of a layer is replaced, so the model's output is the plain computation's; the tests
    compare the two and the benchmarks time them.
    """
    layers = [m for m in model.modules() if isinstance(m, (MRLALight, MRLABase))]
    # torch.compile does not guard on a replaced forward, but on hooks: this one makes a compiled model recompile
    handles = [layer.register_forward_pre_hook(_reference_marker) for layer in layers]
    for layer in layers:
        if isinstance(layer, MRLALight):
            layer.forward = partial(mrla_light_reference, layer)
            layer.forward_folded = partial(_light_folded_reference, layer)
        else:
            layer.forward = partial(_base_reference_from_lists, layer)
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers:
            layer.__dict__.pop('forward', None)
            layer.__dict__.pop('forward_folded', None)
