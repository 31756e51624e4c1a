"""Run a timm script (train.py, validate.py, ...) with the timm-mrla models registered.

timm's train.py and validate.py live in timm's repository, not in the timm package. ``python -m
timm_mrla.train PATH/TO/train.py ARGS`` (and ``timm_mrla.validate``) imports ``timm_mrla`` and then runs
the script unchanged as ``__main__`` with ``ARGS``, exactly as ``python PATH/TO/train.py ARGS`` would;
it works under ``torchrun --nproc_per_node=N -m timm_mrla.train ...`` too, each process registering the
models before the script starts.
"""
import runpy
import sys
from pathlib import Path
from typing import List, Optional


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
    sys.argv = [str(script)] + argv[1:]
    sys.path.insert(0, str(script.resolve().parent))  # as `python script.py` would, for its sibling imports
    try:
        runpy.run_path(str(script), run_name='__main__')
    except AuthorsCheckpointError as e:  # a checkpoint that does not fit: the message says all, not the traceback
        print(f'timm_mrla.{kind}: error: {e}', file=sys.stderr)
        raise SystemExit(2)
