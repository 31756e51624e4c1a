"""``timm-mrla zoo sync``: derive the package's manifest copy and MODEL_CARDS.md from hub/manifest.json."""
import pprint
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .cards import render_model_cards
from .zoo import ZooWeight, parse_manifest, read_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST_PATH = REPO_ROOT / 'hub' / 'manifest.json'
PACKAGE_COPY = Path(__file__).resolve().parent / '_manifest.py'
MODEL_CARDS_PATH = REPO_ROOT / 'MODEL_CARDS.md'

__all__ = ['MANIFEST_PATH', 'render_package_copy', 'sync']


def render_package_copy(data: dict) -> str:
    return ('"""Generated from hub/manifest.json by `timm-mrla zoo sync`; edit the manifest, not this file."""\n\n'
            f'MANIFEST = {pprint.pformat(data, width=110, sort_dicts=False)}\n')


def _shapes(weights: Sequence[ZooWeight]) -> Dict[str, Tuple[int, Sequence[int]]]:
    import timm
    import timm_mrla  # noqa: F401  registers the architectures
    shapes = {}
    for w in weights:
        cfg = dict(timm.models.get_pretrained_cfg(w.model).to_dict(), **w.pretrained_cfg)
        shapes[w.name] = (cfg['num_classes'], tuple(cfg['input_size']))
    return shapes


def sync(manifest: Path = MANIFEST_PATH, package_copy: Path = PACKAGE_COPY, model_cards: Path = MODEL_CARDS_PATH,
         check: bool = False) -> List[Path]:
    """Write (or with ``check`` only compare) the derived files; returns those that were out of date."""
    data = read_manifest(manifest)
    weights = parse_manifest(data, str(manifest))
    wanted = {
        package_copy: render_package_copy(data),
        model_cards: render_model_cards(weights, _shapes(weights), data['hub_org']),
    }
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if not check:
        for path in stale:
            path.write_text(wanted[path])
    return stale


def main(check: bool, manifest: Optional[Path] = None) -> int:
    stale = sync(manifest or MANIFEST_PATH, check=check)
    for path in stale:
        print(f'{"out of date" if check else "wrote"}: {path}')
    if not stale:
        print('the package manifest copy and MODEL_CARDS.md match hub/manifest.json')
    return 1 if check and stale else 0
