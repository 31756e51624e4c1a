"""Fetching pretrained weights through huggingface_hub, checked against the zoo manifest.

timm would download ``model.safetensors`` itself; the model families fetch it here first so that a
missing or unreachable file gets an error naming the repository, the file and what to do, and so that a
zoo weight whose bytes differ from the manifest's sha256 never loads.
"""
import hashlib
import logging
import socket
from pathlib import Path
from typing import Any, Dict, Optional, Union
from urllib.parse import urlparse

import timm
import torch.nn as nn
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
    RevisionNotFoundError)
from timm.models._builder import resolve_pretrained_cfg
from timm.models._hub import hf_split

from .cards import CARD_FILE, read_card
from .zoo import HUB_ORG_ENV, WEIGHTS_FILE, find_weight

__all__ = ['WeightsUnavailableError', 'WeightsIntegrityError', 'sha256_of', 'hub_reachable', 'create_pretrained',
           'fetch_weights', 'fetch_zoo_weights', 'check_local_folder', 'pretrained_weights_overlay']

_logger = logging.getLogger(__name__)


class WeightsUnavailableError(OSError):
    """Pretrained weights that cannot be obtained; the message says why and what to do."""


class WeightsIntegrityError(RuntimeError):
    """Weights whose sha256 differs from the one recorded for them (zoo manifest, or a local folder's card)."""


def sha256_of(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _unavailable(repo_id: str, filename: str, revision: Optional[str], error: Exception) -> WeightsUnavailableError:
    where = f"'{filename}' of {repo_id}" + (f' at revision {revision}' if revision else '')
    endpoint = constants.ENDPOINT
    if isinstance(error, LocalEntryNotFoundError):
        reason = (f'cannot download {where}: it is not in the local cache ({constants.HF_HUB_CACHE}) and the Hub '
                  f'is not reachable' + (' (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else '') +
                  f'. Connect once to download it, or point HF_HUB_CACHE at a cache that holds it: `hf download '
                  f'{repo_id} {filename} --cache-dir DIR` where there is a network, or `timm-mrla zoo cache DIR` for '
                  f'the zoo weights this checkout can build offline.')
    elif isinstance(error, RevisionNotFoundError):
        reason = (f'cannot download {where}: {repo_id} on {endpoint} has no revision {revision}. Use a branch, tag '
                  f'or commit that exists there, or leave the revision out for the latest.')
    elif isinstance(error, RepositoryNotFoundError):
        reason = (f'cannot download {where}: {endpoint} has no repository {repo_id} (or it is private: set HF_TOKEN). '
                  f'Check the name; for a zoo mirror or fork set {HUB_ORG_ENV}, for another server HF_ENDPOINT.')
    elif isinstance(error, EntryNotFoundError):
        reason = (f'cannot download {where}: the repository has no such file at that revision. Publish the folder '
                  f'written by `timm-mrla convert` (`timm-mrla push`), which holds {WEIGHTS_FILE}.')
    else:
        reason = f'cannot download {where} from {endpoint}: {error}. Check the connection, HF_ENDPOINT and HF_TOKEN.'
    return WeightsUnavailableError(reason)


# what huggingface_hub raises for a file it cannot get: no network, offline mode, no such repository, file or revision
_HUB_ERRORS = (HfHubHTTPError, LocalEntryNotFoundError, EntryNotFoundError, OfflineModeIsEnabled, ConnectionError)


def create_pretrained(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=True, **kwargs)`` for weights that timm downloads itself (a timm name
    with its pretrained tag, an ``hf-hub:`` id): a file it cannot get raises ``WeightsUnavailableError`` naming the
    repository, the file and what to do, not huggingface_hub's own error."""
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except _HUB_ERRORS as e:
        hf_hub_id = name[len('hf-hub:'):] if name.startswith('hf-hub:') else resolve_pretrained_cfg(name).hf_hub_id
        repo_id, revision = hf_split(hf_hub_id)
        raise _unavailable(repo_id, WEIGHTS_FILE, revision, e) from e


def fetch_weights(hf_hub_id: str, filename: str = WEIGHTS_FILE, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Download (or find in the cache) ``filename`` of ``org/repo[@revision]`` and check it against the zoo."""
    repo_id, revision = hf_split(hf_hub_id)
    try:
        path = Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                    library_name='timm-mrla'))
    except _HUB_ERRORS as e:
        raise _unavailable(repo_id, filename, revision, e) from e
    weight = find_weight(repo_id, revision) if filename == WEIGHTS_FILE else None
    if weight is not None:
        actual = sha256_of(path)
        if actual != weight.sha256:
            raise WeightsIntegrityError(
                f'{filename} of {repo_id}@{revision} ({weight.name}) has sha256 {actual}, but the zoo manifest '
                f'expects {weight.sha256}: the file at {path} is damaged or was replaced, so it was not loaded. '
                f'Delete that cached file (or `hf cache delete`) and download it again; if the mismatch persists, '
                f'the repository was altered: report it.')
    return path


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint accepts a connection (False at once when HF_HUB_OFFLINE is set)."""
    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == 'https' else 80)), timeout).close()
        return True
    except OSError:
        return False


def fetch_zoo_weights(hf_hub_id: str, filename: str = WEIGHTS_FILE,
                      cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """``fetch_weights``, except for the zoo's embedded defaults (``offline.EMBEDDED_WEIGHTS``): where the Hub cannot
    serve one (unreachable, offline, or the zoo not published there), it is rebuilt from its installed package into
    the Hub cache, checked against the manifest's sha256, and loaded from there, with one log line saying so."""
    from ..convert import ConversionError
    from .offline import EMBEDDED_WEIGHTS, embedded_cache
    repo_id, revision = hf_split(hf_hub_id)
    weight = find_weight(repo_id, revision) if filename == WEIGHTS_FILE else None
    if weight is None or weight.name not in EMBEDDED_WEIGHTS or isinstance(
            try_to_load_from_cache(repo_id, filename, cache_dir, revision), str):
        return fetch_weights(hf_hub_id, filename, cache_dir)
    try:
        if not hub_reachable():  # no retries against a Hub that cannot answer: the file can be rebuilt here
            raise WeightsUnavailableError(f'the Hub ({constants.ENDPOINT}) is not reachable.')
        return fetch_weights(hf_hub_id, filename, cache_dir)
    except WeightsUnavailableError as e:
        package = EMBEDDED_WEIGHTS[weight.name]
        cache_dir = Path(cache_dir or constants.HF_HUB_CACHE)
        try:
            embedded_cache(cache_dir, weight.name)
        except (ConversionError, OSError) as build_error:  # the package not installed, the cache not writable
            raise WeightsUnavailableError(f'{e} It can be rebuilt offline from the {package} package, but not here: '
                                          f'{build_error}') from build_error
        _logger.warning(f'{weight.name}: not from the Hub ({constants.ENDPOINT}); rebuilt from the installed {package} '
                        f'package into the Hub cache {cache_dir} (sha256 checked)')
        return fetch_weights(hf_hub_id, filename, cache_dir)


def check_local_folder(folder: Union[str, Path]) -> None:
    """Refuse a local folder whose model card records a sha256 (``weights_sha256``) that its model.safetensors does
    not have, as Hub downloads are refused; folders without a card or a recorded sha256 pass."""
    folder = Path(folder)
    card, weights = folder / CARD_FILE, folder / WEIGHTS_FILE
    if not (card.is_file() and weights.is_file()):
        return
    try:
        expected = read_card(card)[0].get('weights_sha256')
    except UnicodeDecodeError as e:
        raise WeightsIntegrityError(
            f'{card} is not a model card (not UTF-8 text: {e.reason} at byte {e.start}), so the sha256 of {weights} '
            f'cannot be checked and it was not loaded. Restore the folder (or rewrite it with `timm-mrla convert` / '
            f'`timm-mrla zoo folder`).') from e
    actual = sha256_of(weights)
    if expected and actual != expected:
        raise WeightsIntegrityError(
            f'{weights} has sha256 {actual}, but its model card {card} records {expected}: the file is damaged or '
            f'was replaced, so it was not loaded. Restore the folder (or rewrite it with `timm-mrla convert` / '
            f'`timm-mrla zoo folder`); `timm-mrla verify {folder}` checks it.')


def pretrained_weights_overlay(variant: str, kwargs: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """For a model about to load Hub weights, fetch them now and return the pretrained_cfg overlay that makes
    timm load the checked file; None when timm will load from elsewhere (a file, a URL, a local folder: that one
    is first checked against its card, see ``check_local_folder``)."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    if cfg.source == 'local-dir':
        check_local_folder(cfg.file)
        return None
    from_hub = cfg.hf_hub_id and (cfg.source == 'hf-hub' or not (cfg.state_dict or cfg.file or cfg.source))
    if not from_hub or cfg.custom_load:
        return None
    path = fetch_zoo_weights(cfg.hf_hub_id, cfg.hf_hub_filename or WEIGHTS_FILE, kwargs.get('cache_dir'))
    return dict(kwargs.get('pretrained_cfg_overlay') or {}, file=str(path), source='file')
