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
from typing import Dict, Iterable, List, Union

from huggingface_hub.file_download import repo_folder_name

from .folder import FOLDER_FILES

__all__ = ['COMMIT_AUTHOR', 'COMMIT_DATE', 'git_commit_id', 'git_repo', 'repo_cache_dir', 'add_to_cache',
           'snapshot_problems']

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


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` in one step: a run killed mid-write leaves the old file or none, never half of one."""
    partial = path.with_name(f'.{path.name}.partial')
    partial.write_bytes(data)
    partial.replace(path)


def add_to_cache(folder: Union[str, Path], repo_id: str, cache_dir: Union[str, Path],
                 refs: Iterable[str] = ('main',)) -> str:
    """Put the folder into a Hugging Face cache as ``repo_id`` at its commit (see ``git_commit_id``), with
    ``refs`` (branch or tag names) pointing at it, as a download would have left it. Returns the commit id.

    An interrupted run leaves nothing that looks complete: a new repository appears at once, built beside its
    place; in an existing one, blobs are replaced whole and the snapshot appears complete, then the refs.
    """
    folder, cache_dir = Path(folder), Path(cache_dir)
    files = _folder_files(folder)
    commit = git_commit_id(files)
    repo_cache = repo_cache_dir(cache_dir, repo_id)
    if repo_cache.exists():
        _lay_out(files, commit, repo_cache, refs)
        return commit
    staging = cache_dir / f'.{repo_cache.name}.partial'
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run
    try:
        _lay_out(files, commit, staging, refs)
        staging.rename(repo_cache)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return commit


def _lay_out(files: Dict[str, bytes], commit: str, repo_cache: Path, refs: Iterable[str]) -> None:
    (repo_cache / 'blobs').mkdir(parents=True, exist_ok=True)
    blobs = {}
    for name, data in files.items():
        # the Hub's etag names a blob: sha256 for the large (LFS) weights, the git blob id otherwise
        blobs[name] = _blob_name(name, data)
        _write_atomically(repo_cache / 'blobs' / blobs[name], data)
    snapshot = repo_cache / 'snapshots' / commit
    # a new snapshot appears whole; in an existing one (a download's, maybe with more files) each link is replaced
    links = snapshot if snapshot.is_dir() else snapshot.with_name(f'.{commit}.partial')
    links.mkdir(parents=True, exist_ok=True)
    for name, blob in blobs.items():
        partial = links / f'.{name}.partial'
        partial.unlink(missing_ok=True)
        partial.symlink_to(Path('..', '..', 'blobs', blob))
        partial.replace(links / name)
    if links != snapshot:
        links.rename(snapshot)
    (repo_cache / 'refs').mkdir(exist_ok=True)
    for ref in refs:
        _write_atomically(repo_cache / 'refs' / ref, commit.encode())  # no newline: huggingface_hub reads it verbatim


def _blob_name(name: str, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if name.endswith('.safetensors') else _object_id('blob', data)


def snapshot_problems(cache_dir: Union[str, Path], repo_id: str, revision: str, names: Iterable[str]) -> List[str]:
    """What is wrong with files ``names`` of ``repo_id`` at ``revision`` (a commit or a ref) in the cache: missing,
    or a blob whose content does not match its name (the sha256 or git blob id of what it should hold), as a
    killed or failing write leaves it. Empty when all are intact."""
    repo_cache = repo_cache_dir(cache_dir, repo_id)
    ref = repo_cache / 'refs' / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo_cache / 'snapshots' / commit
    if not snapshot.is_dir():
        return [f'{repo_id} in {cache_dir} has no complete snapshot at {revision}']
    problems = []
    for name in names:
        path = snapshot / name
        if not path.is_file():
            problems.append(f'{path} is missing')
        elif path.is_symlink() and _blob_name(name, path.read_bytes()) != path.resolve().name:
            problems.append(f'{path} is damaged: its content does not match its blob {path.resolve().name}')
    return problems
