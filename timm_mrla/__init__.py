"""MRLA layer attention for timm: ``import timm_mrla`` registers the models with timm."""
__version__ = '0.1.0'

from . import models  # noqa: F401  registers the entry points with timm
from .inspection import AttentionGroup, LayerAttentionRecorder, NotAnMRLAModelError, layer_attention  # noqa: E402,F401
