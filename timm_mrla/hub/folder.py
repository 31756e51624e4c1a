"""Hub-ready folders: ``model.safetensors``, timm's ``config.json`` and a model card ``README.md``.

``write_folder`` makes one (``timm-mrla convert`` and ``warmstart`` use it), ``verify_folder`` checks one
before it is published, ``push_folder`` publishes one with huggingface_hub.
"""
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import timm
import torch
import torch.nn as nn
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError
from timm.models import save_for_hf

from .cards import CARD_FILE, CardInfo, card_problems, read_card, render_card
from .download import sha256_of
from .zoo import WEIGHTS_FILE, zoo

__all__ = ['FolderError', 'FOLDER_FILES', 'check_creatable', 'write_folder', 'VerifyReport', 'verify_folder',
           'push_folder']

CONFIG_FILE = 'config.json'
FOLDER_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)


class FolderError(ValueError):
    """A folder that cannot be written, verified or published, with what to do about it."""


def check_creatable(folder: Path) -> None:
    """Refuse a folder that cannot be made or written into, before any slow work: its nearest existing folder
    (itself, or the one it would be made in) must be a folder and writable."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FolderError(f'cannot write {folder}: {existing} is a file, not a folder')
    if not os.access(existing, os.W_OK):  # also false for root on a read-only file system
        raise FolderError(f'cannot write {folder}: {existing} is not writable (read-only)')


def check_writable(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FolderError(f'{out_dir} exists and is not a folder')
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise FolderError(f'{out_dir} is not empty; choose another folder or pass --force to replace the model '
                          f'files in it')
    check_creatable(out_dir)


def _save_config_and_weights(model: nn.Module, folder: Path) -> None:
    """timm's ``save_for_hf``, with ``num_classes`` left out of the config's ``model_args``: transformers'
    ``TimmWrapper`` passes its own ``num_classes`` beside them (a second one is a TypeError), and timm reads the class
    count from the config's top level. ``in_chans`` and the rest stay."""
    save_for_hf(model, folder, safe_serialization=True)
    config_path = folder / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config.get('model_args', {}).pop('num_classes', None)
    config_path.write_text(json.dumps(config, indent=2))


def write_folder(model: nn.Module, out_dir: Union[str, Path], card: CardInfo, force: bool = False) -> Path:
    """Write the model's weights, config and card (``card.weights_sha256`` is filled in here).

    A non-empty ``out_dir`` is only written into with ``force``; then the files written here replace theirs
    and anything else in it is left alone. The folder is assembled beside ``out_dir`` and moved in at the
    end, so a failure never leaves a half-written folder.
    """
    out_dir = Path(out_dir)
    check_writable(out_dir, force)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.', dir=out_dir.parent))
        try:
            _save_config_and_weights(model, staging)
            card.weights_sha256 = sha256_of(staging / WEIGHTS_FILE)
            (staging / CARD_FILE).write_text(render_card(card))
            out_dir.mkdir(exist_ok=True)
            for item in staging.iterdir():
                item.replace(out_dir / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:  # named after out_dir: the staging folder's name means nothing to the user
        raise FolderError(f'cannot write {out_dir}: {e.strerror or e}') from e
    return out_dir


@dataclass
class VerifyReport:
    folder: Path
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_folder(folder: Union[str, Path]) -> VerifyReport:
    """Check a Hub-ready folder: its files, its card, its weights' sha256, and a forward pass through timm."""
    folder = Path(folder)
    report = VerifyReport(folder)
    if not folder.is_dir():
        report.problems.append(f'{folder} is not a folder')
        return report
    missing = [name for name in FOLDER_FILES if not (folder / name).is_file()]
    if missing:
        report.problems.append(f'missing {", ".join(missing)} (write the folder with `timm-mrla convert`)')
        return report

    try:
        metadata, body = read_card(folder / CARD_FILE)
    except UnicodeDecodeError as e:
        report.problems.append(f'{CARD_FILE} is not a model card: not UTF-8 text ({e.reason} at byte {e.start})')
        return report
    report.problems += [f'{CARD_FILE}: {p}' for p in card_problems(metadata, body)]
    actual = sha256_of(folder / WEIGHTS_FILE)
    if metadata.get('weights_sha256') and metadata['weights_sha256'] != actual:
        report.problems.append(f'{WEIGHTS_FILE} has sha256 {actual}, the card says {metadata["weights_sha256"]}')
    zoo_weight = next((w for w in zoo() if w.name == metadata.get('model_name')), None)
    if zoo_weight is not None:
        if zoo_weight.sha256 != actual:
            report.problems.append(f'{WEIGHTS_FILE} has sha256 {actual}, the zoo manifest lists {zoo_weight.sha256} '
                                   f'for {zoo_weight.name}')
        else:
            report.notes.append(f'weights match the zoo manifest entry {zoo_weight.name}')
    report.notes.append(f'sha256 {actual}')

    try:
        model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
        cfg = model.pretrained_cfg
        with torch.no_grad():
            out = model(torch.randn(1, *cfg['input_size']))
    except Exception as e:  # any failure to load or run is the finding
        report.problems.append(f'timm cannot load and run it: {type(e).__name__}: {e}')
        return report
    if out.shape != (1, model.num_classes) or not torch.isfinite(out).all():
        report.problems.append(f'forward pass gave {tuple(out.shape)} (finite: {bool(torch.isfinite(out).all())}), '
                               f'expected (1, {model.num_classes})')
    else:
        report.notes.append(f'loads as {cfg["architecture"]} through timm, forward pass {tuple(cfg["input_size"])} -> '
                            f'{model.num_classes} classes')
    return report


def push_folder(folder: Union[str, Path], repo_id: str, revision: Optional[str] = None, dry_run: bool = False,
                verified: bool = False, print_fn=print) -> Optional[str]:
    """Verify ``folder`` (unless the caller just did: ``verified``) and upload its files to ``repo_id`` (branch
    ``revision``, default main).

    Asks nothing: the token comes from ``HF_TOKEN``. Returns the commit id (None for a dry run).
    """
    folder = Path(folder)
    report = VerifyReport(folder) if verified else verify_folder(folder)
    if not report.ok:
        raise FolderError(f'{folder} failed verification, nothing was uploaded: ' + '; '.join(report.problems))
    target = f'{constants.ENDPOINT}/{repo_id}' + (f' (branch {revision})' if revision else '')
    if dry_run:
        print_fn(f'dry run: would upload to {target}:')
        for name in FOLDER_FILES:
            path = folder / name
            print_fn(f'  {name}  {path.stat().st_size} bytes  sha256 {sha256_of(path)}')
        return None
    token = os.environ.get('HF_TOKEN')
    if not token:
        raise FolderError('HF_TOKEN is not set: create a write token at https://huggingface.co/settings/tokens and '
                          'export HF_TOKEN=... (nothing was uploaded)')
    api = HfApi(endpoint=constants.ENDPOINT, token=token)
    try:
        api.create_repo(repo_id, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                                   allow_patterns=list(FOLDER_FILES),
                                   commit_message=f'Upload {folder.name} with timm-mrla push')
    except HfHubHTTPError as e:
        raise FolderError(f'uploading to {target} failed: {e}') from e
    print_fn(f'pushed {folder} to {target}: commit {commit.oid}\n{commit.commit_url}')
    return commit.oid
