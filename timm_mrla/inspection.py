"""What each MRLA block retrieves from the blocks before it, per image and head.

``layer_attention(model, images)`` runs one forward pass and returns, per group of blocks that attend to one
another (a ResNet or EfficientNet stage, the blocks of a DeiT), an ``AttentionGroup``:

* MRLA-base: ``weights[b, t, s, h]`` is the softmax weight that head ``h`` of block ``t`` gives to block
  ``s <= t`` of its group (itself included) for image ``b``, exactly the weights the layer uses. The group
  is the layer's key/value cache: a ResNet stage, 4 DeiT blocks.
* MRLA-light: ``gates[b, t, h] = sigmoid(<q_h, k_h> / sqrt(d))``, the gate of head ``h`` of block ``t`` on its
  own value, and ``lambdas[t]``, the block's per-channel ``lambda_t`` [C] on ``o_{t-1}``. ``weights`` holds the
  weights over earlier blocks *implied* by unrolling the paper's recurrence ``o_t = a_t v_t + lambda_t o_{t-1}``
  within the group: ``o_t = sum_{s<=t} (prod_{j=s+1..t} lambda_j) a_s v_s``, so

      weights[b, t, s, h] = gates[b, s, h] * mean_{c in head h} |prod_{j=s+1..t} lambdas[j, c]|

  (the diagonal is the gate itself). lambda is per channel and may be negative; the mean of magnitudes over a
  head's channels keeps signs of different channels from cancelling. The group is the blocks of one stage
  (a stage's first block receives the downsampled input, which no earlier MRLA output reaches unchanged) or
  all the blocks of a DeiT.

  This is the paper's derivation, not what the network computes: in the authors' models (and ours, which
  follow them) ``o_{t-1}`` is the block's input (its shortcut, after the downsample projection at a stage's
  first block; in DeiT its LayerNorm), which holds the previous block's MRLA output only inside a residual
  sum, and a BatchNorm follows the MRLA branch in the CNNs. The implied weights say how far back the gates
  and lambdas would reach if the recurrence were literal.

The values are collected with hooks that exist only inside ``LayerAttentionRecorder``; the forward pass is
the model's own, unchanged, and costs nothing outside it. Every layer's own ``query_key`` is observed, which
every path of a layer calls (plain, BatchNorm-folded at inference, the training units; the folded path does not
call the module itself); MRLA-base's ``attend`` too, for the cache it receives. Train and eval mode both work; the
gates are those of the forward pass run.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .layers import MRLABase, MRLALight

__all__ = ['AttentionGroup', 'LayerAttentionRecorder', 'NotAnMRLAModelError', 'implied_weights', 'layer_attention']


class NotAnMRLAModelError(ValueError):
    """The model holds no MRLA layer."""


@dataclass
class AttentionGroup:
    """The blocks of one group and what each retrieved (see the module docstring for the exact definitions).

    ``blocks``: the T block names (module paths, e.g. ``layer2.1``). ``weights`` [B, T, T, H]: row t is block t's
    weights over blocks 0..t of the group, zero above the diagonal. MRLA-light only: ``gates`` [B, T, H] and
    ``lambdas`` [T, C].
    """
    name: str
    variant: str  # 'light' or 'base'
    blocks: List[str]
    weights: torch.Tensor
    gates: Optional[torch.Tensor] = None
    lambdas: Optional[torch.Tensor] = None

    @property
    def num_heads(self) -> int:
        return self.weights.shape[-1]

    def to_dict(self) -> dict:
        """Plain lists, for JSON."""
        out = {'name': self.name, 'variant': self.variant, 'blocks': self.blocks, 'weights': self.weights.tolist()}
        if self.gates is not None:
            out.update(gates=self.gates.tolist(), lambdas=self.lambdas.tolist())
        return out


def implied_weights(gates: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """Unrolled MRLA-light: gates [B, T, H], lambdas [T, C] -> weights [B, T, T, H], with
    ``weights[b, t, s, h] = gates[b, s, h] * mean_{c in h} |prod_{j=s+1..t} lambdas[j, c]|`` for s <= t, else 0."""
    _, t_len, heads = gates.shape
    reach = lambdas.new_zeros(t_len, t_len, lambdas.shape[-1])  # |prod_{j=s+1..t} lambda_j| per channel
    for t in range(t_len):
        product = torch.ones_like(lambdas[0])
        for s in range(t, -1, -1):
            reach[t, s] = product
            product = product * lambdas[s].abs()
    reach = reach.unflatten(-1, (heads, -1)).mean(-1)  # [T, T, H]
    return gates[:, None, :, :] * reach


def _block_and_group(layer_name: str) -> Tuple[str, str]:
    """``layer2.1.mrla`` -> (``layer2.1``, ``layer2``): the block holding the layer, and its stage."""
    block = layer_name.rpartition('.')[0]
    return block, block.rpartition('.')[0]


class LayerAttentionRecorder:
    """Context manager recording what every MRLA layer of ``model`` computes from its input, per forward pass.

    ``with LayerAttentionRecorder(model) as rec: model(x)``, then ``rec.groups()``. Each layer keeps its latest
    call, so a gradient-checkpointing recompute records the same values again. Leaving the block removes
    every hook. Raises ``NotAnMRLAModelError`` for a model without MRLA layers.
    """

    def __init__(self, model: nn.Module):
        self.layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (MRLALight, MRLABase))]
        if not self.layers:
            raise NotAnMRLAModelError(f'{type(model).__name__} has no MRLA layer (MRLALight or MRLABase): '
                                      f'not a timm-mrla model')
        self._calls: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}  # each layer's query and key
        self._earlier_keys: Dict[str, List[torch.Tensor]] = {}  # the cache each MRLA-base layer received

    def __enter__(self) -> 'LayerAttentionRecorder':
        for name, layer in self.layers:
            layer.query_key = self._query_key_observer(name, layer)
            if isinstance(layer, MRLABase):
                layer.attend = self._attend_observer(name, layer)
        return self

    def __exit__(self, *exc) -> None:
        for _, layer in self.layers:
            layer.__dict__.pop('query_key', None)
            layer.__dict__.pop('attend', None)

    def _query_key_observer(self, name: str, layer: nn.Module):
        query_key = type(layer).query_key.__get__(layer)

        def observed(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            q, k = query_key(x)
            self._calls[name] = (q.detach(), k.detach())
            return q, k
        return observed

    def _attend_observer(self, name: str, layer: MRLABase):
        attend = type(layer).attend.__get__(layer)

        def observed(x: torch.Tensor, keys: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            self._earlier_keys[name] = [key.detach() for key in keys]
            return attend(x, keys)
        return observed

    def groups(self) -> List[AttentionGroup]:
        """One ``AttentionGroup`` per group, in the model's order, from the latest forward pass."""
        missing = [name for name, _ in self.layers if name not in self._calls]
        if missing:
            raise RuntimeError(f'no forward pass reached the MRLA layers {", ".join(missing[:3])}'
                               f'{" ..." if len(missing) > 3 else ""} inside the recorder')
        groups: List[AttentionGroup] = []
        members: List[Tuple[str, nn.Module]] = []
        for name, layer in self.layers:
            if members and self._starts_group(members[-1], (name, layer)):
                groups.append(self._group(members))
                members = []
            members.append((name, layer))
        groups.append(self._group(members))
        return groups

    def _starts_group(self, previous: Tuple[str, nn.Module], current: Tuple[str, nn.Module]) -> bool:
        (prev_name, prev_layer), (name, layer) = previous, current
        if type(layer) is not type(prev_layer) or layer.dim != prev_layer.dim:
            return True
        if isinstance(layer, MRLABase):
            return not self._earlier_keys[name]  # an empty cache: the layer's group starts here
        return _block_and_group(name)[1] != _block_and_group(prev_name)[1]

    def _group(self, members: List[Tuple[str, nn.Module]]) -> AttentionGroup:
        blocks = [_block_and_group(name)[0] for name, _ in members]
        stage = _block_and_group(members[0][0])[1]
        group_name = stage or 'model'
        if len(members) < sum(_block_and_group(name)[1] == stage for name, _ in self.layers):
            group_name += f'.{blocks[0].rpartition(".")[2]}-{blocks[-1].rpartition(".")[2]}'  # part of a stage
        if isinstance(members[0][1], MRLABase):
            return AttentionGroup(group_name, 'base', blocks, self._base_weights(members))
        gates = torch.stack([self._gate(name, layer) for name, layer in members], dim=1)  # [B, T, H]
        lambdas = torch.stack([layer.lambda_t.detach().float() for _, layer in members])  # [T, C]
        return AttentionGroup(group_name, 'light', blocks, implied_weights(gates, lambdas), gates, lambdas)

    def _gate(self, name: str, layer: MRLALight) -> torch.Tensor:
        q, k = self._calls[name]
        return torch.sigmoid((q.float() * k.float()).sum(-1) * layer.scale)  # [B, H]

    def _base_weights(self, members: List[Tuple[str, nn.Module]]) -> torch.Tensor:
        rows = []
        t_len = len(members)
        for t, (name, layer) in enumerate(members):
            q, k = self._calls[name]
            keys = self._earlier_keys[name] + [k]
            if len(keys) != t + 1:
                raise RuntimeError(f'{name} attended over {len(keys)} blocks, expected {t + 1}')
            logits = (torch.stack(keys, 1).float() * q.float()[:, None]).sum(-1) * layer.scale  # [B, t+1, H]
            rows.append(torch.cat([logits.softmax(1), logits.new_zeros(q.shape[0], t_len - t - 1, q.shape[1])], 1))
        return torch.stack(rows, dim=1)


@torch.no_grad()
def layer_attention(model: nn.Module, images: torch.Tensor) -> List[AttentionGroup]:
    """What every MRLA block of ``model`` retrieves for ``images`` [B, C, H, W] (any size the model takes), per
    group of blocks; one forward pass in the model's current mode (see the module docstring)."""
    with LayerAttentionRecorder(model) as recorder:
        model(images)
    return recorder.groups()
