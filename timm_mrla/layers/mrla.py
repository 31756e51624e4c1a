"""Multi-head recurrent layer attention (MRLA), arXiv:2302.03985.

Each block's output ``x_t`` [B, C, H, W] is summarised by global average pooling into a channel
descriptor; two 1-in/1-out Conv1d over that descriptor give the query and the key, a depthwise 3x3
convolution of ``x_t`` gives the value. Channels are split into heads of ``head_dim`` channels.

* ``MRLALight`` (the paper's eq. 6): each head gates its value with ``sigmoid(<q, k> / sqrt(d))`` and
  adds ``lambda_t * o_prev``, where ``o_prev`` is the previous layer's output.
* ``MRLABase`` (eq. 4/5): the query of block t attends, per head, with a softmax over the keys and
  values of every block of the current group so far (itself included).

These modules are the production path. ``timm_mrla.layers.reference`` holds a literal transcription
of the same arithmetic that the tests compare them against.
"""
import math
from typing import List, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['eca_kernel_size', 'MRLALight', 'MRLABase']


def eca_kernel_size(channels: int) -> int:
    """Odd Conv1d kernel size for a channel descriptor of ``channels`` (the ECA-Net rule the authors use)."""
    t = int(abs((math.log(channels, 2) + 1) / 2))
    return t if t % 2 else t + 1


def _resolve_heads(dim: int, num_heads: Optional[int], head_dim: Optional[int]) -> int:
    if (num_heads is None) == (head_dim is None):
        raise ValueError(f'MRLA needs exactly one of num_heads or head_dim, got num_heads={num_heads}, head_dim={head_dim}')
    if num_heads is None:
        if head_dim <= 0 or dim % head_dim:
            raise ValueError(f'MRLA head_dim={head_dim} must be positive and divide the channel count {dim}')
        num_heads = dim // head_dim
    if num_heads <= 0 or dim % num_heads:
        raise ValueError(f'MRLA num_heads={num_heads} must be positive and divide the channel count {dim}')
    return num_heads


class _MRLAProjections(nn.Module):
    """Query, key and value projections shared by both MRLA variants.

    Args:
        dim: channels C of the feature map.
        num_heads: number of heads; give this or ``head_dim``.
        head_dim: channels per head; give this or ``num_heads``.
        kernel_size: Conv1d kernel for the query and key, the ECA rule of ``dim`` by default.
        value_act_layer: activation applied to the value (the authors' DeiT uses GELU), none by default.
    """

    def __init__(
            self,
            dim: int,
            num_heads: Optional[int] = None,
            head_dim: Optional[int] = None,
            kernel_size: Optional[int] = None,
            value_act_layer: Optional[Type[nn.Module]] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.dim = dim
        self.num_heads = _resolve_heads(dim, num_heads, head_dim)
        self.head_dim = dim // self.num_heads
        self.scale = self.head_dim ** -0.5
        kernel_size = kernel_size or eca_kernel_size(dim)
        if kernel_size % 2 == 0:
            raise ValueError(f'MRLA kernel_size must be odd to keep the channel count, got {kernel_size}')
        self.q = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False, **dd)
        self.k = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False, **dd)
        self.v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False, **dd)
        self.value_act = value_act_layer() if value_act_layer is not None else nn.Identity()

    def query_key(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """[B, C, H, W] -> query, key, each [B, num_heads, head_dim]."""
        y = x.mean((2, 3), keepdim=False).unsqueeze(1)  # [B, 1, C]
        q = self.q(y).squeeze(1).unflatten(-1, (self.num_heads, self.head_dim))
        k = self.k(y).squeeze(1).unflatten(-1, (self.num_heads, self.head_dim))
        return q, k

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.value_act(self.v(x))

    def expand_heads(self, w: torch.Tensor) -> torch.Tensor:
        """Per-head weights [B, num_heads] -> per-channel [B, C, 1, 1]."""
        return w.repeat_interleave(self.head_dim, dim=1)[:, :, None, None]


class MRLALight(_MRLAProjections):
    """MRLA-light: ``o_t = concat_h(sigmoid(<q_h, k_h> / sqrt(d)) * v_h) + lambda_t * o_prev``.

    Shapes: ``x`` [B, C, H, W] (this layer's features), ``prev`` [B, C, H, W] (the previous layer's
    output, ``o_{t-1}``); returns [B, C, H, W]. ``lambda_t`` [C] is initialised from N(0, 1) as the
    authors do. See ``_MRLAProjections`` for the arguments.
    """

    def __init__(self, dim: int, **kwargs):
        super().__init__(dim, **kwargs)
        self.lambda_t = nn.Parameter(torch.empty(dim, device=kwargs.get('device'), dtype=kwargs.get('dtype')))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.lambda_t)

    def forward(self, x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        q, k = self.query_key(x)
        gate = torch.sigmoid((q * k).sum(-1) * self.scale)  # [B, num_heads]
        return self.value(x) * self.expand_heads(gate) + self.lambda_t[:, None, None] * prev


class MRLABase(_MRLAProjections):
    """MRLA-base: the query of block t attends over the keys and values of blocks 1..t of its group.

    ``forward(x, keys, values)``: ``x`` [B, C, H, W]; ``keys`` the earlier blocks' keys, each
    [B, num_heads, head_dim]; ``values`` their values, each [B, C, H, W] (empty lists at a group's first
    block). Returns ``(out, key, value)``: the attention output [B, C, H, W] and this block's key and
    value, which the caller appends to its cache. The cache is a list, so memory grows linearly with
    the number of blocks and nothing is re-concatenated. See ``_MRLAProjections`` for the arguments.
    """

    def forward(
            self,
            x: torch.Tensor,
            keys: List[torch.Tensor],
            values: List[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if len(keys) != len(values):
            raise ValueError(f'MRLABase cache holds {len(keys)} keys but {len(values)} values')
        q, k = self.query_key(x)
        v = self.value(x)
        all_keys = torch.stack(keys + [k], dim=1)  # [B, T, num_heads, head_dim]
        attn = ((all_keys * q.unsqueeze(1)).sum(-1) * self.scale).softmax(dim=1)  # [B, T, num_heads]
        all_values = values + [v]
        out = all_values[0] * self.expand_heads(attn[:, 0])
        for t in range(1, len(all_values)):
            out = out + all_values[t] * self.expand_heads(attn[:, t])
        return out, k, v
