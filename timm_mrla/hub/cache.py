"""Hub repositories made locally: a git commit of a Hub-ready folder, and its place in a Hugging Face cache.

A zoo weight's revision is the git commit of its folder made here: same files, fixed author, date and
message, so the commit id depends on the content alone. ``git_commit_id`` computes it the way git does,
``git_repo`` makes the real git repository (what a Hub-protocol server such as olah serves, or what can be
pushed to the Hub with git), and ``add_to_cache`` lays the snapshot out in an ``HF_HUB_CACHE`` so that
huggingface_hub finds it with ``HF_HUB_OFFLINE=1``.
"""
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterable, Union

from huggingface_hub.file_download import repo_folder_name

from .folder import FOLDER_FILES

__all__ = ['COMMIT_AUTHOR', 'COMMIT_DATE', 'git_commit_id', 'git_repo', 'repo_cache_dir', 'add_to_cache']

COMMIT_AUTHOR = ('timm-mrla', 'timm-mrla@users.noreply.huggingface.co')
COMMIT_DATE = '1700000000 +0000'
COMMIT_MESSAGE = 'timm-mrla weights\n'


def _object_id(kind: str, body: bytes) -> str:
    return hashlib.sha1(f'{kind} {len(body)}\0'.encode() + body).hexdigest()


def _folder_files(folder: Path) -> Dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in FOLDER_FILES}


def git_commit_id(files: Dict[str, bytes]) -> str:
    """The id git gives a root commit of ``files`` (one flat folder) with this module's author, date and message."""
    tree = b''.join(f'100644 {name}\0'.encode() + bytes.fromhex(_object_id('blob', data))
                    for name, data in sorted(files.items()))
    who = f'{COMMIT_AUTHOR[0]} <{COMMIT_AUTHOR[1]}> {COMMIT_DATE}'
    commit = f'tree {_object_id("tree", tree)}\nauthor {who}\ncommitter {who}\n\n{COMMIT_MESSAGE}'
    return _object_id('commit', commit.encode())


def git_repo(folder: Union[str, Path], repo_dir: Union[str, Path]) -> str:
    """Make ``repo_dir`` a git repository whose one commit holds the folder's files; returns the commit id."""
    folder, repo_dir = Path(folder), Path(repo_dir)
    repo_dir.mkdir(parents=True, exist_ok=True)
    for name in FOLDER_FILES:
        shutil.copyfile(folder / name, repo_dir / name)
    env = dict(os.environ, GIT_AUTHOR_NAME=COMMIT_AUTHOR[0], GIT_AUTHOR_EMAIL=COMMIT_AUTHOR[1],
               GIT_COMMITTER_NAME=COMMIT_AUTHOR[0], GIT_COMMITTER_EMAIL=COMMIT_AUTHOR[1],
               GIT_AUTHOR_DATE=COMMIT_DATE, GIT_COMMITTER_DATE=COMMIT_DATE)
    git = ['git', '-C', str(repo_dir), '-c', 'init.defaultBranch=main', '-c', 'commit.gpgsign=false']
    subprocess.run(git + ['init', '-q'], check=True)
    subprocess.run(git + ['add'] + list(FOLDER_FILES), check=True)
    subprocess.run(git + ['commit', '-q', '--no-verify', '-m', COMMIT_MESSAGE.strip()], check=True, env=env)
    return subprocess.run(git + ['rev-parse', 'HEAD'], check=True, capture_output=True, text=True).stdout.strip()


def repo_cache_dir(cache_dir: Union[str, Path], repo_id: str) -> Path:
    """The folder of model repo ``repo_id`` in the Hugging Face cache ``cache_dir``, as huggingface_hub names it."""
    return Path(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type='model')


def add_to_cache(folder: Union[str, Path], repo_id: str, cache_dir: Union[str, Path],
                 refs: Iterable[str] = ('main',)) -> str:
    """Put the folder into a Hugging Face cache as ``repo_id`` at its commit (see ``git_commit_id``), with
    ``refs`` (branch or tag names) pointing at it, as a download would have left it. Returns the commit id."""
    folder, cache_dir = Path(folder), Path(cache_dir)
    files = _folder_files(folder)
    commit = git_commit_id(files)
    repo_cache = repo_cache_dir(cache_dir, repo_id)
    snapshot = repo_cache / 'snapshots' / commit
    (repo_cache / 'blobs').mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        # the Hub's etag names a blob: sha256 for the large (LFS) weights, the git blob id otherwise
        blob = hashlib.sha256(data).hexdigest() if name.endswith('.safetensors') else _object_id('blob', data)
        (repo_cache / 'blobs' / blob).write_bytes(data)
        link = snapshot / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path('..', '..', 'blobs', blob))
    (repo_cache / 'refs').mkdir(exist_ok=True)
    for ref in refs:
        (repo_cache / 'refs' / ref).write_text(commit)  # no newline: huggingface_hub reads it verbatim
    return commit
