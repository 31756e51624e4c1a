"""The documentation's commands work as written.

From README.md and hub/README.md, whatever sections they have:

* every ``timm-mrla ...`` command (lines of ```bash blocks and inline code spans) parses with the CLI as written
  (placeholders such as DIR or ORG are just arguments; ``[...]`` marks optional parts; a bare command name in the
  prose is a mention, not a command);
* the cheap ones in ```bash blocks, those starting with one of ``RUN_PREFIXES`` and needing no token (no
  ``HF_TOKEN=``), run in a scratch folder, in document order, and must succeed; the checkpoint the README converts is made there first from the authors'
  key list (``synthetic_checkpoints``);
* every model name in a ``timm.create_model('...')`` of a python block is a registered model and tag.
"""
import re
import shlex
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
import timm
import torch

import timm_mrla  # noqa: F401
from timm_mrla.cli import build_parser, main
from synthetic_checkpoints import synthetic_state_dict

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / 'README.md', ROOT / 'hub' / 'README.md')
# cheap, offline commands that the test runs; convert first: it writes the folder the others read
RUN_PREFIXES = ('timm-mrla convert ', 'timm-mrla verify ', 'timm-mrla push ', 'timm-mrla zoo cache ',
                'timm-mrla zoo check', 'timm-mrla --version')
README_CHECKPOINT = 'r50_mrlal_77.75.pth.tar'  # the authors' file the README converts


def _blocks(text: str, language: str) -> Iterator[str]:
    yield from re.findall(rf'^```{language}\n(.*?)^```', text, flags=re.S | re.M)


def _commands(doc: Path) -> List[Tuple[str, bool, bool]]:
    """(command, from a code block, needs a token) for every timm-mrla command of ``doc``, as written."""
    text = doc.read_text()
    found = []
    for block in _blocks(text, 'bash'):
        for line in block.replace('\\\n', ' ').splitlines():
            for part in line.split('&&'):
                part = part.split(' #')[0]  # a comment
                command = re.sub(r'^\s*(\w+=\S+\s+)*', '', part).strip()  # after the environment assignments
                if command.startswith('timm-mrla'):
                    found.append((command, True, 'HF_TOKEN=' in part))
    found += [(span, False, False) for span in re.findall(r'`(timm-mrla[^`]*)`', text)]
    return found


def _argv(command: str) -> List[str]:
    return shlex.split(command.replace('[', '').replace(']', ''))[1:]


def _is_mention(command: str) -> bool:
    return re.fullmatch(r'timm-mrla( [a-z]+){0,2}', command) is not None


ALL_COMMANDS = [(doc.name if doc.parent == ROOT else f'{doc.parent.name}/{doc.name}', command, in_block, token)
                for doc in DOCS for command, in_block, token in _commands(doc)]


def test_the_docs_have_commands():
    assert len(ALL_COMMANDS) > 10
    assert ('README.md', 'timm-mrla zoo cache DIR', True, False) in ALL_COMMANDS


@pytest.mark.parametrize('doc,command,in_block,needs_token', ALL_COMMANDS)
def test_documented_command_parses(doc, command, in_block, needs_token):
    try:
        build_parser().parse_args(_argv(command))
    except SystemExit:
        if in_block or not _is_mention(command):
            pytest.fail(f'{doc}: `{command}` does not parse with the timm-mrla CLI')


def test_cheap_documented_commands_run(tmp_path, monkeypatch, hub_cache):
    monkeypatch.chdir(tmp_path)
    torch.save({'state_dict': synthetic_state_dict('resnet50_mrlal')}, tmp_path / README_CHECKPOINT)
    runnable = [c for _, c, in_block, token in ALL_COMMANDS if in_block and not token and c.startswith(RUN_PREFIXES)]
    runnable.sort(key=lambda c: not c.startswith('timm-mrla convert '))
    assert any(c.startswith('timm-mrla convert ') for c in runnable)
    assert 'timm-mrla zoo cache DIR' in runnable
    for command in dict.fromkeys(runnable):
        assert main(_argv(command)) == 0, command
    assert (tmp_path / 'DIR').is_dir()  # zoo cache DIR laid out the cache where the README says


def test_python_examples_name_registered_models():
    names = [name for doc in DOCS for block in _blocks(doc.read_text(), 'python')
             for name in re.findall(r"create_model\('([^':]+)'", block)]
    assert 'resnet50_mrla.tv2_in1k_warmstart' in names
    for name in names:
        assert timm.models.get_pretrained_cfg(name) is not None, name  # raises for an unknown tag
