"""``timm-mrla zoo publish``: push every zoo weight's Hub-ready folder to an organisation.

Each folder is collected as published (``offline.zoo_folder``: rebuilt, or kept in hub/weights/) and checked
against the manifest; all are verified before the first upload, so a bad entry stops the run with nothing
pushed. Warm starts from ``timm/`` repositories are timm's files and are not pushed.
"""
import tempfile
from pathlib import Path
from typing import Dict, Optional

from .folder import FolderError, push_folder, verify_folder
from .offline import WEIGHTS_DIR, zoo_folder
from .zoo import warm_starts, zoo

__all__ = ['publish_zoo']


def publish_zoo(org: str, dry_run: bool = False, print_fn=print) -> Dict[str, Optional[str]]:
    """Verify and push (or with ``dry_run`` list) every zoo weight as ``org/<repo>``; returns name -> commit."""
    from ..models import BASE_MODELS
    weights = zoo()
    commits: Dict[str, Optional[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {w.name: zoo_folder(w, Path(tmp)) for w in weights}
        missing = [name for name, folder in folders.items() if folder is None]
        if missing:
            raise FolderError(f'no folder for {", ".join(missing)} in this checkout; put each in {WEIGHTS_DIR}/NAME '
                              f'(`timm-mrla zoo folder NAME --out hub/weights/NAME ...`); nothing was uploaded')
        for name, folder in folders.items():
            report = verify_folder(folder)
            if not report.ok:
                raise FolderError(f'{name} ({folder}) failed verification, nothing was uploaded: '
                                  + '; '.join(report.problems))
        for w in weights:
            print_fn(f'{w.name} -> {org}/{w.repo}')
            commits[w.name] = push_folder(folders[w.name], f'{org}/{w.repo}', dry_run=dry_run, verified=True,
                                          print_fn=print_fn)
    print_fn(f'not pushed: {len(warm_starts(BASE_MODELS))} warm-start tags, which load timm\'s own files from '
             f'timm/ repositories')
    if not dry_run:
        print_fn('record each commit as the entry\'s "revision" in timm_mrla/hub/manifest.json where it differs:')
        for w in weights:
            print_fn(f'  {w.name}: {commits[w.name]}' + ('' if commits[w.name] == w.revision else
                                                         f' (manifest: {w.revision})'))
    return commits
