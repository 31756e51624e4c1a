"""torchvision detectors (Faster R-CNN, Mask R-CNN, RetinaNet) with an FPN on a ``features_only`` MRLA backbone.

As in the authors' detection configs (mmdetection, ``faster_rcnn_r50mrlal_fpn.py`` /
``mask_rcnn_r50mrlal_fpn_1x_coco.py`` / ``retinanet_r50mrlal_fpn.py``): every BatchNorm of the backbone, MRLA's own
``bn_mrla`` included, keeps its pretrained statistics (here timm's ``freeze_batch_norm_2d``, so its affine parameters
are frozen as well, as in torchvision's detectors); the stem and the first ``frozen_stages`` stages get no gradient;
Faster and Mask R-CNN put their FPN on stages 1-4 plus a max-pooled level, RetinaNet on stages 2-4 plus P6/P7
computed from the last stage's output. Needs torchvision (the ``detection`` extra).

    model = mrla_faster_rcnn('resnet50_mrla.TAG', num_classes=91)   # any timm name, tag, hf-hub: or local-dir:
    model = mrla_mask_rcnn('resnet50_mrla.TAG', num_classes=91)
"""
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence, Type, TypeVar

import timm
import torch
import torch.nn as nn
from timm.layers import freeze_batch_norm_2d

try:
    from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7
except ImportError as e:
    raise ImportError("timm_mrla.detection needs torchvision: pip install 'timm-mrla[detection]'") from e

__all__ = ['MRLABackboneWithFPN', 'mrla_backbone_with_fpn', 'mrla_faster_rcnn', 'mrla_mask_rcnn', 'mrla_retinanet']

RCNN = TypeVar('RCNN', bound=FasterRCNN)


class MRLABackboneWithFPN(nn.Module):
    """A timm ``features_only`` backbone followed by torchvision's ``FeaturePyramidNetwork``.

    ``forward(images)`` returns the FPN's ``OrderedDict`` of feature maps, keyed '0', '1', ... and then the
    extra levels' names, with ``out_channels`` channels each: what torchvision's detectors take.
    """

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_blocks: Optional[ExtraFPNBlock] = None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def _freeze_stem_and_stages(body: nn.Module, frozen_stages: int) -> None:
    """No gradient for the ResNet stem and layer1..layer{frozen_stages} (the authors' ``frozen_stages``)."""
    if frozen_stages <= 0:
        return
    frozen = ('conv1', 'bn1') + tuple(f'layer{i}' for i in range(1, frozen_stages + 1))
    if not any(name.startswith('layer1.') for name, _ in body.named_parameters()):
        raise ValueError(f'frozen_stages={frozen_stages} names ResNet stages (layer1, ...), which '
                         f'{type(body).__name__} does not have; pass frozen_stages=0')
    for name, param in body.named_parameters():
        if name.split('.')[0] in frozen:
            param.requires_grad_(False)


def mrla_backbone_with_fpn(
        model_name: str,
        pretrained: bool = True,
        out_indices: Sequence[int] = (1, 2, 3, 4),
        frozen_stages: int = 1,
        extra_levels: str = 'pool',
        out_channels: int = 256,
        **model_kwargs: Any,
) -> MRLABackboneWithFPN:
    """``timm.create_model(model_name, features_only=True, out_indices=...)`` with its BatchNorms frozen, its stem
    and first ``frozen_stages`` stages without gradient, under an FPN whose extra levels are a max pool of the
    last (``'pool'``, Faster R-CNN) or P6/P7 convolved from the last stage's output (``'p6p7'``, RetinaNet)."""
    body = timm.create_model(model_name, pretrained=pretrained, features_only=True, out_indices=out_indices,
                             **model_kwargs)
    body = freeze_batch_norm_2d(body)
    _freeze_stem_and_stages(body, frozen_stages)
    if extra_levels == 'pool':
        extra_blocks = LastLevelMaxPool()
    elif extra_levels == 'p6p7':
        extra_blocks = LastLevelP6P7(body.feature_info.channels()[-1], out_channels)
    else:
        raise ValueError(f"extra_levels must be 'pool' or 'p6p7', got {extra_levels!r}")
    return MRLABackboneWithFPN(body, out_channels, extra_blocks)


def mrla_faster_rcnn(model_name: str, num_classes: int, pretrained: bool = True, frozen_stages: int = 1,
                     fpn_channels: int = 256, backbone_kwargs: Optional[Dict[str, Any]] = None,
                     **detector_kwargs: Any) -> FasterRCNN:
    """torchvision ``FasterRCNN`` on the FPN of MRLA stages 1-4 (plus a max-pooled level), its anchors and RoI
    pooling torchvision's defaults for that pyramid. ``num_classes`` counts the background class; the image
    normalisation defaults to the backbone's data config; ``detector_kwargs`` go to ``FasterRCNN``."""
    return _mrla_rcnn(FasterRCNN, model_name, num_classes, pretrained, frozen_stages, fpn_channels, backbone_kwargs,
                      detector_kwargs)


def mrla_mask_rcnn(model_name: str, num_classes: int, pretrained: bool = True, frozen_stages: int = 1,
                   fpn_channels: int = 256, backbone_kwargs: Optional[Dict[str, Any]] = None,
                   **detector_kwargs: Any) -> MaskRCNN:
    """torchvision ``MaskRCNN`` on the backbone and FPN of ``mrla_faster_rcnn``, its mask head torchvision's
    default (RoI-aligned 14x14 on FPN levels 0-3, four 3x3 convolutions, 28x28 masks). ``detector_kwargs`` go to
    ``MaskRCNN``."""
    return _mrla_rcnn(MaskRCNN, model_name, num_classes, pretrained, frozen_stages, fpn_channels, backbone_kwargs,
                      detector_kwargs)


def mrla_retinanet(model_name: str, num_classes: int, pretrained: bool = True, frozen_stages: int = 1,
                   fpn_channels: int = 256, backbone_kwargs: Optional[Dict[str, Any]] = None,
                   **detector_kwargs: Any) -> RetinaNet:
    """torchvision ``RetinaNet`` on the FPN of MRLA stages 2-4 plus P6/P7 from the last stage's output (the
    authors' ``add_extra_convs='on_input'``), torchvision's default anchors. ``detector_kwargs`` go to
    ``RetinaNet``."""
    backbone = mrla_backbone_with_fpn(model_name, pretrained, (2, 3, 4), frozen_stages, 'p6p7', fpn_channels,
                                      **(backbone_kwargs or {}))
    return RetinaNet(backbone, num_classes, **_normalisation(backbone.body, detector_kwargs))


def _mrla_rcnn(detector: Type[RCNN], model_name: str, num_classes: int, pretrained: bool, frozen_stages: int,
               fpn_channels: int, backbone_kwargs: Optional[Dict[str, Any]], detector_kwargs: Dict[str, Any]) -> RCNN:
    """Faster or Mask R-CNN on the FPN of MRLA stages 1-4 plus a max-pooled level: one backbone set-up for both."""
    backbone = mrla_backbone_with_fpn(model_name, pretrained, (1, 2, 3, 4), frozen_stages, 'pool', fpn_channels,
                                      **(backbone_kwargs or {}))
    return detector(backbone, num_classes, **_normalisation(backbone.body, detector_kwargs))


def _normalisation(body: nn.Module, detector_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The detector's image mean/std: the backbone's own (its pretrained data config) unless given."""
    config = timm.data.resolve_data_config(model=body)
    return {'image_mean': list(config['mean']), 'image_std': list(config['std']), **detector_kwargs}
