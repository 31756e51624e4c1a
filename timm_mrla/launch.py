"""Run a timm script (train.py, validate.py, ...) with the timm-mrla models registered.

timm's train.py and validate.py live in timm's repository, not in the timm package. ``python -m
timm_mrla.train PATH/TO/train.py ARGS`` (and ``timm_mrla.validate``) imports ``timm_mrla`` and then runs
the script unchanged as ``__main__`` with ``ARGS``, exactly as ``python PATH/TO/train.py ARGS`` would;
it works under ``torchrun --nproc_per_node=N -m timm_mrla.train ...`` too, each process registering the
models before the script starts.

A checkpoint of the authors' code loads wherever the script takes one (the models map its keys); one that does not
fit the model stops with the models' error message alone. ``train.py --resume`` of such a checkpoint is refused
before the script runs, unless ``--no-resume-opt`` is given (see ``_refuse_resuming_authors_optimizer``).
"""
import argparse
import runpy
import sys
from pathlib import Path
from typing import List, Optional


def _refuse_resuming_authors_optimizer(argv: List[str]) -> None:
    """Stop ``train.py --resume CHECKPOINT`` when CHECKPOINT comes from the authors' code.

    ``--resume`` restores the optimizer with the weights. The authors' optimizer state follows their models'
    parameter order and groups, which timm's optimizer does not share: torch would refuse it, or give parameters
    another parameter's momentum. Their weights load with ``--initial-checkpoint``, or with ``--resume`` and
    ``--no-resume-opt`` (which also continues their epoch count). ``--model``, ``--resume`` and ``--no-resume-opt``
    are read as train.py reads them: from the command line over the ``-c/--config`` YAML file's values; a file that
    cannot be read is left for train.py to report.
    """
    import timm
    import torch
    import yaml
    from timm_mrla.convert import ConversionError, load_checkpoint
    from timm_mrla.models._helpers import is_authors_layout

    config_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    config_parser.add_argument('-c', '--config', default='')
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument('--resume', default='')
    parser.add_argument('--no-resume-opt', action='store_true')
    parser.add_argument('--model', default='')
    config, remaining = config_parser.parse_known_args(argv)
    if config.config and Path(config.config).is_file():
        with open(config.config) as f:
            parser.set_defaults(**(yaml.safe_load(f) or {}))  # as train.py: the command line wins
    args, _ = parser.parse_known_args(remaining)
    if not args.resume or args.no_resume_opt or not Path(args.resume).is_file() or not timm.is_model(args.model):
        return
    with torch.device('meta'):  # the model's class, without allocating its weights
        rules = getattr(timm.create_model(args.model), 'authors_key_rules', None)
    if not rules:
        return
    try:
        checkpoint = load_checkpoint(args.resume)
    except ConversionError:
        return
    state_dict = checkpoint.get('state_dict', checkpoint.get('model'))  # as train.py's resume picks it
    if 'optimizer' in checkpoint and isinstance(state_dict, dict) and is_authors_layout(state_dict, rules):
        print(f"timm_mrla.train: error: --resume {args.resume} is a checkpoint of the MRLA authors' code: its "
              f"optimizer state follows their parameter order, which timm's optimizer does not share. Start from its "
              f"weights with --initial-checkpoint {args.resume} instead, or add --no-resume-opt to take its weights "
              f"and epoch count with a new optimizer.",
              file=sys.stderr)
        raise SystemExit(2)


def launch(kind: str, argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (f'usage: python -m timm_mrla.{kind} PATH/TO/{kind}.py [{kind}.py arguments]\n'
             f"Runs timm's {kind}.py (from github.com/huggingface/pytorch-image-models) with the timm-mrla "
             f'models registered.')
    if not argv or argv[0] in ('-h', '--help'):
        print(usage)
        raise SystemExit(0 if argv else 2)
    script = Path(argv[0])
    if not script.is_file() or script.suffix != '.py':
        print(f"timm_mrla.{kind}: error: {argv[0]} is not a Python script; pass the path to timm's {kind}.py "
              f'first, then its arguments\n{usage}', file=sys.stderr)
        raise SystemExit(2)
    import timm_mrla  # noqa: F401  registers the models before the script creates one
    from timm_mrla.models import AuthorsCheckpointError
    if kind == 'train':
        _refuse_resuming_authors_optimizer(argv[1:])
    sys.argv = [str(script)] + argv[1:]
    sys.path.insert(0, str(script.resolve().parent))  # as `python script.py` would, for its sibling imports
    try:
        runpy.run_path(str(script), run_name='__main__')
    except AuthorsCheckpointError as e:  # a checkpoint that does not fit: the message says all, not the traceback
        print(f'timm_mrla.{kind}: error: {e}', file=sys.stderr)
        raise SystemExit(2)
