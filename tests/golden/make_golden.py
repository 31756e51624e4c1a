"""Compute the golden outputs in this folder with the authors' own code (run once, by hand).

The authors' code is not part of this project and is never committed. To regenerate:

    git clone https://github.com/joyfang1106/MRLA /tmp/MRLA      # pip install einops
    python tests/golden/make_golden.py --authors-repo /tmp/MRLA resnet50_mrlal resnet101_mrlal resnet50_mrlab \
        deit_mrlal_tiny_patch16_224 deit_mrlal_small_patch16_224 deit_mrlab_tiny_patch16_224

EfficientNet lives in the repo's history (commit 87d22997, ``timm/models/efficientnet_*.py``) and needs the
timm release it was written against: install ``timm==0.5.4`` into a folder, copy the three files into its
``timm/models/``, and run with that folder first on ``PYTHONPATH`` and ``--authors-timm`` set:

    pip install --no-deps --target /tmp/timm054 timm==0.5.4
    git -C /tmp/MRLA show 87d22997:timm/models/efficientnet_mrla.py > /tmp/timm054/timm/models/efficientnet_mrla.py
    (likewise efficientnet_blocks.py and efficientnet_builder.py)
    PYTHONPATH=/tmp/timm054 python tests/golden/make_golden.py --authors-timm efficientnet_mrla_b0

Each model gets the deterministic weights of ``synthetic_checkpoints.synthetic_state_dict`` (loaded
strictly, so every key of the authors' model is covered) and the input of ``golden_input``; the file
``<name>.safetensors`` stores the eval-mode logits and the train-mode logits (batch statistics, no drop path).
"""
import argparse
import importlib
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from synthetic_checkpoints import GOLDEN_DIR, golden_input, synthetic_state_dict  # noqa: E402

# authors' model name -> (folder of their repo to import from, module, constructor)
AUTHORS_MODELS = {
    'resnet50_mrlal': ('resnet', 'models.resnet_mrla_light', 'resnet50_mrlal'),
    'resnet101_mrlal': ('resnet', 'models.resnet_mrla_light', 'resnet101_mrlal'),
    'resnet50_mrlab': ('resnet', 'models.resnet_mrla_base', 'resnet50_mrlab'),
    'deit_mrlal_tiny_patch16_224': ('deit', 'deit_mrla_light', 'deit_mrlal_tiny_patch16_224'),
    'deit_mrlal_small_patch16_224': ('deit', 'deit_mrla_light', 'deit_mrlal_small_patch16_224'),
    'deit_mrlab_tiny_patch16_224': ('deit', 'deit_mrla_base', 'deit_mrlab_tiny_patch16_224'),
    'efficientnet_mrla_b0': (None, 'timm.models.efficientnet_mrla', 'efficientnet_mrla_b0'),
}


def build(name: str, authors_repo: Path) -> torch.nn.Module:
    folder, module_name, fn_name = AUTHORS_MODELS[name]
    if folder is not None:
        sys.path.insert(0, str(authors_repo / folder))
    if folder == 'resnet' and 'models' not in sys.modules:
        # their models/__init__.py star-imports a resnet152_mrlal that is listed in __all__ but never
        # defined, which raises; load the package's modules without running it
        package = types.ModuleType('models')
        package.__path__ = [str(authors_repo / 'resnet' / 'models')]
        sys.modules['models'] = package
    module = importlib.import_module(module_name)
    return getattr(module, fn_name)()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('names', nargs='+', choices=sorted(AUTHORS_MODELS))
    parser.add_argument('--authors-repo', type=Path, help='checkout of github.com/joyfang1106/MRLA')
    parser.add_argument('--authors-timm', action='store_true', help='authors EfficientNet on PYTHONPATH')
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    for name in args.names:
        model = build(name, args.authors_repo)
        state_dict = synthetic_state_dict(name)
        model.load_state_dict(state_dict, strict=True)
        x = golden_input()
        outputs = {'eval_logits': model.eval()(x).contiguous(), 'train_logits': model.train()(x).contiguous()}
        meta = {'authors_model': name, 'torch': torch.__version__}
        save_file(outputs, str(GOLDEN_DIR / f'{name}.safetensors'), metadata=meta)
        print(name, {k: tuple(v.shape) for k, v in outputs.items()}, float(outputs['eval_logits'].abs().max()))


if __name__ == '__main__':
    main()
