"""Deterministic stand-ins for the authors' checkpoints, built from their key lists alone.

No random number generator is involved: every value comes from integer hashing, so the same tensors
come out on every machine and torch version. ``golden/make_golden.py`` fed these weights to the
authors' code once; the tests feed them through ``timm-mrla convert`` and compare.
"""
import argparse
import functools
import math
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from safetensors.torch import load_file

from timm_mrla.layers.init import hashed_uniform

GOLDEN_DIR = Path(__file__).resolve().parent / 'golden'
KEY_DIR = GOLDEN_DIR / 'keys'  # the authors' state-dict keys and shapes (copied from shared/reference/official-keys)


def read_key_list(name: str) -> List[Tuple[str, Tuple[int, ...], str]]:
    """(key, shape, dtype) rows of ``keys/<name>.tsv``."""
    rows = []
    for line in (KEY_DIR / f'{name}.tsv').read_text().splitlines():
        if not line or line.startswith('#'):
            continue
        key, shape, dtype = line.split('\t')
        dims = () if shape == 'scalar' else tuple(int(s) for s in shape.split('x'))
        rows.append((key, dims, dtype))
    return rows


def synthetic_value(key: str, shape: Tuple[int, ...], dtype: str) -> torch.Tensor:
    if dtype == 'int64':
        return torch.zeros(shape, dtype=torch.int64)
    u = hashed_uniform(key, shape)
    leaf = key.rsplit('.', 1)[-1]
    if leaf == 'running_var':
        return 1 + 0.5 * u
    if leaf in ('running_mean', 'bias'):
        return 0.1 * u
    if leaf == 'lambda_t':
        return u
    if leaf in ('cls_token', 'pos_embed', 'dist_token'):
        return 0.02 * u
    if len(shape) == 1 and key.endswith(('bn3.weight', 'bn_mrla.weight')):
        return 0.2 + 0.05 * u  # small last norms of residual branches keep deep nets' outputs in range
    if len(shape) == 1:  # norm weights
        return 1 + 0.2 * u
    fan_in = math.prod(shape[1:])
    return u * math.sqrt(3 / fan_in)  # unit-variance outputs for unit-variance inputs


@functools.lru_cache(maxsize=None)
def _synthetic_state_dict(name: str) -> Dict[str, torch.Tensor]:
    return {key: synthetic_value(key, shape, dtype) for key, shape, dtype in read_key_list(name)}


def synthetic_state_dict(name: str) -> Dict[str, torch.Tensor]:
    """A full state dict for the authors' model ``name`` (an ``official-keys`` file stem), a copy of its own to
    change (the hashing that makes it is slow: each model's is made once per test session)."""
    return {key: value.clone() for key, value in _synthetic_state_dict(name).items()}


def golden_input(batch_size: int = 2, size: Tuple[int, int] = (224, 224)) -> torch.Tensor:
    """A normalised-image-like input [B, 3, H, W]: smooth patterns plus hashed noise."""
    h, w = size
    yy = torch.linspace(-1, 1, h)[:, None]
    xx = torch.linspace(-1, 1, w)[None, :]
    images = []
    for b in range(batch_size):
        chans = [torch.sin((3 + b + c) * xx + (2 + c) * yy * (1 + b)) + torch.cos(5 * xx * yy + c) for c in range(3)]
        smooth = torch.stack(chans)
        images.append(smooth + 0.5 * hashed_uniform(f'input{b}', (3, h, w)))
    return torch.stack(images)


# relative max difference allowed between our models and the authors' code
TOLERANCE = 1e-4


def relative_max_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


def assert_golden_outputs(model: torch.nn.Module, authors_name: str, label: str = '') -> None:
    """``model`` gives the eval- and train-mode logits the authors' code gave on ``golden_input()``.

    The golden train-mode logits were taken with drop path off (the authors' DeiT-base hard-codes 0.1): build the
    model with ``drop_path_rate=0.``. Train mode moves BatchNorm statistics, so the eval logits are taken first.
    """
    golden = load_file(str(GOLDEN_DIR / f'{authors_name}.safetensors'))
    x = golden_input()
    with torch.no_grad():
        outputs = {'eval_logits': model.eval()(x), 'train_logits': model.train()(x)}
    for key, out in outputs.items():
        ref = golden[key]
        assert ref.abs().max() > 0.1 and ref.std() > 0.01  # a golden output with signal in it
        assert relative_max_diff(out, ref) <= TOLERANCE, f'{label} {key}'


OPTIMIZER_STATE = {'state': {}, 'param_groups': [{'lr': 0.1, 'momentum': 0.9, 'params': [0, 1]}]}


def resnet_train_checkpoint(authors_name: str) -> dict:
    """As resnet/train.py saves it: DDP 'module.' keys under 'state_dict'."""
    state_dict = {f'module.{k}': v for k, v in synthetic_state_dict(authors_name).items()}
    return {'epoch': 120, 'arch': authors_name, 'state_dict': state_dict, 'best_prec1': torch.tensor(77.75),
            'optimizer': OPTIMIZER_STATE}


def deit_main_checkpoint(authors_name: str) -> dict:
    """As deit/main.py saves it: 'model' and 'model_ema' beside an argparse.Namespace."""
    state_dict = synthetic_state_dict(authors_name)
    args = argparse.Namespace(model=authors_name, lr=5e-4, drop_path=0.1, data_path='/data/imagenet', epochs=300,
                              output_dir='out', model_ema=True, input_size=224)
    return {'model': state_dict, 'optimizer': OPTIMIZER_STATE, 'lr_scheduler': {'base_lrs': [5e-4]}, 'epoch': 299,
            'model_ema': state_dict, 'scaler': {'scale': 65536.0}, 'args': args}


def timm_train_checkpoint(authors_name: str) -> dict:
    """As timm's train.py saves it (the authors' EfficientNet): 'state_dict', 'state_dict_ema', 'args'."""
    state_dict = synthetic_state_dict(authors_name)
    args = argparse.Namespace(model=authors_name, drop_path=0.2, model_ema=True, lr=0.048, epochs=350)
    return {'epoch': 349, 'arch': authors_name, 'state_dict': state_dict, 'state_dict_ema': state_dict,
            'optimizer': OPTIMIZER_STATE, 'version': 2, 'args': args, 'metric': 77.0}
