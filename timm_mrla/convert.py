"""Convert checkpoints trained with the authors' MRLA code into timm model folders.

The authors' training scripts save, depending on the family:

* ``resnet/train.py``: ``{'epoch', 'arch', 'state_dict', 'best_prec1', 'optimizer'}``, keys prefixed ``module.``;
* ``deit/main.py``: ``{'model', 'optimizer', 'lr_scheduler', 'epoch', 'args': argparse.Namespace, ...}``;
* timm's ``train.py`` (their EfficientNet): ``{'state_dict', 'state_dict_ema'?, 'optimizer', 'args', ...}``;

or a bare state dict, as ``.pth``, ``.pth.tar`` or ``.safetensors``. Files are read with
``torch.load(weights_only=True)``, allowing ``argparse.Namespace`` and nothing else beyond torch's own
safe types: no pickled code is ever executed.
"""
import argparse
import importlib
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file

from .hub.cards import CardInfo
from .hub.download import sha256_of
from .hub.folder import check_writable, write_folder
from .models._helpers import is_mrla_key, state_dict_problems

__all__ = ['ConversionError', 'load_checkpoint', 'select_state_dict', 'checkpoint_sizes', 'convert_state_dict',
           'convert_checkpoint']

PathLike = Union[str, Path]
# where each training script keeps the weights, preferred first
_STATE_DICT_KEYS = ('state_dict', 'model')
_EMA_STATE_DICT_KEYS = ('state_dict_ema', 'model_ema')


class ConversionError(ValueError):
    """A checkpoint that cannot be converted, with what to do about it."""


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a ``.pth``/``.pth.tar``/``.safetensors`` file without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f'checkpoint {path} does not exist or is not a file')
    if path.suffix == '.safetensors':
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for malformed headers
            raise ConversionError(f'{path} is not a readable safetensors file: {e}') from e
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r'GLOBAL ([\w.]+)', str(e))
        if refused is None:
            raise ConversionError(f'{path} is not a readable PyTorch checkpoint: it is damaged or was not '
                                  f'written by torch.save') from e
        raise ConversionError(
            f'{path} holds a Python object of type {refused[1]}, which safe loading (torch.load '
            f'weights_only=True) refuses: timm-mrla never executes pickled code. If you trust the file, load it '
            f'yourself and save only its state dict (torch.save(checkpoint["state_dict"], "weights.pth")), '
            f'then convert that.') from e
    except Exception as e:  # bytes that are not a pickle trip the unpickler anywhere (EOFError, KeyError, ...)
        raise ConversionError(f'{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})') from e
    if not isinstance(checkpoint, dict):
        raise ConversionError(f'{path} holds a {type(checkpoint).__name__}, expected a dict of tensors or a '
                              f'training checkpoint dict')
    return checkpoint


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def select_state_dict(checkpoint: Dict[str, Any], use_ema: bool = False) -> Tuple[Dict[str, torch.Tensor], str]:
    """Pick the weights out of a training checkpoint; returns them and where they were found."""
    if _is_state_dict(checkpoint):
        if use_ema:
            raise ConversionError('--ema was asked for, but the checkpoint is a bare state dict without EMA weights')
        return checkpoint, 'the bare state dict'
    keys = _EMA_STATE_DICT_KEYS if use_ema else _STATE_DICT_KEYS
    for key in keys:
        if _is_state_dict(checkpoint.get(key)):
            return checkpoint[key], f"checkpoint['{key}']"
    found = ', '.join(f"'{k}'" for k in checkpoint) or 'nothing'
    wanted = ' or '.join(f"'{k}'" for k in keys)
    raise ConversionError(f'no state dict under {wanted} in the checkpoint (it holds {found})')


def _filter_fn(model_name: str):
    module = importlib.import_module(timm.models.model_entrypoint(model_name).__module__)
    return getattr(module, 'checkpoint_filter_fn')


def _check_model_name(model_name: str) -> None:
    if '.' in model_name or not timm.is_model(model_name) or \
            not timm.models.model_entrypoint(model_name).__module__.startswith('timm_mrla.'):
        known = ', '.join(timm.list_models('*mrla*'))
        raise ConversionError(f"unknown MRLA model '{model_name}'; choose one of: {known}")


def checkpoint_sizes(model_name: str, state_dict: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """``num_classes`` and ``in_chans`` of a state dict in ``model_name``'s layout, from its classifier and first
    convolution (the architecture's defaults where it has neither)."""
    cfg = timm.models.get_pretrained_cfg(model_name)
    classifier = state_dict.get(f'{cfg.classifier}.weight')
    first_conv = state_dict.get(f'{cfg.first_conv}.weight')
    return dict(num_classes=cfg.num_classes if classifier is None else classifier.shape[0],
                in_chans=cfg.input_size[0] if first_conv is None else first_conv.shape[1])


def convert_state_dict(model_name: str, state_dict: Dict[str, torch.Tensor]) -> nn.Module:
    """Build ``model_name`` and load the authors' ``state_dict`` into it, strictly.

    The numbers of classes and of input channels are taken from the checkpoint's classifier and first
    convolution. Keys that map nowhere, missing keys and shape mismatches raise ``ConversionError`` naming the
    first few.
    """
    _check_model_name(model_name)
    if not any(is_mrla_key(k) for k in state_dict):  # the family filters would make it a warm start
        raise ConversionError(f'the checkpoint holds no MRLA layer, so it is not an MRLA model; for an MRLA model '
                              f'starting from these weights use `timm-mrla warmstart --from CHECKPOINT --model '
                              f'{model_name}`')
    model = timm.create_model(model_name, pretrained=False)
    mapped = _filter_fn(model_name)(state_dict, model)
    sizes = checkpoint_sizes(model_name, mapped)
    cfg = timm.models.get_pretrained_cfg(model_name)
    if sizes != dict(num_classes=cfg.num_classes, in_chans=cfg.input_size[0]):
        model = timm.create_model(model_name, pretrained=False, **sizes)
        mapped = _filter_fn(model_name)(state_dict, model)

    problems = state_dict_problems(mapped, state_dict, model, model_name)
    if problems:
        raise ConversionError(f'the checkpoint does not fit {model_name}. ' + '; '.join(problems) +
                              '. Check --model against the architecture the checkpoint was trained with.')
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def convert_checkpoint(
        checkpoint_path: PathLike,
        model_name: str,
        out_dir: PathLike,
        force: bool = False,
        use_ema: bool = False,
        dataset: str = 'imagenet-1k',
        license: str = 'unknown',
) -> Tuple[Path, str]:
    """Convert an authors' checkpoint file into a Hub-ready folder; returns the folder and the weights' source."""
    _check_model_name(model_name)
    out_dir = Path(out_dir)
    check_writable(out_dir, force)  # before the slow part
    checkpoint_path = Path(checkpoint_path)
    state_dict, source = select_state_dict(load_checkpoint(checkpoint_path), use_ema=use_ema)
    model = convert_state_dict(model_name, state_dict)
    card = CardInfo(
        name=model_name,
        summary=f'`{model_name}` with weights trained by the MRLA authors\' code and converted to timm by '
                f'timm-mrla. The converted model reproduces the original model\'s outputs.',
        provenance=f'Converted from {source} of `{checkpoint_path.name}` (sha256 {sha256_of(checkpoint_path)}) '
                   f'with `timm-mrla convert {checkpoint_path.name} --model {model_name}'
                   f'{" --ema" if use_ema else ""}`. Training data: {dataset}; see the training run for its recipe.',
        dataset=dataset, license=license, weights_sha256='', num_classes=model.num_classes,
        input_size=model.pretrained_cfg['input_size'])
    return write_folder(model, out_dir, card, force=force), source
