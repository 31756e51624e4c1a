"""Test session setup: nothing reaches the network, and Hub tests get a real Hub-protocol server on loopback.

huggingface_hub reads its environment once, at import, so it is set here, before any test module imports
torch, timm or huggingface_hub: offline by default, a throw-away HF_HOME, no token, no telemetry.
Tests that go through a server patch ``huggingface_hub.constants`` for their own duration.
"""
import os
import tempfile

os.environ['HF_HOME'] = tempfile.mkdtemp(prefix='timm-mrla-tests-hf-home-')
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['HF_HUB_DISABLE_TELEMETRY'] = '1'
for _name in ('HF_TOKEN', 'HF_ENDPOINT', 'HF_HUB_CACHE', 'TIMM_MRLA_HUB_ORG'):
    os.environ.pop(_name, None)

import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

OLAH_CONFIG = """\
[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{work}/olah-cache"
mirrors-path = ["{mirrors}"]
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"
# any upstream request olah might still make goes to a closed loopback port
hf-scheme = "http"
hf-netloc = "127.0.0.1:9"
hf-lfs-netloc = "127.0.0.1:9"

[accessibility]
offline = true
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class LoopbackHub:
    """olah serving local git repositories as a Hub on 127.0.0.1."""

    def __init__(self, endpoint: str, mirrors: Path):
        self.endpoint = endpoint
        self.mirrors = mirrors

    def add_repo(self, folder: Path, repo_id: str) -> str:
        """Serve a Hub-ready folder as ``repo_id``; returns its commit."""
        from timm_mrla.hub.cache import git_repo
        repo_dir = self.mirrors / 'models' / repo_id
        if repo_dir.exists():
            shutil.rmtree(repo_dir)
        return git_repo(folder, repo_dir)


@pytest.fixture(scope='session')
def loopback_hub(tmp_path_factory):
    olah = shutil.which('olah-cli', path=str(Path(sys.executable).parent)) or shutil.which('olah-cli')
    if olah is None:
        pytest.fail('olah (the loopback Hub server) is not installed: pip install -e ".[test]"')
    work = tmp_path_factory.mktemp('olah')
    mirrors = work / 'mirrors'
    (mirrors / 'models').mkdir(parents=True)
    port = _free_port()
    config = work / 'olah.toml'
    config.write_text(OLAH_CONFIG.format(port=port, work=work, mirrors=mirrors))
    log = open(work / 'olah.log', 'wb')
    process = subprocess.Popen([olah, '--config', str(config), '--log-path', str(work / 'logs')], cwd=work,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f'http://127.0.0.1:{port}'
    deadline = time.monotonic() + 60
    try:
        while True:  # any HTTP answer means it serves; its index page itself errors, so probe an API path
            if process.poll() is not None:
                pytest.fail(f'olah exited: {(work / "olah.log").read_text()[-2000:]}')
            try:
                urllib.request.urlopen(f'{endpoint}/api/models/probe/probe', timeout=1).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail('olah did not start within 60 s')
                time.sleep(0.1)
        yield LoopbackHub(endpoint, mirrors)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A fresh, empty HF_HUB_CACHE, offline."""
    from huggingface_hub import constants
    cache = tmp_path / 'hf-cache'
    cache.mkdir()
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    return cache


@pytest.fixture(scope='session')
def laid_out_zoo(tmp_path_factory):
    """``timm-mrla zoo cache``'s offline cache, laid out once per test run: (folder, laid out, not available)."""
    from timm_mrla.hub.offline import offline_cache
    cache = tmp_path_factory.mktemp('zoo-cache')
    return (cache, *offline_cache(cache))


@pytest.fixture
def zoo_cache(laid_out_zoo, monkeypatch):
    """``laid_out_zoo`` as HF_HUB_CACHE, offline; for tests that only read it."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(laid_out_zoo[0]))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    return laid_out_zoo


@pytest.fixture
def online(loopback_hub, hub_cache, monkeypatch):
    """huggingface_hub pointed at the loopback Hub (HF_ENDPOINT), online, with an empty cache."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'ENDPOINT', loopback_hub.endpoint)
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE',
                        loopback_hub.endpoint + '/{repo_id}/resolve/{revision}/{filename}')
    return loopback_hub
