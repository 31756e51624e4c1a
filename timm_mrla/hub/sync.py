"""``timm-mrla zoo sync``: write MODEL_CARDS.md from the zoo manifest (``timm_mrla/hub/manifest.json``)."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .cards import render_model_cards
from .zoo import MANIFEST_PATH, ZooWeight, parse_manifest, read_manifest, warm_starts

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CARDS_PATH = REPO_ROOT / 'MODEL_CARDS.md'

__all__ = ['sync']


def _shapes(weights: Sequence[ZooWeight]) -> Dict[str, Tuple[int, Sequence[int]]]:
    import timm
    import timm_mrla  # noqa: F401  registers the architectures
    shapes = {}
    for w in weights:
        cfg = dict(timm.models.get_pretrained_cfg(w.model).to_dict(), **w.pretrained_cfg)
        shapes[w.name] = (cfg['num_classes'], tuple(cfg['input_size']))
    return shapes


def sync(manifest: Path = MANIFEST_PATH, model_cards: Path = MODEL_CARDS_PATH, check: bool = False) -> List[Path]:
    """Write (or with ``check`` only compare) MODEL_CARDS.md; returns it if it was out of date."""
    data = read_manifest(manifest)
    weights = parse_manifest(data, str(manifest))
    import timm
    from ..models import BASE_MODELS
    untrained = [n for n in timm.list_models('*mrla*') if not timm.list_models(n, pretrained=True)]
    wanted = {model_cards: render_model_cards(weights, _shapes(weights), data['hub_org'], warm_starts(BASE_MODELS),
                                              untrained)}
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
        print(f'MODEL_CARDS.md matches {manifest or MANIFEST_PATH}')
    return 1 if check and stale else 0
