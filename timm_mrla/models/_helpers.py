"""Helpers shared by the MRLA model families."""
import logging
import re
from typing import Callable, Dict, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg

from timm_mrla.hub.download import pretrained_weights_overlay
from timm_mrla.hub.zoo import warm_start_named
from timm_mrla.layers.init import init_mrla_hashed

_logger = logging.getLogger(__name__)

# the norms that feed the MRLA branches: at zero weight and bias, every branch adds exactly zero
MRLA_INPUT_NORMS = ('bn_mrla', 'norm_mrla', 'norm_mrla_prev')

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


def zero_mrla_inputs(model: nn.Module) -> int:
    """Zero the weight and bias of every norm feeding an MRLA branch; returns how many there were."""
    count = 0
    for name, module in model.named_modules():
        if name.rsplit('.', 1)[-1] in MRLA_INPUT_NORMS:
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
            count += 1
    return count


def is_mrla_key(key: str) -> bool:
    return 'mrla' in key


def with_mrla_switched_off(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """A state dict of the timm model an MRLA model extends (no MRLA key in it) completed into a warm start:
    the MRLA layers' weights from ``init_mrla_hashed`` (the same bytes wherever built) and their input norms at
    zero, so the model computes exactly the base model. Any other state dict passes through unchanged."""
    if any(is_mrla_key(k) for k in state_dict):
        return state_dict
    init_mrla_hashed(model)
    zero_mrla_inputs(model)
    return dict(state_dict, **{k: v for k, v in model.state_dict().items() if is_mrla_key(k)})


def lambda_no_weight_decay(model: nn.Module) -> set:
    """Pattern that keeps the MRLA ``lambda_t`` vectors out of weight decay (when the model has any)."""
    has_lambda = any(n.endswith('lambda_t') for n, _ in model.named_parameters())
    return {'*lambda_t'} if has_lambda else set()


def build_mrla_model(model_cls, variant: str, pretrained: bool = False, **kwargs):
    """timm's ``build_model_with_cfg``, with Hub weights fetched first and checked against the zoo manifest."""
    overlay = pretrained_weights_overlay(variant, kwargs) if pretrained else None
    if overlay is not None:
        kwargs['pretrained_cfg_overlay'] = overlay
    model = build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    name = f"{model.pretrained_cfg.get('architecture')}.{model.pretrained_cfg.get('tag')}"
    warm_start = warm_start_named(name)
    if overlay is not None and warm_start is not None:  # timm's base weights, fetched from the Hub
        _logger.warning(f"{name}: warm start from {model.pretrained_cfg['hf_hub_id']}: MRLA branches untrained "
                        f"(switched off); computes exactly timm's {warm_start.base}; for fine-tuning")
    return model
