"""torchvision detectors on MRLA backbones: pretrained init from a local-dir folder, frozen BatchNorm, a few
training steps on synthetic shapes with boxes and masks, boxes (and masks) at eval. Small on purpose (128px,
64-channel FPN)."""
import pytest
import timm
import torch
from timm.models import save_for_hf
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.misc import FrozenBatchNorm2d

import timm_mrla  # noqa: F401
from timm_mrla.detection import mrla_faster_rcnn, mrla_mask_rcnn, mrla_retinanet

SIZE = 128
FPN_CHANNELS = 64
# the ResNet light and base backbones, small: the test's cost is the detector's, not MRLA's
BACKBONES = {
    'light': ('resnet18_mrla', {}),
    'base': ('resnet50_mrla_base', dict(layers=(1, 2, 1, 1))),
}
FROZEN = ('conv1', 'bn1', 'layer1')  # the stem and layer1: frozen_stages=1


@pytest.fixture(scope='module')
def pretrained_dirs(tmp_path_factory):
    """Hub-ready folders of seeded backbones with trained-looking BatchNorm statistics, loaded by local-dir:."""
    dirs = {}
    for key, (name, model_args) in BACKBONES.items():
        torch.manual_seed(0)
        model = timm.create_model(name, **model_args)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
        dirs[key] = tmp_path_factory.mktemp(key)
        save_for_hf(model, dirs[key], model_args=model_args, safe_serialization=True)
    return dirs


def _shapes(seed: int, count: int = 2):
    """Images with one bright rectangle (class 1) and one dark rectangle (class 2) on noise, their boxes and masks."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(count):
        image = torch.rand(3, SIZE, SIZE, generator=g) * 0.3 + 0.35
        boxes, masks = [], torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
        for i, value in enumerate((1.0, 0.0)):
            w, h = torch.randint(24, 56, (2,), generator=g).tolist()
            x0, y0 = torch.randint(0, SIZE - 56, (2,), generator=g).tolist()
            image[:, y0:y0 + h, x0:x0 + w] = value
            masks[i, y0:y0 + h, x0:x0 + w] = 1
            boxes.append([x0, y0, x0 + w, y0 + h])
        images.append(image)
        targets.append({'boxes': torch.tensor(boxes, dtype=torch.float32), 'labels': torch.tensor([1, 2]),
                        'masks': masks})
    return images, targets


def _detector(kind: str, backbone: str, folder) -> torch.nn.Module:
    common = dict(pretrained=True, fpn_channels=FPN_CHANNELS, min_size=SIZE, max_size=SIZE)
    if kind == 'retinanet':
        return mrla_retinanet(f'local-dir:{folder}', num_classes=3, score_thresh=0.01, **common)
    # small box and mask heads and few proposals keep the RoI heads cheap at this size
    rcnn = dict(
        num_classes=None, box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, 128), box_predictor=FastRCNNPredictor(128, 3),
        rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50, box_batch_size_per_image=32, box_score_thresh=0.01, **common)
    if kind == 'mask_rcnn':
        return mrla_mask_rcnn(f'local-dir:{folder}', mask_head=MaskRCNNHeads(FPN_CHANNELS, (64, 64), 1),
                              mask_predictor=MaskRCNNPredictor(64, 64, 3), **rcnn)
    return mrla_faster_rcnn(f'local-dir:{folder}', **rcnn)


def _loss(model, images, targets) -> float:
    torch.manual_seed(1)  # the same anchor and proposal sampling each time
    with torch.no_grad():
        return float(sum(model(images, targets).values()))


@pytest.mark.parametrize('kind, backbone', [('faster_rcnn', 'light'), ('faster_rcnn', 'base'), ('retinanet', 'light')])
def test_detector_trains_and_returns_boxes(kind, backbone, pretrained_dirs):
    torch.manual_seed(0)
    model = _detector(kind, backbone, pretrained_dirs[backbone])
    saved = timm.create_model(f'local-dir:{pretrained_dirs[backbone]}', pretrained=True).state_dict()
    body = model.backbone.body.state_dict()
    assert 'layer3.0.bn_mrla.running_var' in body
    for key, value in body.items():
        assert torch.equal(value, saved[key]), key  # initialised from the pretrained folder
    assert (model.transform.image_mean, model.transform.image_std) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

    images, targets = _shapes(0)
    model.train()
    before = _loss(model, images, targets)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=3e-4)  # SGD would need a warm-up to be stable this early
    for _ in range(5):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = _loss(model, images, targets)
    assert after < 0.95 * before, (before, after)
    for key in ('layer3.0.bn_mrla.running_var', 'layer1.0.conv1.weight'):  # frozen statistics, frozen layer1
        assert torch.equal(model.backbone.body.state_dict()[key], saved[key]), key

    model.eval()
    with torch.no_grad():
        detections = model(_shapes(1)[0])
    assert len(detections) == 2
    for d in detections:
        assert d['boxes'].shape[1:] == (4,) and d['boxes'].shape[0] == d['scores'].shape[0] == d['labels'].shape[0]
    assert sum(len(d['boxes']) for d in detections) > 0


@pytest.mark.parametrize('backbone', list(BACKBONES))
def test_mask_rcnn_trains_and_returns_masks(backbone, pretrained_dirs):
    torch.manual_seed(0)
    model = _detector('mask_rcnn', backbone, pretrained_dirs[backbone])
    body = model.backbone.body
    initial = {key: value.clone() for key, value in body.state_dict().items()}
    blocks = [m for m in body.modules() if hasattr(m, 'bn_mrla')]
    assert blocks and all(isinstance(b.bn_mrla, FrozenBatchNorm2d) for b in blocks)

    images, targets = _shapes(0)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    totals = []
    for _ in range(6):
        torch.manual_seed(1)  # the same anchor and proposal sampling at each step
        losses = model(images, targets)
        assert set(losses) == {'loss_classifier', 'loss_box_reg', 'loss_mask', 'loss_objectness', 'loss_rpn_box_reg'}
        assert all(torch.isfinite(v) for v in losses.values()), losses
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert totals[-1] < 0.8 * totals[0], totals

    # the stem and layer1 get no gradient, the later stages do; no BatchNorm (bn_mrla included) changes
    for name, param in body.named_parameters():
        frozen = name.split('.')[0] in FROZEN
        assert param.requires_grad is not frozen and (param.grad is None) is frozen, name
    frozen_bn = {name for name, m in body.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    for key, value in body.state_dict().items():
        if key.rsplit('.', 1)[0] in frozen_bn or key.split('.')[0] in FROZEN:
            assert torch.equal(value, initial[key]), key

    model.eval()
    with torch.no_grad():  # not square: the masks come back at each input image's own size
        detections = model([image[:, :, :SIZE - 32] for image in _shapes(1)[0]])
    for d in detections:
        assert d['masks'].shape == (len(d['boxes']), 1, SIZE, SIZE - 32)
        assert ((0 <= d['masks']) & (d['masks'] <= 1)).all()
    assert sum(len(d['masks']) for d in detections) > 0


@pytest.mark.parametrize('backbone', list(BACKBONES))
def test_frozen_batchnorm_backbone_computes_the_same_in_train_and_eval(backbone, pretrained_dirs):
    model = mrla_faster_rcnn(f'local-dir:{pretrained_dirs[backbone]}', num_classes=3, fpn_channels=FPN_CHANNELS)
    body = model.backbone.body
    blocks = [m for m in body.modules() if hasattr(m, 'bn_mrla')]
    assert blocks and all(isinstance(b.bn_mrla, FrozenBatchNorm2d) for b in blocks)  # MRLA's own BN too
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in body.modules())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        train_out = body.train()(x)
        eval_out = body.eval()(x)
        unfrozen = timm.create_model(f'local-dir:{pretrained_dirs[backbone]}', pretrained=True, features_only=True)
        unfrozen_train_out = unfrozen.train()(x)
    for a, b in zip(train_out, eval_out):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # what freezing prevents: BatchNorm in train mode would use the batch's statistics
    assert not torch.allclose(unfrozen_train_out[-1], eval_out[-1], rtol=1e-3, atol=1e-3)


def test_frozen_stages_needs_resnet_stages():
    with pytest.raises(ValueError, match='frozen_stages=1 names ResNet stages'):
        mrla_faster_rcnn('efficientnet_b0_mrla', num_classes=3, pretrained=False)
    backbone = mrla_faster_rcnn('efficientnet_b0_mrla', num_classes=3, pretrained=False, frozen_stages=0).backbone
    assert all(p.requires_grad for p in backbone.body.parameters())
