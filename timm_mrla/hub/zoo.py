"""The model zoo: one entry per published weight, read from ``hub/manifest.json``.

The manifest is the single source of truth. ``timm-mrla zoo sync`` copies it into the package
(``_manifest.py``, so an installed package needs no data files) and writes ``MODEL_CARDS.md``; the model
families turn its entries into timm pretrained tags with ``pretrained_cfgs``.

The entries live in the manifest's Hub organisation (``hub_org``); set ``TIMM_MRLA_HUB_ORG`` before
importing ``timm_mrla`` to take them from a mirror or a fork instead (the repository names and revisions
stay).
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

HUB_ORG_ENV = 'TIMM_MRLA_HUB_ORG'
WEIGHTS_FILE = 'model.safetensors'

__all__ = ['HUB_ORG_ENV', 'WEIGHTS_FILE', 'Metric', 'ZooWeight', 'hub_org', 'parse_manifest',
           'zoo', 'find_weight', 'pretrained_cfgs', 'architecture_cfg']


@dataclass(frozen=True)
class Metric:
    """A measured number and the command that measured it."""
    name: str
    value: float
    dataset: str
    split: str
    command: str
    notes: str = ''


@dataclass(frozen=True)
class ZooWeight:
    """One published weight: where it is, what it is and how it was made."""
    model: str
    tag: str
    repo: str  # repository name inside the Hub organisation
    revision: str  # commit that holds these exact files
    sha256: str  # of model.safetensors
    dataset: str
    license: str
    summary: str
    provenance: str
    metrics: Tuple[Metric, ...] = ()
    pretrained_cfg: Dict[str, Any] = field(default_factory=dict)  # overrides of the model's default cfg
    base_model: str = ''
    # whether the untagged name loads these weights; False for weights of another input or task (Fashion-MNIST's
    # 1x28x28, 10 classes), so that ``timm.create_model(model)`` keeps the architecture's ImageNet config
    default: bool = True

    @property
    def name(self) -> str:
        return f'{self.model}.{self.tag}'

    def repo_id(self, org: Optional[str] = None) -> str:
        """``org/repo``, in ``org`` or else the organisation in use (see ``hub_org``)."""
        return f'{org or hub_org()}/{self.repo}'

    def hf_hub_id(self, org: Optional[str] = None) -> str:
        """timm's ``hf_hub_id``: repository pinned to the revision."""
        return f'{self.repo_id(org)}@{self.revision}'


def default_hub_org() -> str:
    from ._manifest import MANIFEST
    return MANIFEST['hub_org']


def hub_org() -> str:
    """The organisation the zoo is fetched from: ``TIMM_MRLA_HUB_ORG``, else the manifest's."""
    return os.environ.get(HUB_ORG_ENV) or default_hub_org()


_REQUIRED = ('model', 'tag', 'repo', 'revision', 'sha256', 'dataset', 'license', 'summary', 'provenance')


def parse_manifest(data: Dict[str, Any], source: str = 'the manifest') -> List[ZooWeight]:
    """Validate the manifest's ``weights`` entries and return them."""
    if not data.get('hub_org'):
        raise ValueError(f'{source}: no hub_org')
    weights = []
    for i, entry in enumerate(data.get('weights', [])):
        missing = [k for k in _REQUIRED if not entry.get(k)]
        if missing:
            raise ValueError(f'{source}: weight #{i} ({entry.get("model")}.{entry.get("tag")}) lacks {", ".join(missing)}')
        if len(entry['revision']) != 40 or len(entry['sha256']) != 64:
            raise ValueError(f'{source}: weight #{i} needs a full 40-hex revision and a 64-hex sha256')
        if not isinstance(entry.get('default', True), bool):
            raise ValueError(f'{source}: weight #{i} has "default": {entry["default"]!r}; use true or false')
        metrics = tuple(Metric(**m) for m in entry.get('metrics', []))
        known = {k: entry[k] for k in ZooWeight.__dataclass_fields__ if k in entry and k != 'metrics'}
        weights.append(ZooWeight(**known, metrics=metrics))
    names = [w.name for w in weights]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise ValueError(f'{source}: weights listed twice: {", ".join(sorted(duplicated))}')
    return weights


def read_manifest(path: Path) -> Dict[str, Any]:
    return json.loads(Path(path).read_text())


def zoo() -> List[ZooWeight]:
    """The published weights, from the manifest copy inside the package."""
    from ._manifest import MANIFEST
    return parse_manifest(MANIFEST, 'timm_mrla/hub/_manifest.py')


def find_weight(repo_id: str, revision: Optional[str]) -> Optional[ZooWeight]:
    """The zoo entry published as ``repo_id`` (any organisation) at ``revision``, if there is one."""
    name = repo_id.split('/')[-1]
    for weight in zoo():
        if weight.repo == name and revision == weight.revision:
            return weight
    return None


_ARCHITECTURE_CFGS: Dict[str, Dict[str, Any]] = {}


def architecture_cfg(model: str) -> Dict[str, Any]:
    """The config of architecture ``model`` before any published weight's overrides (for new weights' folders)."""
    if model not in _ARCHITECTURE_CFGS:
        raise ValueError(f'{model!r} is not a timm-mrla model; the models are: {", ".join(sorted(_ARCHITECTURE_CFGS))}')
    return dict(_ARCHITECTURE_CFGS[model])


def pretrained_cfgs(base_cfgs: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """``default_cfgs`` entries for a model family: each model's published weights as pretrained tags, the
    first default one (see ``ZooWeight.default``) the model's default; the untagged config stays the default
    where no such weight is published."""
    weights = zoo()
    cfgs: Dict[str, Dict[str, Any]] = {}
    _ARCHITECTURE_CFGS.update(base_cfgs)
    for model, cfg in base_cfgs.items():
        published = sorted((w for w in weights if w.model == model), key=lambda w: not w.default)
        for w in published:
            overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in w.pretrained_cfg.items()}
            cfgs[w.name] = dict(cfg, hf_hub_id=w.hf_hub_id(), license=w.license, **overrides)
        if not published:
            cfgs[model] = cfg
        elif not published[0].default:
            # timm's explicit-default mark, after the tags: generate_default_cfgs puts the untagged config first
            cfgs[f'{model}.*'] = cfg
    return cfgs


def weights_for(names: Iterable[str]) -> List[ZooWeight]:
    """Zoo entries by ``model.tag`` name, in the given order."""
    by_name = {w.name: w for w in zoo()}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KeyError(f'not in the zoo: {", ".join(unknown)}; published: {", ".join(by_name) or "none"}')
    return [by_name[n] for n in names]
