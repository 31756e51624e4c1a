"""Initialisation that does not depend on torch's random number generator.

Values come from integer hashing, so the same tensors come out on every machine and torch version: a
warm start built here has the same bytes (and sha256) wherever it is rebuilt.
"""
import math
import zlib
from typing import Tuple

import torch
import torch.nn as nn

from .mrla import MRLABase, MRLALight

__all__ = ['hashed_uniform', 'init_mrla_hashed']


def hashed_uniform(tag: str, shape: Tuple[int, ...]) -> torch.Tensor:
    """float32 values in [-1, 1) from a multiplicative hash of (tag, index)."""
    n = math.prod(shape)
    seed = zlib.crc32(tag.encode())
    x = (torch.arange(n, dtype=torch.int64) * 2654435761 + seed * 40503) % 2 ** 32
    x = ((x ^ (x >> 13)) * 1274126177) % 2 ** 32
    return (x.double() / 2 ** 31 - 1).float().reshape(shape)


@torch.no_grad()
def init_mrla_hashed(model: nn.Module) -> None:
    """Give every MRLA layer's weights the ranges of PyTorch's default init (uniform in +-1/sqrt(fan_in); lambda
    in +-sqrt(3), unit variance like the authors' N(0, 1)), drawn from ``hashed_uniform`` by parameter name."""
    for name, module in model.named_modules():
        if isinstance(module, (MRLALight, MRLABase)):
            for param_name, param in module.named_parameters():
                fan_in = math.prod(param.shape[1:]) if param.ndim > 1 else 1
                bound = math.sqrt(3) if param_name == 'lambda_t' else 1 / math.sqrt(fan_in)
                param.copy_(bound * hashed_uniform(f'{name}.{param_name}', tuple(param.shape)))
