"""Every registered model exports with a dynamic batch axis: to ONNX with both torch.onnx exporters, and with
torch.export. Each is exported at batch 2 and run at batch 3, where it must give the eager model's outputs.

The norms, biases and lambdas take the deterministic synthetic values of the golden tests: BatchNorm statistics
away from their defaults, so the eval-time fold of MRLA-light has work to do. Inputs are small: 64x64 for the
CNNs and CeiT, 32x32 (a 2x2 patch grid) for the ViTs, both transformers built with that ``img_size``; the variants
of a family exported at full depth are exported in their small configurations (``SMALL_CONFIGS``).
"""
import io
from typing import NamedTuple

import onnx
import onnxruntime
import pytest
import timm
import torch

import timm_mrla  # noqa: F401
from synthetic_checkpoints import synthetic_value
from timm_standins import SMALL_CONFIGS

# models whose MRLA branches and shortcuts another exported model already has. CeiT's sizes differ in widths only
# (a dynamo export of one takes ~30 s here); ResNet-101-D's blocks are ResNet-50-D's; SE-ResNet, ResNeXt and Wide
# ResNet differ from ResNet-50 only inside the residual branch (an SE gate, grouped or wider convolutions: timm's own
# modules); the ViTs are DeiT's architectures with other weights; ConvNeXt-S/B differ from ConvNeXt-T in sizes only
SAME_EXPORT_AS = {'ceit_small_mrla': 'ceit_tiny_mrla', 'ceit_base_mrla': 'ceit_tiny_mrla',
                  'resnet101d_mrla': 'resnet50d_mrla', 'seresnet50_mrla': 'resnet50_mrla',
                  'resnext50_32x4d_mrla': 'resnet50_mrla', 'wide_resnet50_2_mrla': 'resnet50_mrla',
                  'vit_small_patch16_224_mrla': 'deit_small_mrla', 'vit_base_patch16_224_mrla': 'deit_base_mrla',
                  'convnext_small_mrla': 'convnext_tiny_mrla', 'convnext_base_mrla': 'convnext_tiny_mrla'}
MODELS = [name for name in timm.list_models('*mrla*') if name not in SAME_EXPORT_AS]
EXPORT_BATCH, RUN_BATCH = 2, 3
# fp32 through another runtime: kernels sum in other orders, and the rounding grows with depth
# (measured: at most 9.7e-7 over the first 19 models and both exporters)
REL_TOL = 1e-5


def _model(name: str) -> torch.nn.Module:
    transformer = name.startswith(('deit', 'vit', 'ceit'))
    model = timm.create_model(name, num_classes=10, **({'img_size': _size(name)} if transformer else {}),
                              **SMALL_CONFIGS.get(name, {}))
    vectors = {key: synthetic_value(key, tuple(value.shape), 'int64' if value.dtype == torch.int64 else 'float32')
               for key, value in model.state_dict().items() if value.ndim <= 1}
    model.load_state_dict(vectors, strict=False)
    return model.eval()


def _size(name: str) -> int:
    return 32 if name.startswith(('deit', 'vit')) else 64  # CeiT's stride-16 stem: a 4x4 grid


def _images(name: str, batch_size: int) -> torch.Tensor:
    size = _size(name)
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(batch_size))


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    error = float(torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected))
    assert error <= REL_TOL, f'relative error {error:.2e} > {REL_TOL:.0e}'


class Case(NamedTuple):
    model: torch.nn.Module
    export_input: torch.Tensor
    run_input: torch.Tensor
    expected: torch.Tensor  # the eager model's logits for run_input


@pytest.fixture(scope='module', params=MODELS)
def case(request) -> Case:
    """One model at a time, shared by both exporters' tests (pytest groups the tests by it)."""
    model = _model(request.param)
    x = _images(request.param, RUN_BATCH)
    with torch.inference_mode():
        expected = model(x)
    return Case(model, _images(request.param, EXPORT_BATCH), x, expected)


def _assert_onnx_runs_like_eager(model_bytes: bytes, x: torch.Tensor, expected: torch.Tensor) -> None:
    onnx.checker.check_model(model_bytes)
    session = onnxruntime.InferenceSession(model_bytes, providers=['CPUExecutionProvider'])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    _assert_close(torch.from_numpy(logits), expected)


@pytest.mark.filterwarnings('ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning')
def test_onnx_export_legacy_dynamic_axes(case):
    buffer = io.BytesIO()
    torch.onnx.export(case.model, (case.export_input,), buffer, dynamo=False, input_names=['images'],
                      output_names=['logits'], dynamic_axes={'images': {0: 'batch'}, 'logits': {0: 'batch'}})
    _assert_onnx_runs_like_eager(buffer.getvalue(), case.run_input, case.expected)


def test_torch_export_and_onnx_dynamo_dynamic_shapes(case):
    """torch.export with a dynamic batch, then the dynamo ONNX exporter from that program (the exporter's own
    first step is this same ``torch.export.export``, so one export serves both; ONNX Runtime's outputs check the
    program it was translated from). onnxscript's graph optimiser is left out: it is not ours and takes minutes
    on the deepest models."""
    program = torch.export.export(case.model, (case.export_input,), dynamic_shapes=({0: torch.export.Dim('batch')},))
    onnx_program = torch.onnx.export(program, dynamo=True, optimize=False, verbose=False)
    _assert_onnx_runs_like_eager(onnx_program.model_proto.SerializeToString(), case.run_input, case.expected)


@pytest.mark.parametrize('name', ['resnet18_mrla', 'deit_tiny_mrla'])
def test_torch_export_program_runs_at_another_batch_size(name):
    model = _model(name)
    program = torch.export.export(model, (_images(name, EXPORT_BATCH),),
                                  dynamic_shapes=({0: torch.export.Dim('batch')},))
    x = _images(name, RUN_BATCH)
    with torch.inference_mode():
        _assert_close(program.module()(x), model(x))


def test_onnx_export_dynamo_from_the_module():
    """The one-call form the README shows: the module with ``dynamic_shapes``, the graph optimiser on."""
    name = 'resnet18_mrla'
    model = _model(name)
    onnx_program = torch.onnx.export(model, (_images(name, EXPORT_BATCH),), dynamo=True, verbose=False,
                                     dynamic_shapes=({0: torch.export.Dim('batch')},))
    x = _images(name, RUN_BATCH)
    with torch.inference_mode():
        expected = model(x)
    _assert_onnx_runs_like_eager(onnx_program.model_proto.SerializeToString(), x, expected)


@pytest.mark.filterwarnings('ignore:`torch.jit.trace')
@pytest.mark.parametrize('name', ['resnet18_mrla', 'efficientnet_b0_mrla'])
def test_jit_trace_runs_at_another_batch_size(name):
    """A trace keeps Python numbers as constants: no layer may make one of the batch size (a convolution over
    batch x channel groups, the eager fold of MRLA-light, would)."""
    model = _model(name)
    with torch.no_grad():
        traced = torch.jit.trace(model, _images(name, EXPORT_BATCH))
        x = _images(name, RUN_BATCH)
        _assert_close(traced(x), model(x))
