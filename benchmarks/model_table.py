"""Parameters and GMACs of the MRLA models beside their timm base models, as a markdown table.

    python benchmarks/model_table.py                # every MRLA model
    python benchmarks/model_table.py resnet50_mrla  # some of them (the CeiT ones, which have no timm base, by name:
                                                    # beside the same model without MRLA, mrla=False)

MACs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matrix products,
attention), halved from FLOPs, for one image at the model's default input size; element-wise work
(norms, activations, pooling, the MRLA gates) is not counted, as in timm's own tables.
"""
import argparse

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import timm_mrla  # noqa: F401
from timm_mrla.models import BASE_MODELS



def measure(name: str, **kwargs):
    model = timm.create_model(name, **kwargs).eval()
    size = model.pretrained_cfg['input_size']
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, *size))
    return params, counter.get_total_flops() / 2, size[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', default=[m for m in BASE_MODELS if m not in ('efficientnet_mrla', 'deit_mrla')])
    args = parser.parse_args()
    print('| model | timm base model | input | params (M) | GMACs | params vs base | GMACs vs base |')
    print('|---|---|---|---|---|---|---|')
    for name in args.models:
        params, macs, size = measure(name)
        if name in BASE_MODELS:
            base = BASE_MODELS[name]
            base_params, base_macs, base_size = measure(base)
        else:  # CeiT: timm has none; the same model without its MRLA branches
            base = f'{name}(mrla=False)'
            base_params, base_macs, base_size = measure(name, mrla=False)
        assert base_size == size, f'{name} and {base} default to different input sizes'
        print(f'| {name} | {base} | {size} | {params / 1e6:.3f} | {macs / 1e9:.3f} | '
              f'+{(params - base_params) / 1e3:.1f}K | +{(macs - base_macs) / 1e9:.3f} |')


if __name__ == '__main__':
    main()
