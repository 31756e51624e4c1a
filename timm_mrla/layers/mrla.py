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
import torch.fx
import torch.nn.functional as F

from .light_train import light_branch_applies, light_branch_train

__all__ = ['eca_kernel_size', 'MRLALight', 'MRLABase', 'batchnorm_affine', 'add_mrla_light']


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


def expand_heads(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Per-head weights [B, num_heads] -> per-channel [B, num_heads * head_dim, 1, 1]."""
    return w[:, :, None].expand(-1, -1, head_dim).flatten(1)[:, :, None, None]


def weighted_values(attn: torch.Tensor, values: List[torch.Tensor], head_dim: int) -> torch.Tensor:
    """``sum_t attn[:, t] * values[t]``, per head: ``attn`` [B, T, num_heads], ``values`` T maps [B, C, H, W].
    One fresh map, accumulated in place (autograd saves the factors, not the sum)."""
    out = values[0] * expand_heads(attn[:, 0], head_dim)
    for t in range(1, len(values)):
        out = out.addcmul_(values[t], expand_heads(attn[:, t], head_dim))  # reassigned: FX keeps the node alive
    return out


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
        self.kernel_size = kernel_size
        self.q = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False, **dd)
        self.k = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False, **dd)
        self.v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False, **dd)
        self.value_act = value_act_layer() if value_act_layer is not None else nn.Identity()

    def query_key(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """[B, C, H, W] -> query, key, each [B, num_heads, head_dim]."""
        if _capturing_graph():
            # a global average pool, which ONNX Runtime runs on its blocked layout: no copy of x out of it
            y = F.adaptive_avg_pool2d(x, 1).flatten(1).unsqueeze(1)
        else:
            y = x.mean((2, 3)).unsqueeze(1)  # [B, 1, C]
        # both 1-channel convolutions in one call: the pair is tiny, so per-call overhead is its cost
        qk = F.conv1d(y, torch.cat([self.q.weight, self.k.weight]), padding=self.kernel_size // 2)
        q, k = qk.unflatten(-1, (self.num_heads, self.head_dim)).unbind(1)
        return q, k

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.value_act(self.v(x))


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

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel gates [B, C, 1, 1]: ``sigmoid(<q_h, k_h> / sqrt(d))`` repeated over each head's channels."""
        if _capturing_graph():
            return self._captured_gate(x)
        q, k = self.query_key(x)
        return expand_heads(torch.sigmoid((q * k).sum(-1) * self.scale), self.head_dim)

    def _captured_gate(self, x: torch.Tensor) -> torch.Tensor:
        """``gate`` for a graph with a dynamic batch: ops whose shapes keep the batch dimension (no reshape by a
        computed shape), so that ONNX shape inference proves the gated map the same shape as ``x`` and ONNX Runtime
        fuses the additions after it into its convolutions. A grouped Conv1d of ones sums ``q * k`` over each head
        and repeats the sum over the head's channels in one node."""
        y = x.mean((2, 3)).unsqueeze(1)  # [B, 1, C]
        qk = F.conv1d(y, torch.cat([self.q.weight, self.k.weight]), padding=self.kernel_size // 2)  # [B, 2, C]
        head_sum = torch.full((self.dim, self.head_dim, 1), self.scale, dtype=x.dtype, device=x.device)
        logits = F.conv1d((qk[:, :1] * qk[:, 1:]).transpose(1, 2), head_sum, groups=self.num_heads)  # [B, C, 1]
        return torch.sigmoid(logits).unsqueeze(-1)

    def forward(self, x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        # lambda in prev's dtype: under autocast a float32 parameter would promote the whole branch to float32
        return torch.addcmul(self.lambda_t.to(prev.dtype)[:, None, None] * prev, self.value(x), self.gate(x))

    def forward_folded(self, x: torch.Tensor, prev: torch.Tensor, scale: torch.Tensor,
                       shift: torch.Tensor) -> torch.Tensor:
        """``x + scale * self(x, prev) + shift``, for a frozen per-channel affine norm (eval BatchNorm) after the
        layer and the residual add around it. Needs a layer without value activation.

        The norm's scale folds into the value kernel and ``lambda_t``. For a contiguous NCHW ``x`` run eagerly
        the per-sample gate, the shift and the residual identity fold in as well, into one depthwise convolution
        over B*C groups, so the whole branch is that convolution plus one pass over ``prev``. A trace or an export
        (``torch.jit.trace``, ``torch.export``, both ONNX exporters) gets C-group convolutions with static kernels
        instead, which do not depend on the batch size the graph would freeze, in the form ONNX Runtime fuses best
        (``_folded_light``; measured in BENCHMARKS.md).
        """
        weight = self.v.weight * scale[:, None, None, None]
        prev_scale = (scale * self.lambda_t).to(x.dtype)[:, None, None]
        return _folded_light(x, prev, self.gate(x), weight, prev_scale, shift)


def _capturing_graph() -> bool:
    """A trace or an export is recording a graph that must run at any batch size. Never under TorchScript, which
    cannot compile the export check (an FX-traced model, scripted, compiles ``_folded_light`` too)."""
    if not torch.jit.is_scripting():
        return torch.jit.is_tracing() or torch.compiler.is_exporting()
    return False


def _folded_light(x: torch.Tensor, prev: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor,
                  prev_scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x + gate * dwconv3x3(x, weight) + prev_scale * prev + shift`` (see ``MRLALight.forward_folded``)."""
    if _capturing_graph():
        c = x.shape[1]
        # the gate moves to the input (exact for a depthwise convolution with zero padding) and lambda and the shift
        # become a static 1x1 depthwise convolution: both convolutions' outputs then feed additions
        carried = F.conv2d(prev, prev_scale.reshape(-1, 1, 1, 1), shift.to(x.dtype), groups=c) + x
        return F.conv2d(x * gate, weight, padding=1, groups=c) + carried
    if x.is_contiguous():
        b, c, h, w = x.shape
        kernel = (gate * weight.view(1, c, 3, 3)).reshape(b * c, 1, 3, 3)
        kernel[:, :, 1, 1] += 1  # the residual identity
        y = F.conv2d(x.reshape(1, b * c, h, w), kernel, shift.repeat(b), padding=1, groups=b * c)
        return y.view(b, c, h, w).addcmul_(prev, prev_scale)
    y = torch.addcmul(shift.to(x.dtype)[:, None, None], prev, prev_scale)
    return y.addcmul_(F.conv2d(x, weight, padding=1, groups=x.shape[1]), gate).add_(x)


# FX records the call as one node, so a traced model computes exactly what the eager one does
torch.fx.wrap('_folded_light')


class MRLABase(_MRLAProjections):
    """MRLA-base: the query of block t attends over the keys and values of blocks 1..t of its group.

    ``forward(x, keys, values)``: ``x`` [B, C, H, W]; ``keys`` the earlier blocks' keys, each
    [B, num_heads, head_dim]; ``values`` their values, each [B, C, H, W] (empty lists at a group's first
    block). Returns ``(out, key, value)``: the attention output [B, C, H, W] and this block's key and
    value, which the caller appends to its cache. The cache is a list, so memory grows linearly with
    the number of blocks and nothing is re-concatenated. See ``_MRLAProjections`` for the arguments.
    """

    def attend(self, x: torch.Tensor, keys: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This block's softmax weights [B, T, num_heads] over the earlier ``keys`` and its own key, its key and
        its value: what ``forward`` weighs the values with, before it does."""
        q, k = self.query_key(x)
        all_keys = torch.stack(keys + [k], dim=1)  # [B, T, num_heads, head_dim]
        attn = ((all_keys * q.unsqueeze(1)).sum(-1) * self.scale).softmax(dim=1)
        return attn, k, self.value(x)

    def forward(
            self,
            x: torch.Tensor,
            keys: List[torch.Tensor],
            values: List[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn, k, v, values = self._attend_cache(x, keys, values)
        return weighted_values(attn, values, self.head_dim), k, v

    def _attend_cache(self, x: torch.Tensor, keys: List[torch.Tensor], values: List[torch.Tensor]
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """``attend``, with the cache checked, and the values this block weighs (the cached ones and its own)."""
        if len(keys) != len(values):
            raise ValueError(f'MRLABase cache holds {len(keys)} keys but {len(values)} values')
        attn, k, v = self.attend(x, keys)
        return attn, k, v, values + [v]

    def forward_folded(self, x: torch.Tensor, keys: List[torch.Tensor], values: List[torch.Tensor],
                       scale: torch.Tensor, shift: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward``'s output ``out`` as ``x + ReLU(scale * out + shift)`` (the ResNet MRLA-base block: a frozen
        per-channel affine norm, an eval BatchNorm, then ReLU and the residual add), with this block's key and value.

        Eagerly the norm's scale folds into the attention weights and its shift into the first product: one pass
        per value, then one for ReLU and the residual. A trace or an export records the norm and ReLU as a 1x1
        depthwise convolution with static weights: ONNX Runtime fuses the activation into it and, because the
        branch then ends in a convolution, keeps the block's output and residual add in its blocked layout
        (measured in BENCHMARKS.md).
        """
        attn, k, v, values = self._attend_cache(x, keys, values)
        if _capturing_graph():
            summed = weighted_values(attn, values, self.head_dim)
            kernel = scale.to(x.dtype).reshape(-1, 1, 1, 1)
            return x + F.relu(F.conv2d(summed, kernel, shift.to(x.dtype), groups=self.dim)), k, v
        scale = scale.to(attn.dtype)[:, None, None]
        out = torch.addcmul(shift.to(x.dtype)[:, None, None], values[0],
                            (expand_heads(attn[:, 0], self.head_dim) * scale).to(x.dtype))
        for t in range(1, len(values)):
            out = out.addcmul_(values[t], (expand_heads(attn[:, t], self.head_dim) * scale).to(x.dtype))
        out = out.relu_()
        # in place only without autograd (relu_ keeps its output for backward); a Python bool, which FX can trace
        return (x + out if torch.is_grad_enabled() else out.add_(x)), k, v


def batchnorm_affine(norm: nn.Module) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel ``(scale, shift)`` equal to ``norm`` when it is a BatchNorm (plain, timm's norm-act without
    activation, or frozen) using running statistics; None for anything else."""
    mean, var = getattr(norm, 'running_mean', None), getattr(norm, 'running_var', None)
    if norm.training or mean is None or var is None:
        return None
    if any(not isinstance(getattr(norm, name, nn.Identity()), nn.Identity) for name in ('act', 'drop')):
        return None
    scale = torch.rsqrt(var + norm.eps)
    if getattr(norm, 'weight', None) is not None:
        scale = scale * norm.weight
    shift = -mean * scale
    if getattr(norm, 'bias', None) is not None:
        shift = shift + norm.bias
    return scale, shift


def add_mrla_light(x: torch.Tensor, prev: torch.Tensor, mrla: MRLALight, norm: nn.Module,
                   drop_path: nn.Module, prev_source: Optional[Tuple[torch.Tensor, nn.Module]] = None
                   ) -> torch.Tensor:
    """``x + drop_path(norm(mrla(x, prev)))``, the MRLA-light branch of the CNN blocks.

    At inference an eval-mode BatchNorm folds into the layer (``MRLALight.forward_folded``), FX-traced and
    exported models included. In training the branch runs as one unit that recomputes its intermediates in
    backward instead of storing them (``light_branch_train``, which also explains ``prev_source``), under
    torch.compile as a region that Inductor recomputes. TorchScript-ed blocks write the expression out, and
    torch.compile at inference (but not torch.export) fuses it, plainly.
    """
    if not drop_path.training and (_capturing_graph() or not torch.compiler.is_compiling()):
        affine = batchnorm_affine(norm)
        if affine is not None:
            return mrla.forward_folded(x, prev, *affine)
    if drop_path.training and light_branch_applies(x, prev, mrla, norm, drop_path):
        return light_branch_train(x, prev, mrla, norm, drop_path, prev_source)
    return x + drop_path(norm(mrla(x, prev)))
