"""``python -m timm_mrla.train|validate SCRIPT``: timm's scripts run unchanged with the MRLA models registered."""
import subprocess
import sys
import textwrap

import pytest

# a stand-in for timm's train.py: it only knows timm, as timm's scripts do
STAND_IN = textwrap.dedent('''
    import sys
    import timm
    import torch

    model = timm.create_model(sys.argv[1], num_classes=3)
    print('created', type(model).__name__, model(torch.randn(1, 3, 64, 64)).shape[-1], sys.argv[2:])
''')

DISTRIBUTED_STAND_IN = textwrap.dedent('''
    import os
    import timm
    import torch
    import torch.distributed as dist

    dist.init_process_group('gloo')
    model = timm.create_model('resnet18_mrla', num_classes=2)
    total = torch.tensor([float(sum(p.numel() for p in model.parameters()))])
    dist.all_reduce(total)
    print(f'rank {dist.get_rank()}/{dist.get_world_size()} params summed {int(total.item())}')
    dist.destroy_process_group()
''')


def _run(*args, **kwargs):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.parametrize('launcher', ['timm_mrla.train', 'timm_mrla.validate'])
def test_launcher_registers_models_and_passes_arguments(tmp_path, launcher):
    script = tmp_path / 'train.py'
    script.write_text(STAND_IN)
    done = _run(sys.executable, '-m', launcher, str(script), 'resnet18_mrla', '--epochs', '1')
    assert done.returncode == 0, done.stderr
    assert "created MRLAResNet 3 ['--epochs', '1']" in done.stdout
    without = _run(sys.executable, str(script), 'resnet18_mrla')  # what the launcher adds
    assert without.returncode != 0 and 'Unknown model' in without.stderr


def test_launcher_under_torchrun(tmp_path):
    script = tmp_path / 'train.py'
    script.write_text(DISTRIBUTED_STAND_IN)
    done = _run(sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                '-m', 'timm_mrla.train', str(script))
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'rank 0/2 params summed 22401300' in done.stdout and 'rank 1/2 params summed 22401300' in done.stdout


def test_launcher_errors(tmp_path):
    done = _run(sys.executable, '-m', 'timm_mrla.train', str(tmp_path / 'missing.py'), '--epochs', '1')
    assert done.returncode == 2 and 'is not a Python script' in done.stderr and 'Traceback' not in done.stderr
    done = _run(sys.executable, '-m', 'timm_mrla.validate')
    assert done.returncode == 2 and 'usage: python -m timm_mrla.validate PATH/TO/validate.py' in done.stdout
