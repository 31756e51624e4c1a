"""``timm-mrla zoo folder``: the Hub-ready folder of a manifest entry, from a training checkpoint or a warm start.

To publish a weight: add its entry to timm_mrla/hub/manifest.json with an empty ``sha256`` and ``revision``, run
``timm-mrla zoo folder NAME --checkpoint CKPT --out DIR`` (or ``--warmstart SOURCE``), copy the sha256 and
the commit it prints into the entry, ``timm-mrla zoo sync``, then ``timm-mrla push DIR --repo ORG/REPO``
(and set the revision to the commit push reports, if the Hub made a different one).
"""
from pathlib import Path
from typing import Optional, Tuple

import timm

from .cache import git_commit_id
from .cards import card_for_weight
from .download import sha256_of
from .folder import FOLDER_FILES, FolderError, check_writable, write_folder
from .zoo import MANIFEST_PATH, Metric, ZooWeight, architecture_cfg, read_manifest

__all__ = ['draft_weight', 'write_zoo_folder']


def draft_weight(name: str, manifest: Path = MANIFEST_PATH) -> ZooWeight:
    """The manifest's entry ``model.tag``, which may still lack its sha256 and revision."""
    for entry in read_manifest(manifest).get('weights', []):
        if f"{entry['model']}.{entry['tag']}" == name:
            fields = {k: v for k, v in entry.items() if k in ZooWeight.__dataclass_fields__ and k != 'metrics'}
            fields.setdefault('sha256', '')
            fields.setdefault('revision', '')
            return ZooWeight(**fields, metrics=tuple(Metric(**m) for m in entry.get('metrics', [])))
    raise FolderError(f'{manifest} has no entry {name}; add it (sha256 and revision may stay empty) first')


def write_zoo_folder(name: str, out_dir: Path, checkpoint: Optional[Path] = None, warmstart: Optional[str] = None,
                     use_ema: bool = False, force: bool = False, manifest: Path = MANIFEST_PATH) -> Tuple[str, str]:
    """Write the folder of zoo weight ``name``; returns its model.safetensors sha256 and its commit id."""
    from ..convert import convert_state_dict, load_checkpoint, select_state_dict
    from ..warmstart import checked_warm_start
    if (checkpoint is None) == (warmstart is None):
        raise FolderError('give exactly one of --checkpoint and --warmstart')
    weight = draft_weight(name, manifest)
    out_dir = Path(out_dir)
    check_writable(out_dir, force)
    try:
        architecture = timm.models.PretrainedCfg(**architecture_cfg(weight.model)).to_dict()
    except ValueError as e:
        raise FolderError(f'{manifest}: entry {name}: {e}') from e
    cfg = dict(architecture, **weight.pretrained_cfg, license=weight.license)
    if checkpoint is not None:
        state_dict, _ = select_state_dict(load_checkpoint(checkpoint), use_ema=use_ema)
        model = convert_state_dict(weight.model, state_dict)
    else:
        model, check = checked_warm_start(warmstart, weight.model)
        print(f'warm start: {check}')
    # from the manifest alone, whatever tags the registry holds
    model.pretrained_cfg = dict(architecture=weight.model, **cfg, tag=weight.tag)
    model.default_cfg = model.pretrained_cfg
    card = card_for_weight(weight, model.num_classes, cfg['input_size'])
    write_folder(model, out_dir, card, force=force)
    return sha256_of(out_dir / 'model.safetensors'), git_commit_id({f: (out_dir / f).read_bytes() for f in FOLDER_FILES})
