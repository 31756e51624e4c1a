"""The ``timm-mrla`` command."""
import argparse
import sys
from typing import List, Optional

from . import __version__


def _convert(args: argparse.Namespace) -> None:
    from .convert import convert_checkpoint
    out_dir, source = convert_checkpoint(args.checkpoint, args.model, args.out, force=args.force, use_ema=args.ema)
    print(f'converted {source} of {args.checkpoint} to {args.model} in {out_dir}')
    print(f"load it with: timm.create_model('local-dir:{out_dir}', pretrained=True) after `import timm_mrla`")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='timm-mrla', description='MRLA layer attention models for timm.')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    convert = commands.add_parser(
        'convert', help="convert a checkpoint trained with the authors' code into a timm model folder",
        description="Convert a checkpoint trained with the authors' MRLA code (resnet/train.py, deit/main.py, "
                    "timm's train.py; .pth, .pth.tar or .safetensors) into a folder holding model.safetensors "
                    "and timm's config.json, loadable with timm.create_model('local-dir:DIR', pretrained=True).")
    convert.add_argument('checkpoint', help='checkpoint file')
    convert.add_argument('--model', required=True, help='timm-mrla model name, e.g. resnet50_mrla')
    convert.add_argument('--out', required=True, help='output folder (must be empty or new unless --force)')
    convert.add_argument('--ema', action='store_true', help='take the EMA weights (state_dict_ema / model_ema)')
    convert.add_argument('--force', action='store_true', help='replace the model files in a non-empty --out')
    convert.set_defaults(func=_convert)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .convert import ConversionError
    try:
        args.func(args)
    except ConversionError as e:
        print(f'timm-mrla {args.command}: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
