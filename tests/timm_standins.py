"""STAND-INS for timm's own Hub repositories (``timm/<base>.<tag>``), for tests without a network.

The warm-start tags load timm's real ImageNet weights from ``timm/...`` repositories. The tests and timm's
suite (``tests/timm_suite.sh``) cannot download those, so they lay out stand-ins in a Hugging Face cache:
repositories of the same name whose ``model.safetensors`` holds RANDOM weights of the base architecture in
timm's layout (what ``timm.create_model(base).state_dict()`` holds; BatchNorm statistics made non-trivial),
with a README.md that says they are stand-ins. They are never real weights and never leave the test cache.

    python tests/timm_standins.py --out CACHE_DIR [timm names with tags]   (default: every warm start's base)
"""
import argparse
import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Iterable, List

import timm
import torch
from timm.layers import LayerScale
from timm.models import save_for_hf
from timm.models.convnext import ConvNeXtBlock

from timm_mrla.hub.cache import add_to_cache

STANDIN_README = ('# STAND-IN for {repo_id}\n\nRandom weights of `{arch}` in timm\'s layout, made by the timm-mrla '
                  'tests in place of timm\'s real file; not trained, not timm\'s.\n')


# small configurations of the MRLA models that extend a timm variant of a family tested at full size: what their
# tests check is that each base's own arguments are mirrored, which a shallow model shows as well as a full one.
# ConvNeXt's, in a few blocks with widths of whole 32-channel heads: its branch is the CNN one, tested at full size in
# the ResNets
SMALL_CONFIGS = {
    **{name: dict(layers=(1, 1, 1, 1)) for name in ('resnet50d_mrla', 'resnet101d_mrla', 'seresnet50_mrla',
                                                     'resnext50_32x4d_mrla', 'wide_resnet50_2_mrla')},
    **{name: dict(depth=2) for name in ('vit_small_patch16_224_mrla', 'vit_base_patch16_224_mrla',
                                        'deit3_small_patch16_224_mrla')},
    **{name: dict(depths=(1, 1, 2, 1), dims=(32, 64, 96, 128)) for name in ('convnext_tiny_mrla', 'convnext_small_mrla',
                                                                          'convnext_base_mrla')},
}


def standin_model(arch: str, **kwargs) -> torch.nn.Module:
    """Random weights of timm's ``arch`` (built with ``kwargs``; the same on every call), BatchNorm statistics and
    LayerScale made non-trivial."""
    torch.manual_seed(zlib.crc32(arch.encode()))
    model = timm.create_model(arch, **kwargs).eval()
    for module in model.modules():  # trained-looking statistics, so the norms' running values matter
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
        if isinstance(module, LayerScale):  # trained gammas are far from their 1e-6 init
            module.gamma.data.uniform_(0.1, 1.0)
        if isinstance(module, ConvNeXtBlock) and module.gamma is not None:  # ConvNeXt's LayerScale, a bare parameter
            module.gamma.data.uniform_(0.1, 1.0)
    return model


def standin_repo_id(base_name: str) -> str:
    return timm.models.get_pretrained_cfg(base_name).hf_hub_id


def write_standin_folder(out_dir: Path, base_name: str, model: torch.nn.Module) -> Path:
    """The files of the stand-in repository of timm's ``base_name``, holding ``model``'s weights."""
    save_for_hf(model, out_dir, safe_serialization=True)
    (out_dir / 'README.md').write_text(STANDIN_README.format(repo_id=standin_repo_id(base_name),
                                                             arch=base_name.split('.')[0]))
    return out_dir


def add_standin(cache_dir: Path, base_name: str, model: torch.nn.Module) -> str:
    """Lay out ``model``'s weights in ``cache_dir`` as the stand-in of timm's ``base_name``; returns the repo id."""
    with tempfile.TemporaryDirectory() as tmp:
        add_to_cache(write_standin_folder(Path(tmp), base_name, model), standin_repo_id(base_name), cache_dir)
    return standin_repo_id(base_name)


def add_standins(cache_dir: Path, base_names: Iterable[str]) -> List[str]:
    """Lay out a stand-in for each ``arch.tag`` in the Hugging Face cache ``cache_dir``; tags of one architecture
    share one file (hard links). Returns the repository ids."""
    cache_dir = Path(cache_dir)
    done, first_of_arch = [], {}
    for base_name in dict.fromkeys(base_names):
        repo_id, arch = standin_repo_id(base_name), base_name.split('.')[0]
        repo_cache = cache_dir / ('models--' + repo_id.replace('/', '--'))
        if arch in first_of_arch:
            shutil.rmtree(repo_cache, ignore_errors=True)
            shutil.copytree(first_of_arch[arch], repo_cache, symlinks=True, copy_function=os.link)
        else:
            add_standin(cache_dir, base_name, standin_model(arch))
            first_of_arch[arch] = repo_cache
        done.append(repo_id)
    return done


def warm_start_bases() -> List[str]:
    import timm_mrla  # noqa: F401  registers the warm starts
    from timm_mrla.hub.zoo import warm_starts
    from timm_mrla.models import BASE_MODELS
    return [w.base for w in warm_starts(BASE_MODELS)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, required=True, help='Hugging Face cache folder (HF_HUB_CACHE)')
    parser.add_argument('names', nargs='*', help="timm names with tags (default: every warm start's base)")
    args = parser.parse_args(argv)
    repos = add_standins(args.out, args.names or warm_start_bases())
    print(f'laid out {len(repos)} stand-in repositories (random weights) in {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
