"""Helpers shared by the MRLA model families."""
import re
from typing import Callable, Dict, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg

from timm_mrla.hub.download import pretrained_weights_overlay

Rule = Tuple[str, Union[str, Callable[[re.Match], str]]]


def remap_state_dict(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        rules: Sequence[Rule],
) -> Dict[str, torch.Tensor]:
    """Rename the authors' keys with ``rules`` (regex, replacement) applied in order.

    A ``module.`` prefix (DDP) is dropped first. ``lambda_t`` tensors are reshaped to this model's
    shape: the authors store them as [C, 1, 1] in CNNs and [C] in ViTs, we always keep [C].
    A state dict already in this project's layout passes through unchanged.
    """
    target = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r'^module\.', '', key)
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        if key.endswith('lambda_t') and key in target and value.numel() == target[key].numel():
            value = value.reshape(target[key].shape)
        out[key] = value
    return out


def lambda_no_weight_decay(model: nn.Module) -> set:
    """Pattern that keeps the MRLA ``lambda_t`` vectors out of weight decay (when the model has any)."""
    has_lambda = any(n.endswith('lambda_t') for n, _ in model.named_parameters())
    return {'*lambda_t'} if has_lambda else set()


def build_mrla_model(model_cls, variant: str, pretrained: bool = False, **kwargs):
    """timm's ``build_model_with_cfg``, with Hub weights fetched first and checked against the zoo manifest."""
    if pretrained:
        overlay = pretrained_weights_overlay(variant, kwargs)
        if overlay is not None:
            kwargs['pretrained_cfg_overlay'] = overlay
    return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
