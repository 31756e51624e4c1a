"""Deterministic stand-ins for the authors' checkpoints, built from their key lists alone.

No random number generator is involved: every value comes from integer hashing, so the same tensors
come out on every machine and torch version. ``golden/make_golden.py`` fed these weights to the
authors' code once; the tests feed them through ``timm-mrla convert`` and compare.
"""
import math
from pathlib import Path
from typing import Dict, List, Tuple

import torch

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


def synthetic_state_dict(name: str) -> Dict[str, torch.Tensor]:
    """A full state dict for the authors' model ``name`` (an ``official-keys`` file stem)."""
    return {key: synthetic_value(key, shape, dtype) for key, shape, dtype in read_key_list(name)}


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
