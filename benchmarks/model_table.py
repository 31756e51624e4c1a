"""Parameters and GMACs of the MRLA models beside their timm base models, as a markdown table.

    python benchmarks/model_table.py                # every MRLA model
    python benchmarks/model_table.py resnet50_mrla  # some of them

MACs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matrix products,
attention), halved from FLOPs, for one image at the model's default input size; element-wise work
(norms, activations, pooling, the MRLA gates) is not counted, as in timm's own tables.
"""
import argparse

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import timm_mrla  # noqa: F401

# MRLA model -> the timm model it extends
BASE_MODELS = {
    'resnet18_mrla': 'resnet18',
    'resnet34_mrla': 'resnet34',
    'resnet50_mrla': 'resnet50',
    'resnet101_mrla': 'resnet101',
    'resnet152_mrla': 'resnet152',
    'resnet50_mrla_base': 'resnet50c',
    'resnet101_mrla_base': 'resnet101c',
    'efficientnet_b0_mrla': 'efficientnet_b0',
    'efficientnet_b1_mrla': 'efficientnet_b1',
    'efficientnet_b2_mrla': 'efficientnet_b2',
    'deit_tiny_mrla': 'deit_tiny_patch16_224',
    'deit_small_mrla': 'deit_small_patch16_224',
    'deit_base_mrla': 'deit_base_patch16_224',
    'deit_tiny_mrla_base': 'deit_tiny_patch16_224',
    'deit_small_mrla_base': 'deit_small_patch16_224',
    'deit_base_mrla_base': 'deit_base_patch16_224',
}


def measure(name: str):
    model = timm.create_model(name).eval()
    size = model.pretrained_cfg['input_size']
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, *size))
    return params, counter.get_total_flops() / 2, size[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', default=list(BASE_MODELS))
    args = parser.parse_args()
    print('| model | timm base model | input | params (M) | GMACs | params vs base | GMACs vs base |')
    print('|---|---|---|---|---|---|---|')
    for name in args.models:
        base = BASE_MODELS[name]
        params, macs, size = measure(name)
        base_params, base_macs, base_size = measure(base)
        assert base_size == size, f'{name} and {base} default to different input sizes'
        print(f'| {name} | {base} | {size} | {params / 1e6:.3f} | {macs / 1e9:.3f} | '
              f'+{(params - base_params) / 1e3:.1f}K | +{(macs - base_macs) / 1e9:.3f} |')


if __name__ == '__main__':
    main()
