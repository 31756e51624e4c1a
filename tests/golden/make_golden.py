"""Compute the golden outputs in this folder with the authors' own code (run once, by hand).

The authors' code is not part of this project and is never committed. Their DeiT, CeiT and EfficientNet files
were written against timm 0.5.x (``timm.models.layers.helpers``, the old EfficientNet builder; 0.4.12 serves CeiT as
well), so name a folder holding that release with ``--authors-timm``: the synthetic weights are made with the
installed timm first, then that release replaces it for the authors' models. Their ResNet files need only torch
and einops:

    git clone https://github.com/joyfang1106/MRLA /tmp/MRLA
    pip install einops && pip install --no-deps --target /tmp/timm054 timm==0.5.4
    for f in efficientnet_mrla efficientnet_blocks efficientnet_builder; do   # EfficientNet is in the history
        git -C /tmp/MRLA show 87d22997:timm/models/$f.py > /tmp/timm054/timm/models/$f.py; done
    python tests/golden/make_golden.py --authors-repo /tmp/MRLA --authors-timm /tmp/timm054 \
        resnet50_mrlal resnet101_mrlal resnet50_mrlab efficientnet_mrla_b0 \
        deit_mrlal_tiny_patch16_224 deit_mrlal_small_patch16_224 deit_mrlab_tiny_patch16_224 \
        ceit_mrla_tiny_patch16_224

Their CeiT file exists only in the repository's history; it is read from there with ``git show`` (so
``--authors-repo`` may also be a bare mirror for it).

Each model gets the deterministic weights of ``synthetic_checkpoints.synthetic_state_dict`` (loaded
strictly, so every key of the authors' model is covered) and the input of ``golden_input``; the file
``<name>.safetensors`` stores the eval-mode logits and the train-mode logits (batch statistics, drop path
switched off). For a model without a reference key list (EfficientNet) the list is recorded from the
authors' model into ``keys/``.
"""
import argparse
import importlib
import subprocess
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from synthetic_checkpoints import GOLDEN_DIR, KEY_DIR, golden_input, synthetic_state_dict  # noqa: E402

# authors' model name -> (folder of their repo to import from, module, constructor)
AUTHORS_MODELS = {
    'resnet50_mrlal': ('resnet', 'models.resnet_mrla_light', 'resnet50_mrlal'),
    'resnet101_mrlal': ('resnet', 'models.resnet_mrla_light', 'resnet101_mrlal'),
    'resnet50_mrlab': ('resnet', 'models.resnet_mrla_base', 'resnet50_mrlab'),
    'deit_mrlal_tiny_patch16_224': ('deit', 'deit_mrla_light', 'deit_mrlal_tiny_patch16_224'),
    'deit_mrlal_small_patch16_224': ('deit', 'deit_mrla_light', 'deit_mrlal_small_patch16_224'),
    'deit_mrlab_tiny_patch16_224': ('deit', 'deit_mrla_base', 'deit_mrlab_tiny_patch16_224'),
    'efficientnet_mrla_b0': (None, 'timm.models.efficientnet_mrla', 'efficientnet_mrla_b0'),
    'ceit_mrla_tiny_patch16_224': ('2915affe:ceit', 'ceit_mrla', 'ceit_mrla_tiny_patch16_224'),
}


def import_from_history(authors_repo: Path, revision_folder: str, module_name: str) -> types.ModuleType:
    """Import ``<folder>/<module>.py`` as it was at a commit (``revision_folder`` is ``commit:folder``)."""
    source = subprocess.run(['git', '-C', str(authors_repo), 'show', f'{revision_folder}/{module_name}.py'],
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType(module_name)
    module.__file__ = f'{authors_repo}/{revision_folder}/{module_name}.py'
    sys.modules[module_name] = module  # before running it: timm's register_model looks the module up
    exec(compile(source, module.__file__, 'exec'), module.__dict__)
    return module


def build(name: str, authors_repo: Path) -> torch.nn.Module:
    folder, module_name, fn_name = AUTHORS_MODELS[name]
    if folder is not None and ':' in folder:
        return getattr(import_from_history(authors_repo, folder, module_name), fn_name)()
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


def write_key_list(name: str, state_dict) -> None:
    rows = [f'# state_dict of the authors\' {name} (key, shape, dtype), recorded by make_golden.py']
    for key, value in state_dict.items():
        shape = 'x'.join(str(d) for d in value.shape) or 'scalar'
        rows.append(f'{key}\t{shape}\t{str(value.dtype).replace("torch.", "")}')
    (KEY_DIR / f'{name}.tsv').write_text('\n'.join(rows) + '\n')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('names', nargs='+', choices=sorted(AUTHORS_MODELS))
    parser.add_argument('--authors-repo', type=Path, required=True, help='checkout of github.com/joyfang1106/MRLA')
    parser.add_argument('--authors-timm', type=Path, help='folder holding the timm release the authors wrote for')
    args = parser.parse_args()
    if args.authors_timm is not None:  # this project's modules keep the installed timm they were imported with
        for module in [m for m in sys.modules if m == 'timm' or m.startswith('timm.')]:
            del sys.modules[module]
        sys.path.insert(0, str(args.authors_timm))
    torch.set_grad_enabled(False)
    for name in args.names:
        model = build(name, args.authors_repo)
        if not (KEY_DIR / f'{name}.tsv').exists():  # no reference key list (EfficientNet): record the model's
            write_key_list(name, model.state_dict())
        state_dict = synthetic_state_dict(name)
        model.load_state_dict(state_dict, strict=True)
        x = golden_input()
        for module in model.modules():  # deit_mrla_base.py hard-codes drop path 0.1 in every block
            if hasattr(module, 'drop_prob'):
                module.drop_prob = 0.
        outputs = {'eval_logits': model.eval()(x).contiguous(), 'train_logits': model.train()(x).contiguous()}
        meta = {'authors_model': name, 'torch': torch.__version__}
        save_file(outputs, str(GOLDEN_DIR / f'{name}.safetensors'), metadata=meta)
        print(name, {k: tuple(v.shape) for k, v in outputs.items()}, float(outputs['eval_logits'].abs().max()))


if __name__ == '__main__':
    main()
