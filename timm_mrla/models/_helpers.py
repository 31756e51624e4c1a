"""Helpers shared by the MRLA model families."""
import logging
import re
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

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


class AuthorsCheckpointError(RuntimeError):
    """A state dict in the layout of the authors' code that does not fit the model it is loaded into."""


_SHOWN_KEYS = 5


def _strip_ddp_prefix(key: str) -> str:
    return re.sub(r'^module\.', '', key)


def _apply_rules(key: str, rules: Sequence[Rule]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def is_authors_layout(keys: Iterable[str], rules: Sequence[Rule]) -> bool:
    """Whether ``rules`` rename any of ``keys``: the state dict is laid out as the authors' models, not as ours."""
    return any(_apply_rules(key, rules) != key for key in map(_strip_ddp_prefix, keys))


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
        key = _apply_rules(_strip_ddp_prefix(key), rules)
        if key.endswith('lambda_t') and key in target and value.numel() == target[key].numel():
            value = value.reshape(target[key].shape)
        out[key] = value
    return out


def first_keys(keys: List[str]) -> str:
    """The first few of ``keys``, and how many more there are."""
    more = f' (and {len(keys) - _SHOWN_KEYS} more)' if len(keys) > _SHOWN_KEYS else ''
    return ', '.join(keys[:_SHOWN_KEYS]) + more


def state_dict_problems(
        mapped: Dict[str, torch.Tensor],
        original: Dict[str, torch.Tensor],
        model: nn.Module,
        model_name: str,
        strict: bool = True,
) -> List[str]:
    """What keeps ``mapped`` (``original`` renamed key by key) from loading into ``model``: keys that map to nothing
    and missing keys (when ``strict``), and shape mismatches, each naming its first keys as ``original`` does."""
    expected = model.state_dict()
    # the filters rename one key at a time, in order: report problems under the checkpoint's own names
    origin = dict(zip(mapped, original)) if len(mapped) == len(original) else {}
    unexpected = [origin.get(k, k) for k in mapped if k not in expected] if strict else []
    missing = [k for k in expected if k not in mapped] if strict else []
    mismatched = [f'{origin.get(k, k)} {tuple(mapped[k].shape)} vs {tuple(v.shape)}' for k, v in expected.items()
                  if k in mapped and mapped[k].shape != v.shape]
    problems = []
    if unexpected:
        problems.append(f'{len(unexpected)} checkpoint keys map to nothing in {model_name}: {first_keys(unexpected)}')
    if missing:
        problems.append(f'{len(missing)} keys of {model_name} are missing from the checkpoint: {first_keys(missing)}')
    if mismatched:
        problems.append(f'{len(mismatched)} shapes differ (checkpoint vs model): {first_keys(mismatched)}')
    return problems


def _map_authors_layout_hook(module: nn.Module, state_dict: Dict[str, torch.Tensor], prefix: str, *args) -> None:
    """``load_state_dict`` pre-hook: maps the authors' keys under ``prefix``, for a model loaded as part of a larger
    module (its own ``load_state_dict`` has mapped them already when it is the module loaded)."""
    keys = {key[len(prefix):]: key for key in state_dict if key.startswith(prefix)}
    if not is_authors_layout(keys, module.authors_key_rules):
        return
    own = {key: state_dict.pop(full_key) for key, full_key in keys.items()}
    state_dict.update((prefix + key, value) for key, value in
                      remap_state_dict(own, module, module.authors_key_rules).items())


class AuthorsLayoutMixin:
    """Lets a model load state dicts laid out as the authors' models, by whatever route they come.

    timm's ``load_checkpoint`` (``create_model(checkpoint_path=...)``, ``validate.py --checkpoint``, ``train.py
    --initial-checkpoint``) and its resume helpers all end in the model's ``load_state_dict``: a state dict whose
    keys the family's ``authors_key_rules`` rename is mapped there as ``checkpoint_filter_fn`` maps it, after checking
    that it fits (``AuthorsCheckpointError`` otherwise). When the model is loaded inside a larger module, a pre-hook
    maps the keys under its prefix and torch's own checks apply. State dicts in timm's layout load exactly as before.
    """
    authors_key_rules: Sequence[Rule] = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_load_state_dict_pre_hook(_map_authors_layout_hook)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        # checked here, not in the pre-hook: torch passes pre-hooks strict=True whatever the caller asked
        if is_authors_layout(state_dict, self.authors_key_rules):
            mapped = remap_state_dict(state_dict, self, self.authors_key_rules)
            name = getattr(self, 'pretrained_cfg', {}).get('architecture') or type(self).__name__
            problems = state_dict_problems(mapped, state_dict, self, name, strict=strict)
            if problems:
                raise AuthorsCheckpointError(
                    f"the state dict is laid out as the MRLA authors' models and does not fit {name}. " +
                    '; '.join(problems) + '. Create the model the checkpoint was trained as (architecture, '
                    'num_classes, in_chans), or convert the checkpoint once with `timm-mrla convert CHECKPOINT '
                    '--model NAME --out DIR`, which takes the sizes from the checkpoint and names what does not fit.')
            state_dict = mapped
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


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
