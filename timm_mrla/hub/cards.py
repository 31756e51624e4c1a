"""Model cards: the ``README.md`` of a Hub-ready folder, and the zoo's ``MODEL_CARDS.md``.

A card is YAML front matter that the Hub reads (``library_name: timm``, ``license``, ``tags``,
``datasets``, ``pipeline_tag``, results as ``model-index``, and the ``weights_sha256`` of the folder's
``model.safetensors``) and a body a person reads: what the model is, how it was made, its numbers with
the commands that measured them, how to use it and what to cite.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .zoo import WARM_START_SUFFIX, Metric, WarmStart, ZooWeight

__all__ = ['CARD_FILE', 'CardInfo', 'render_card', 'card_for_weight', 'read_card', 'card_problems', 'render_model_cards']

PAPER = 'Cross-Layer Retrospective Retrieving via Layer Attention'
CITATION = """@inproceedings{fang2023mrla,
  title     = {Cross-Layer Retrospective Retrieving via Layer Attention},
  author    = {Fang, Yanwen and Cai, Yuxi and Chen, Jintai and Zhao, Jingyu and Tian, Guangjian and Li, Guodong},
  booktitle = {The Eleventh International Conference on Learning Representations (ICLR)},
  year      = {2023},
  url       = {https://arxiv.org/abs/2302.03985}
}"""
CARD_FILE = 'README.md'  # a Hub repository's model card
REQUIRED_METADATA = ('library_name', 'license', 'tags', 'datasets', 'pipeline_tag', 'weights_sha256')
# dataset ids on the Hub and names for people
DATASETS = {
    'imagenet-1k': 'ImageNet-1k',
    'fashion_mnist': 'Fashion-MNIST',
}


@dataclass
class CardInfo:
    """What a card says about one set of weights."""
    name: str  # timm name: 'resnet50_mrla' or 'resnet50_mrla.tag'
    summary: str
    provenance: str
    dataset: str
    license: str
    weights_sha256: str
    num_classes: int
    input_size: Sequence[int]
    metrics: Tuple[Metric, ...] = ()
    base_model: str = ''
    load_name: str = ''  # what to pass to timm.create_model; the timm name when empty
    extra: Dict[str, Any] = field(default_factory=dict)


def _metadata(info: CardInfo) -> ModelCardData:
    results = [  # accuracies on a named dataset go to the Hub's model-index; other checks stay in the body
        EvalResult(task_type='image-classification', dataset_type=m.dataset, dataset_name=DATASETS[m.dataset],
                   dataset_split=m.split, metric_type='accuracy', metric_name=m.name, metric_value=m.value)
        for m in info.metrics if m.dataset in DATASETS]
    extra = dict(base_model=info.base_model) if info.base_model else {}
    return ModelCardData(
        library_name='timm', license=info.license, pipeline_tag='image-classification',
        tags=['image-classification', 'timm', 'timm-mrla', 'mrla', 'layer-attention'],
        datasets=[info.dataset], model_name=info.name, eval_results=results or None,
        weights_sha256=info.weights_sha256, **extra, **info.extra)


def _body(info: CardInfo, heading: str = '#') -> str:
    load_name = info.load_name or info.name
    lines = [f'{heading} {info.name}', '', info.summary, '',
             f'{heading}# Model details', '',
             f'- Architecture: `{info.name.split(".")[0]}` from [timm-mrla](https://github.com/timm-mrla/timm-mrla), '
             f'multi-head recurrent layer attention (MRLA, [arXiv:2302.03985](https://arxiv.org/abs/2302.03985)) '
             f'on a timm model.',
             f'- Classes: {info.num_classes}; input size: {" x ".join(str(s) for s in info.input_size)}',
             f'- Dataset: {DATASETS.get(info.dataset, info.dataset)}; license: {info.license}',
             f'- `model.safetensors` sha256: `{info.weights_sha256}`', '',
             f'{heading}# How it was made', '', info.provenance, '']
    if info.metrics:
        lines += [f'{heading}# Results', '', '| metric | value | dataset | split | measured with |', '|---|---|---|---|---|']
        lines += [f'| {m.name} | {m.value:g} | {DATASETS.get(m.dataset, m.dataset)} | {m.split} | `{m.command}` |'
                  for m in info.metrics]
        lines += [''] + [f'{m.name}: {m.notes}' for m in info.metrics if m.notes] + ['']
    lines += [f'{heading}# Usage', '', '```python', 'import timm', 'import timm_mrla  # registers the MRLA models with timm',
              '', f"model = timm.create_model('{load_name}', pretrained=True).eval()",
              'config = timm.data.resolve_data_config(model=model)',
              'transform = timm.data.create_transform(**config)', '```', '',
              f'{heading}# Citation', '', '```bibtex', CITATION, '```', '']
    return '\n'.join(lines)


def render_card(info: CardInfo) -> str:
    """The README.md of a Hub-ready folder."""
    return f'---\n{_metadata(info).to_yaml()}\n---\n\n{_body(info)}'


def card_for_weight(weight: ZooWeight, num_classes: int, input_size: Sequence[int]) -> CardInfo:
    return CardInfo(
        name=weight.name, summary=weight.summary, provenance=weight.provenance, dataset=weight.dataset,
        license=weight.license, weights_sha256=weight.sha256, num_classes=num_classes, input_size=input_size,
        metrics=weight.metrics, base_model=weight.base_model)


def read_card(path: Path) -> Tuple[Dict[str, Any], str]:
    """Front matter (as a dict) and body of a README.md."""
    card = ModelCard.load(str(path), ignore_metadata_errors=True)
    return card.data.to_dict(), card.text


def card_problems(metadata: Dict[str, Any], body: str) -> List[str]:
    """What a card lacks for the Hub and for its readers; empty when it is complete."""
    problems = [f'front matter has no {key}' for key in REQUIRED_METADATA if not metadata.get(key)]
    if metadata.get('library_name') not in (None, 'timm'):
        problems.append(f"library_name is {metadata['library_name']!r}, not 'timm'")
    if metadata.get('pipeline_tag') not in (None, 'image-classification'):
        problems.append(f"pipeline_tag is {metadata['pipeline_tag']!r}, not 'image-classification'")
    for section in ('## How it was made', '## Usage', '## Citation'):
        if section not in body:
            problems.append(f'body has no "{section[3:]}" section')
    return problems


def _warm_start_section(warm_starts: Sequence[WarmStart]) -> List[str]:
    import timm
    lines = ['## Warm starts from timm\'s own weights', '',
             f'Every model also has warm-start tags, named after a pretrained tag of the timm model it extends with '
             f'`{WARM_START_SUFFIX}` appended. Each loads timm\'s own `model.safetensors` of that tag from timm\'s '
             f'Hub repository, through timm and huggingface_hub as timm itself does (the Hub cache, `HF_HUB_OFFLINE` '
             f'and `HF_ENDPOINT` apply), and switches every MRLA branch off (its input norms at zero; the MRLA '
             f'layers\' own weights from a hash-based initialisation). **MRLA branches untrained; computes exactly '
             f'timm\'s X; for fine-tuning**, X being the tag below: fine-tuning grows the branches from zero. '
             f'Loading one logs a line saying so; the config (input size, crop, interpolation, mean/std, classes, '
             f'license) is the timm tag\'s.', '',
             'The files are timm\'s, not this project\'s: timm-mrla records no sha256 and pins no revision for them; '
             'they are downloaded at the repository\'s latest revision, exactly as timm downloads them for its own '
             'tag, so the warm start keeps computing what timm\'s tag computes. No MRLA accuracy was measured for '
             'them.', '',
             'The untagged name (`timm.create_model(\'resnet50_mrla\', pretrained=True)`) loads the model\'s first '
             'published zoo weight above when it has one (`tf_efficientnet_lite0_mrla`: '
             '`tf_efficientnet_lite0_mrla.in1k_warmstart`, a published warm start with its sha256), otherwise the '
             'warm start from the base model\'s default timm tag (the first row of each model below).', '',
             '| tag | computes exactly timm\'s | weights from | license | input | crop | interpolation |',
             '|---|---|---|---|---|---|---|']
    for w in warm_starts:
        cfg = timm.models.get_pretrained_cfg(w.name)
        lines.append(f'| `{w.name}` | `{w.base}` | `{cfg.hf_hub_id}` | {cfg.license} | '
                     f'{"x".join(str(s) for s in cfg.input_size)} | {cfg.crop_pct} | {cfg.interpolation} |')
    return lines + ['']


def _untrained_section(names: Sequence[str]) -> List[str]:
    return ['## Architectures without pretrained weights', '',
            f'{", ".join(f"`{n}`" for n in names)}: no pretrained weights exist for these on the Hub. The authors '
            f'published none, timm has no such model whose weights a warm start could copy, and this project has '
            f'trained none, so they have no pretrained tag and `pretrained=True` raises. Create them untrained '
            f'(`timm.create_model(name)`), load a checkpoint trained with the authors\' code '
            f'(`checkpoint_path=`, or `timm-mrla convert`), and give `--random-init` to the commands that need a '
            f'model (`timm-mrla attention`).', '']


def render_model_cards(weights: Sequence[ZooWeight], shapes: Dict[str, Tuple[int, Sequence[int]]], org: str,
                       warm_starts: Sequence[WarmStart] = (), untrained: Sequence[str] = ()) -> str:
    """MODEL_CARDS.md: every published weight's card, from the manifest, the warm starts, and the architectures
    that have no weights at all."""
    lines = ['# timm-mrla model zoo', '',
             'Generated from `timm_mrla/hub/manifest.json` by `timm-mrla zoo sync`; edit the manifest, not this file. '
             'Each section is the model card published with the weights.', '']
    if not weights:
        lines += ['No weights are published yet.', '']
    lines += ['| weights | dataset | ' + 'metric | ' + 'Hub repository |', '|---|---|---|---|']
    for w in weights:
        metric = '; '.join(f'{m.name} {m.value:g} ({m.split})' for m in w.metrics) or '-'
        lines.append(f'| `{w.name}` | {DATASETS.get(w.dataset, w.dataset)} | {metric} | `{w.repo_id(org)}@{w.revision[:12]}` |')
    lines.append('')
    for w in weights:
        num_classes, input_size = shapes[w.name]
        lines.append(_body(card_for_weight(w, num_classes, input_size), heading='##'))
    if warm_starts:
        lines += _warm_start_section(warm_starts)
    if untrained:
        lines += _untrained_section(untrained)
    return '\n'.join(lines)
