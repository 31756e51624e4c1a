"""The training path of the MRLA-base branch (``timm_mrla.layers.base_train``) equals the plain modules and the
literal reference form: outputs, every gradient, BatchNorm running statistics, drop-path, a second backward pass,
and under gradient checkpointing, FX, TorchScript and bf16 autocast; a stage keeps no feature map of its own beyond
each block's output; and under torch.compile the branch runs as its custom operators, in one graph, equal to eager
mode (Inductor included), recomputing each value once in backward and keeping none from the forward."""
import collections
import contextlib
import copy

import pytest
import timm
import torch
import torch.nn as nn
from torch._functorch import config as functorch_config
from torch._inductor import config as inductor_config
from torch._inductor.compile_fx import compile_fx, compile_fx_inner

import timm_mrla  # noqa: F401
from timm_mrla.layers import base_train, reference_mode
from timm_mrla.models.resnet import MRLABaseStage
from test_fast_paths import _saved_bytes
from test_training_path import rel_error

FP32_TOL = 1e-5
FP64_TOL = 1e-8  # float64 rounding, amplified in a second step by BatchNorms that see 4 values per channel


def _model(dtype=torch.float64, drop=0.3, seed=0, **kwargs):
    """A small resnet50_mrla_base (stages of 1, 3, 1, 2 blocks) with non-trivial BatchNorm affines."""
    torch.manual_seed(seed)
    model = timm.create_model('resnet50_mrla_base', num_classes=5, drop_path_rate=drop, layers=(1, 3, 1, 2),
                              **kwargs).to(dtype).train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)  # timm zero-inits bn3, which would hide the residual branches
                m.bias.uniform_(-0.5, 0.5)
    return model


def autograd_node_names(out: torch.Tensor) -> set:
    """The type names of every autograd node behind ``out``."""
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    return {type(fn).__name__ for fn in seen}


def _uses_training_path(out: torch.Tensor) -> bool:
    return '_BaseBranchBackward' in autograd_node_names(out)


def _steps(model, steps=2, dtype=torch.float64, fn=None, memory_format=torch.contiguous_format):
    """Outputs and every parameter's gradient over ``steps`` SGD steps, and whether the training path ran."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(11)
    results, used = [], []
    for step in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=generator, dtype=torch.float64)
        x = x.to(dtype).contiguous(memory_format=memory_format)
        weights = torch.randn(4, 5, generator=generator, dtype=torch.float64).to(dtype)
        torch.manual_seed(7 + step)  # drop-path masks
        out = (model if fn is None else fn)(x)
        used.append(_uses_training_path(out))
        (out * weights).sum().backward()
        results.append([out.detach(), *[p.grad.clone() for p in model.parameters()]])
        optimizer.step()
        optimizer.zero_grad()
    return results, used


def _assert_close(got, want, tol):
    for step_got, step_want in zip(got, want):
        for a, b in zip(step_got, step_want):
            assert torch.equal(a, b) or rel_error(a, b) <= tol


def _assert_same_buffers(model, ref_model, tol=FP64_TOL):
    for (name, a), (_, b) in zip(model.named_buffers(), ref_model.named_buffers()):
        if a.dtype.is_floating_point:
            assert rel_error(a, b) <= tol, name
        else:
            assert torch.equal(a, b), name


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_training_path_equals_reference(memory_format):
    """float64, drop-path on, two SGD steps: outputs, gradients and running statistics of the reference form."""
    model, ref_model = _model(), _model()
    got, used = _steps(model, memory_format=memory_format)
    with reference_mode(ref_model):
        want, ref_used = _steps(ref_model, memory_format=memory_format)
    assert all(used) and not any(ref_used)
    _assert_close(got, want, FP64_TOL)
    _assert_same_buffers(model, ref_model)


@pytest.mark.parametrize('momentum, affine, track', [(0.1, True, True), (None, True, True), (0.1, False, True),
                                                      (0.1, True, False)])
def test_fp32_stage_equals_float64_reference(momentum, affine, track):
    """A stage of three blocks in fp32 against its float64 reference form, over three training steps: output,
    the gradients of the input and every parameter, running statistics, for every BatchNorm configuration
    nn.BatchNorm2d has. Each is within 1e-5, or (the 5-tap query/key kernels' gradients, sums with heavy
    cancellation) no further off than the fp32 reference form itself."""
    stage = _model(torch.float32).layer2
    for block in stage:
        block.bn_mrla = nn.BatchNorm2d(block.bn_mrla.num_features, momentum=momentum, affine=affine,
                                       track_running_stats=track)
    plain_stage, ref_stage = copy.deepcopy(stage), copy.deepcopy(stage).double()
    generator = torch.Generator().manual_seed(3)
    for step in range(3):
        x = torch.randn(4, 256, 12, 12, generator=generator, dtype=torch.float64)
        weights = torch.randn(4, 512, 6, 6, generator=generator, dtype=torch.float64)
        results = []
        for module in (stage, plain_stage, ref_stage):
            dtype = next(module.parameters()).dtype
            inputs = x.to(dtype).requires_grad_()
            torch.manual_seed(step)
            with contextlib.nullcontext() if module is stage else reference_mode(module):
                out = module(inputs)
            assert _uses_training_path(out) == (module is stage)
            results.append([out, *torch.autograd.grad((out * weights.to(dtype)).sum(), [inputs, *module.parameters()])])
        for got, plain, want in zip(*results):
            if not torch.equal(got, want):
                assert rel_error(got, want) <= max(FP32_TOL, 2 * rel_error(plain, want))
    _assert_same_buffers(stage, ref_stage, FP32_TOL)


def test_second_backward_recomputes_the_values():
    """With retain_graph, a second backward pass finds the recomputed values gone and recomputes them again."""
    model = _model()
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    out = model(x)
    assert _uses_training_path(out)
    first = torch.autograd.grad(out.square().sum(), list(model.parameters()), retain_graph=True)
    second = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_stage_keeps_only_the_block_outputs():
    """Beyond what the plain bottlenecks save, a stage of n blocks keeps n - 1 maps (the outputs the next blocks
    keep) and its parameters; autograd through the plain modules keeps about three maps more per block (the
    value, the weighted sum and the ReLU output)."""
    stage = _model(torch.float32, drop=0.).layer2
    x = torch.randn(2, stage[0].conv1.in_channels, 32, 32)
    map_bytes = 2 * stage[0].bn3.num_features * 16 * 16 * 4
    branch_parameter_bytes = sum(p.numel() * 4 for block in stage for m in (block.mrla, block.bn_mrla)
                                 for p in m.parameters())

    def residuals_only():
        out = x
        for block in stage:
            out = block.residual(out)[0]
        return out

    def stage_forward():
        return stage(x)

    bottlenecks = _saved_bytes(residuals_only) + branch_parameter_bytes
    fast = _saved_bytes(stage_forward) - bottlenecks
    with reference_mode(stage):
        literal = _saved_bytes(stage_forward) - bottlenecks
    outputs = (len(stage) - 1) * map_bytes
    assert outputs <= fast <= outputs + 0.05 * len(stage) * map_bytes  # + per-channel vectors and the attention
    assert literal >= outputs + 2.5 * len(stage) * map_bytes


def test_observed_layers_take_the_plain_modules():
    """A hook on a layer of a stage (as ``LayerAttentionRecorder`` adds) sends the whole stage the plain way."""
    model = _model()
    calls = []
    handle = model.layer2[1].mrla.register_forward_pre_hook(lambda m, args: calls.append(1))
    out = model(torch.randn(2, 3, 48, 48, dtype=torch.float64))
    handle.remove()
    assert calls == [1]
    assert _uses_training_path(out)  # the other stages still take the training path
    stage_out = model.layer2(torch.randn(2, 256, 12, 12, dtype=torch.float64))
    assert _uses_training_path(stage_out)
    handle = model.layer2[0].bn_mrla.register_forward_hook(lambda *args: None)
    assert not _uses_training_path(model.layer2(torch.randn(2, 256, 12, 12, dtype=torch.float64)))
    handle.remove()


def test_gradient_checkpointing_takes_the_plain_modules():
    """Checkpointed blocks keep only their inputs anyway; they run the plain modules (which update the running
    statistics again when recomputed, as nn.BatchNorm2d does) and match the training path."""
    model, ref_model = _model(), _model()
    model.set_grad_checkpointing(True)
    got, used = _steps(model)
    want, _ = _steps(ref_model)
    assert not any(used)
    _assert_close(got, want, FP64_TOL)


def test_fx_traced_training_model_equals_eager():
    """FX records the plain modules (the training path's cache lives only in eager forward passes), and dead-code
    elimination, which timm's feature extraction runs, keeps every term of the weighted sum. (Without drop-path:
    timm's own DropPath scales its mask in place, which dead-code elimination drops.)"""
    model, traced_source = _model(drop=0.), _model(drop=0.)
    traced = torch.fx.symbolic_trace(traced_source)
    traced.graph.eliminate_dead_code()
    traced.recompile()
    got, used = _steps(traced_source, fn=traced)
    want, _ = _steps(model)
    assert not any(used)
    _assert_close(got, want, FP64_TOL)
    _assert_same_buffers(traced_source, model)


def test_torchscript_training_model_equals_eager():
    model = _model()
    scripted = torch.jit.script(copy.deepcopy(model))
    got, _ = _steps(scripted)
    want, used = _steps(model)
    assert all(used)
    _assert_close(got, want, FP64_TOL)
    _assert_same_buffers(scripted, model)


def _branch_ops(graph: torch.fx.Graph) -> int:
    return sum(node.target is torch.ops.timm_mrla.base_branch.default for node in graph.nodes)


def _recording_aot_eager(graphs):
    """AOT autograd without Inductor, appending each graph Dynamo captures to ``graphs``."""
    def backend(gm, example_inputs):
        graphs.append(gm.graph)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)
    return backend


def _assert_stage_steps_close(stage, compiled, eager_stage, steps, dtype, tol):
    """Seeded training steps (drop-path masks included) of ``compiled`` (``stage`` compiled) and of ``eager_stage``
    on the same inputs: outputs and the gradients of the input and every parameter within ``tol``."""
    generator = torch.Generator().manual_seed(3)
    for step in range(steps):
        x = torch.randn(4, 256, 12, 12, generator=generator, dtype=torch.float64).to(dtype)
        weights = torch.randn(4, 512, 6, 6, generator=generator, dtype=torch.float64).to(dtype)
        results = []
        for module, fn in ((stage, compiled), (eager_stage, eager_stage)):
            inputs = x.clone().requires_grad_()
            torch.manual_seed(step)
            out = fn(inputs)
            results.append([out, *torch.autograd.grad((out * weights).sum(), [inputs, *module.parameters()])])
        _assert_close([results[0]], [results[1]], tol)


def test_torch_compile_of_a_training_model():
    """The whole model compiles into one graph that runs every block's branch as its operator, and matches the
    eager training path in fp32 over two SGD steps with drop-path (the masks drawn as eager mode draws them):
    outputs, gradients, running statistics. (AOT autograd without Inductor, whose own fusions of the rest of the
    model would round differently; Inductor runs in the stage test below.)"""
    model, compiled_source = _model(torch.float32), _model(torch.float32)
    graphs = []
    backend = _recording_aot_eager(graphs)
    got, _ = _steps(compiled_source, dtype=torch.float32, fn=torch.compile(compiled_source, backend=backend,
                                                                            fullgraph=True))
    want, used = _steps(model, dtype=torch.float32)
    assert all(used)
    _assert_close(got, want, FP32_TOL)
    _assert_same_buffers(compiled_source, model, FP32_TOL)
    blocks = sum(len(stage) for stage in model.modules() if isinstance(stage, MRLABaseStage))
    assert [_branch_ops(graph) for graph in graphs] == [blocks]


def test_inductor_compiled_stage_equals_eager():
    """Inductor, float64, one graph, drop-path on, two steps: a stage's output, input and parameter gradients and
    running statistics equal the eager training path's. In the graphs Inductor gets, each block has its forward
    operator, and the backward recomputes each value once (one recompute shared by the blocks that attend to it, as
    in eager mode) and keeps no value from the forward."""
    stage = _model().layer2
    eager_stage = copy.deepcopy(stage)
    graphs = {}

    def inner_compile(gm, example_inputs, **kwargs):
        graphs['backward' if kwargs.get('is_backward') else 'forward'] = gm.graph
        return compile_fx_inner(gm, example_inputs, **kwargs)

    def backend(gm, example_inputs):
        return compile_fx(gm, example_inputs, inner_compile=inner_compile)

    compiled = torch.compile(stage, backend=backend, fullgraph=True)
    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        _assert_stage_steps_close(stage, compiled, eager_stage, 2, torch.float64, FP64_TOL)
    _assert_same_buffers(stage, eager_stage)
    ops = torch.ops.timm_mrla
    calls = {name: collections.Counter(node.target for node in graph.nodes) for name, graph in graphs.items()}
    assert calls['forward'][ops.base_branch.default] == calls['backward'][ops.base_value.default] == 3
    value_convolutions = [node for node in graphs['forward'].nodes if node.target is torch.ops.aten.convolution.default
                          and node.args[-1] == stage[0].mrla.dim]  # groups: the depthwise value convolutions
    forward_outputs = next(iter(graphs['forward'].find_nodes(op='output'))).args[0]
    assert len(value_convolutions) == 3 and not set(value_convolutions) & set(forward_outputs)


def test_compiled_stage_equals_eager():
    """A compiled stage (AOT autograd, one graph) whose blocks have the other BatchNorm configurations (cumulative
    average, no affine, no running statistics), drop-path on, over three steps: output, the gradients of the input
    and every parameter, running statistics, updated outside the operator in the compiled form, against the eager
    training path."""
    stage = _model(torch.float32).layer2
    for block, (momentum, affine, track) in zip(stage, [(None, True, True), (0.1, False, True), (0.1, True, False)]):
        block.bn_mrla = nn.BatchNorm2d(block.bn_mrla.num_features, momentum=momentum, affine=affine,
                                       track_running_stats=track)
    eager_stage = copy.deepcopy(stage)
    graphs = []
    backend = _recording_aot_eager(graphs)
    compiled = torch.compile(stage, backend=backend, fullgraph=True)
    _assert_stage_steps_close(stage, compiled, eager_stage, 3, torch.float32, FP32_TOL)
    _assert_same_buffers(stage, eager_stage, FP32_TOL)
    assert [_branch_ops(graph) for graph in graphs] == [len(stage)]


def test_compiled_observed_stage_takes_the_plain_modules():
    """Under torch.compile the stepping-aside rules hold: a hooked layer or ``reference_mode`` sends its stage the
    plain way into the graph; without them the stage runs its operators."""
    stage = _model(torch.float32, drop=0.).layer2
    x = torch.randn(2, 256, 12, 12)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.graph)
        return gm.forward

    handle = stage[1].mrla.register_forward_pre_hook(lambda m, args: None)
    torch.compile(stage, backend=backend, fullgraph=True)(x)
    handle.remove()
    with reference_mode(stage):
        torch.compile(stage, backend=backend, fullgraph=True)(x)
    torch.compile(stage, backend=backend, fullgraph=True)(x)
    assert [_branch_ops(graph) for graph in graphs] == [0, 0, len(stage)]


@pytest.mark.parametrize('dtype, affine, track, memory_format', [
    (torch.float32, True, True, torch.contiguous_format), (torch.bfloat16, True, True, torch.contiguous_format),
    (torch.float32, False, True, torch.channels_last), (torch.bfloat16, False, False, torch.contiguous_format)])
def test_compiled_branch_operators_match_their_fake_kernels(dtype, affine, track, memory_format):
    """torch.library.opcheck: the operators' schemas, fake kernels (shapes, dtypes, layouts: bf16 maps with float32
    BatchNorm parameters, channels_last) and the forward operator's backward formula under AOT autograd."""
    generator = torch.Generator().manual_seed(0)
    batch, channels, size, num_values, head_dim = 2, 8, 5, 3, 4
    maps = [torch.randn(batch, channels, size, size, generator=generator).to(dtype, memory_format=memory_format)
            for _ in range(num_values)]
    kernels = [torch.randn(channels, 1, 3, 3, generator=generator) for _ in range(num_values)]
    values = [base_train._value(m, k).requires_grad_() for m, k in zip(maps, kernels)]
    attn = torch.randn(batch, num_values, channels // head_dim, generator=generator).softmax(1).to(dtype)
    weight, bias = (torch.rand(channels, generator=generator) + 0.5, torch.randn(channels, generator=generator)) \
        if affine else (None, None)
    keep_scale = torch.tensor([2., 0.]).view(2, 1, 1, 1).to(dtype)
    stats_dtype = torch.float32 if track else dtype
    forward_args = (attn.requires_grad_(), maps[-1], values, maps, kernels, weight, bias, keep_scale, stats_dtype,
                    1e-5, head_dim)
    torch.library.opcheck(base_train._base_branch_op, forward_args)
    torch.library.opcheck(base_train._value_op, (maps[0], kernels[0]))
    # random: its outputs under AOT autograd cannot equal a second eager draw
    torch.library.opcheck(base_train._keep_scale_op, (maps[0], 0.3, True),
                          test_utils=('test_schema', 'test_faketensor'))


def test_bf16_autocast_within_bf16_tolerance():
    """Under CPU bf16 autocast a stage's maps are bf16 and the training path runs in bf16, as the plain modules do:
    against the float32 reference form it is about as far off as the plain modules under autocast are."""
    stages = [_model(torch.float32).layer2 for _ in range(3)]
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 256, 12, 12, generator=generator)
    weights = torch.randn(4, 512, 6, 6, generator=generator)
    results = []
    for i, stage in enumerate(stages):  # the training path, the plain modules, the float32 reference form
        inputs = (x if i == 2 else x.bfloat16()).requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=i < 2), \
                contextlib.nullcontext() if i == 0 else reference_mode(stage):
            torch.manual_seed(0)
            out = stage(inputs)
        assert _uses_training_path(out) == (i == 0) and out.dtype == (torch.float32 if i == 2 else torch.bfloat16)
        grads = torch.autograd.grad((out.float() * weights).sum(), [inputs, *stage.parameters()])
        results.append([t.float() for t in (out, *grads, stage[2].bn_mrla.running_mean)])
    for got, plain, want in zip(*results):
        if not torch.equal(want, torch.zeros_like(want)):
            if got.numel() > 16:
                assert rel_error(got, want) <= max(2e-2, 1.25 * rel_error(plain, want))
            else:  # the 5-tap query/key kernels' gradients: sums with heavy cancellation, ~0.1 off in either
                assert rel_error(got, want) <= 0.25


@pytest.mark.parametrize('name', ['resnet50_mrla_base', 'resnet50_mrla', 'deit_tiny_mrla'])
def test_meta_device_training_forward(name):
    """On the meta device (no autocast there; timm's default-cfg test runs models so) the training forward works."""
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=5).train()
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 5) and out.device.type == 'meta'
