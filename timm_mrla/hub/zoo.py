"""The model zoo: one entry per published weight, read from ``manifest.json`` (shipped in this package).

The manifest is the single source of truth: the model families turn its entries into timm pretrained tags
with ``pretrained_cfgs``, and ``timm-mrla zoo sync`` writes ``MODEL_CARDS.md`` from it. Every model also
gets warm-start tags (``warm_starts``) that load timm's own weights of the model it extends.

The entries live in the manifest's Hub organisation (``hub_org``); set ``TIMM_MRLA_HUB_ORG`` before
importing ``timm_mrla`` to take them from a mirror or a fork instead (the repository names and revisions
stay).
"""
import functools
import json
import os
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

HUB_ORG_ENV = 'TIMM_MRLA_HUB_ORG'
WEIGHTS_FILE = 'model.safetensors'
MANIFEST_PATH = Path(str(files(__package__) / 'manifest.json'))

__all__ = ['HUB_ORG_ENV', 'WEIGHTS_FILE', 'MANIFEST_PATH', 'ManifestError', 'Metric', 'ZooWeight', 'WarmStart',
           'hub_org', 'parse_manifest', 'zoo', 'find_weight', 'warm_starts', 'warm_start_named', 'pretrained_cfgs',
           'architecture_cfg']


class ManifestError(ValueError):
    """A zoo manifest that cannot be read or is incomplete, naming the file and the entry."""


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


@functools.lru_cache(maxsize=None)
def _manifest() -> Dict[str, Any]:
    return read_manifest(MANIFEST_PATH)


def default_hub_org() -> str:
    return _manifest()['hub_org']


def hub_org() -> str:
    """The organisation the zoo is fetched from: ``TIMM_MRLA_HUB_ORG``, else the manifest's."""
    return os.environ.get(HUB_ORG_ENV) or default_hub_org()


_REQUIRED = ('model', 'tag', 'repo', 'revision', 'sha256', 'dataset', 'license', 'summary', 'provenance')


def parse_manifest(data: Dict[str, Any], source: str = 'the manifest') -> List[ZooWeight]:
    """Validate the manifest's ``weights`` entries and return them."""
    if not data.get('hub_org'):
        raise ManifestError(f'{source}: no hub_org')
    weights = []
    for i, entry in enumerate(data.get('weights', [])):
        if not entry.get('sha256') and not entry.get('revision'):
            continue  # a draft, being published (hub/README.md): no tag until its folder is written
        missing = [k for k in _REQUIRED if not entry.get(k)]
        if missing:
            raise ManifestError(f'{source}: weight #{i} ({entry.get("model")}.{entry.get("tag")}) lacks '
                                f'{", ".join(missing)}')
        if len(entry['revision']) != 40 or len(entry['sha256']) != 64:
            raise ManifestError(f'{source}: weight #{i} needs a full 40-hex revision and a 64-hex sha256')
        if not isinstance(entry.get('default', True), bool):
            raise ManifestError(f'{source}: weight #{i} has "default": {entry["default"]!r}; use true or false')
        metrics = tuple(Metric(**m) for m in entry.get('metrics', []))
        known = {k: entry[k] for k in ZooWeight.__dataclass_fields__ if k in entry and k != 'metrics'}
        weights.append(ZooWeight(**known, metrics=metrics))
    names = [w.name for w in weights]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise ManifestError(f'{source}: weights listed twice: {", ".join(sorted(duplicated))}')
    return weights


def read_manifest(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f'{path} is not a JSON manifest: {e}') from e
    if not isinstance(data, dict):
        raise ManifestError(f'{path} holds a JSON {type(data).__name__}, not a manifest object')
    return data


def zoo() -> List[ZooWeight]:
    """The published weights (not the drafts)."""
    return parse_manifest(_manifest(), str(MANIFEST_PATH))


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


# Warm starts come from these timm pretrained tags of a base model besides its default one: the ResNet recipes
# most used as fine-tuning starts (ResNet strikes back A1, torchvision's original and its improved recipe), and
# Meta's ImageNet-1k-only ConvNeXt (timm's default ConvNeXt-T/S saw ImageNet-12k first)
WARM_START_EXTRA_TAGS = ('a1_in1k', 'tv_in1k', 'tv2_in1k', 'fb_in1k')
WARM_START_SUFFIX = '_warmstart'
# what a warm start takes from its base tag: the weights' data config (and the pool size at that input), classes
# and license
WARM_START_DATA_FIELDS = ('num_classes', 'input_size', 'pool_size', 'test_input_size', 'min_input_size',
                          'fixed_input_size', 'interpolation', 'crop_pct', 'test_crop_pct', 'crop_mode', 'mean', 'std',
                          'label_names', 'label_descriptions', 'license', 'hf_hub_filename')


@dataclass(frozen=True)
class WarmStart:
    """A pretrained tag that loads timm's own weights of the base model, with every MRLA branch switched off."""
    model: str
    base: str  # timm name with its tag, e.g. 'resnet50.a1_in1k'

    @property
    def tag(self) -> str:
        return self.base.split('.', 1)[1] + WARM_START_SUFFIX

    @property
    def name(self) -> str:
        return f'{self.model}.{self.tag}'

    def note(self) -> str:
        return (f"Warm start: MRLA branches untrained; computes exactly timm's {self.base}; for fine-tuning. "
                f"The weights are timm's own file for {self.base}, downloaded from its Hub repository as timm "
                f"downloads it (latest revision, no sha256 of timm-mrla's: the file is timm's, not ours).")


def warm_starts(base_models: Dict[str, str]) -> List[WarmStart]:
    """The warm starts of MRLA models (name -> timm base architecture): from each base's default pretrained tag
    and its ``WARM_START_EXTRA_TAGS``, where timm hosts them on the Hub; a zoo weight of the same name wins."""
    import timm
    published = {w.name for w in zoo()}
    out = []
    for model, base in base_models.items():
        default = timm.models.get_pretrained_cfg(base)
        available = timm.models.get_arch_pretrained_cfgs(base)
        for tag in [default.tag] + [t for t in WARM_START_EXTRA_TAGS if t != default.tag]:
            cfg = available.get(f'{base}.{tag}')
            warm_start = WarmStart(model, f'{base}.{tag}')
            if cfg is not None and cfg.hf_hub_id and warm_start.name not in published:
                out.append(warm_start)
    return out


def warm_start_named(name: str) -> Optional[WarmStart]:
    """The warm start registered as ``model.tag``, if that is one."""
    return _WARM_STARTS.get(name)


_WARM_STARTS: Dict[str, WarmStart] = {}


def _warm_start_cfg(arch_cfg: Dict[str, Any], warm_start: WarmStart) -> Dict[str, Any]:
    import timm
    base = timm.models.get_pretrained_cfg(warm_start.base).to_dict()
    data = {k: base[k] for k in WARM_START_DATA_FIELDS if base.get(k) is not None}
    return dict(arch_cfg, **data, hf_hub_id=base['hf_hub_id'], notes=(warm_start.note(),))


def pretrained_cfgs(base_cfgs: Dict[str, Dict[str, Any]], base_models: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
    """``default_cfgs`` entries for a model family (architecture configs, each model's timm base architecture,
    where it has one):
    each model's published weights and its warm starts (``warm_starts``) as pretrained tags. The untagged name
    loads the first published default weight (see ``ZooWeight.default``), else the warm start from the base
    model's default tag; weights for another input or task come last and load only by their tag."""
    weights = zoo()
    cfgs: Dict[str, Dict[str, Any]] = {}
    _ARCHITECTURE_CFGS.update(base_cfgs)
    for warm_start in warm_starts(base_models):
        _WARM_STARTS[warm_start.name] = warm_start
    for model, cfg in base_cfgs.items():
        published = [w for w in weights if w.model == model]
        for w in [w for w in published if w.default]:
            cfgs[w.name] = _weight_cfg(cfg, w)
        for warm_start in _WARM_STARTS.values():
            if warm_start.model == model:
                cfgs[warm_start.name] = _warm_start_cfg(cfg, warm_start)
        for w in [w for w in published if not w.default]:
            cfgs[w.name] = _weight_cfg(cfg, w)
        if not any(name.split('.')[0] == model for name in cfgs):  # no weights, no base model: architecture only
            cfgs[model] = dict(cfg)
    return cfgs


def _weight_cfg(arch_cfg: Dict[str, Any], weight: ZooWeight) -> Dict[str, Any]:
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in weight.pretrained_cfg.items()}
    return dict(arch_cfg, hf_hub_id=weight.hf_hub_id(), license=weight.license, notes=(weight.summary,), **overrides)


def weights_for(names: Iterable[str]) -> List[ZooWeight]:
    """Zoo entries by ``model.tag`` name, in the given order."""
    by_name = {w.name: w for w in zoo()}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KeyError(f'not in the zoo: {", ".join(unknown)}; published: {", ".join(by_name) or "none"}')
    return [by_name[n] for n in names]
