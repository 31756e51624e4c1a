"""``timm-mrla attention``: a figure (and optionally the numbers) of what each MRLA block retrieves, for images.

The images are prepared with the model's own data config (``timm.data.resolve_data_config`` and
``create_transform``: size, crop, mean/std; grey for a 1-channel model), the numbers come from
``timm_mrla.inspection.layer_attention`` and the figure is drawn with matplotlib (the ``plot`` extra).
"""
import json
import os
import textwrap
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import timm
import torch
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError

from .inspection import AttentionGroup, NotAnMRLAModelError, layer_attention
from .photos import PHOTOS, sample_photo

__all__ = ['AttentionCommandError', 'SKIMAGE_PREFIX', 'load_images', 'plot_layer_attention', 'run_attention']

SKIMAGE_PREFIX = 'skimage:'


class AttentionCommandError(Exception):
    """A model, image or output the command cannot use; the message says what to do."""


def load_model(name: str, pretrained: bool = True) -> Tuple[torch.nn.Module, str]:
    """The model in eval mode and a description of its weights, for the caption."""
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise AttentionCommandError(f'{e}: not a timm model name, tag, hf-hub: or local-dir: '
                                        f'(the MRLA models: timm.list_models("*mrla*") after import timm_mrla)') from e
        if 'No pretrained weights' in str(e) or 'Invalid pretrained tag' in str(e):
            raise AttentionCommandError(f'{e} Give a pretrained tag (timm.list_models("*mrla*", pretrained=True)) '
                                        f'or --random-init to inspect an untrained model') from e
        raise
    except OSError as e:  # a missing local-dir: folder or config, a Hub repository or file not found or not cached
        raise AttentionCommandError(f'cannot load {name}: {e}') from e
    except (ValueError, SafetensorError) as e:  # a local-dir: folder whose config.json or weights are damaged
        raise AttentionCommandError(f'cannot load {name}: {type(e).__name__}: {e}') from e
    cfg = model.pretrained_cfg
    weights = 'random init' if not pretrained else (cfg.get('hf_hub_id') or cfg.get('file') or cfg.get('url')
                                                     or f'{cfg.get("architecture")}.{cfg.get("tag")}')
    return model.eval(), weights


def load_images(specs: Sequence[str], in_chans: int) -> List[Tuple[str, Image.Image]]:
    """(name, image) per spec: a file, or ``skimage:NAME`` for one of scikit-image's photographs; converted to
    grey for a 1-channel model and to RGB otherwise."""
    images = []
    for spec in specs:
        if spec.startswith(SKIMAGE_PREFIX):
            name = spec[len(SKIMAGE_PREFIX):]
            if name not in PHOTOS:
                raise AttentionCommandError(f'{spec}: scikit-image photographs are {", ".join(PHOTOS)}')
            try:
                image = sample_photo(name)
            except ImportError as e:
                raise AttentionCommandError(str(e)) from e
        else:
            path = Path(spec)
            if not path.is_file():
                raise AttentionCommandError(f'{spec}: ' + ('a folder, not an image file' if path.is_dir() else
                                                           'no such image file'))
            try:
                with Image.open(path) as opened:
                    image = opened.copy()
            except (UnidentifiedImageError, OSError) as e:
                raise AttentionCommandError(f'{spec}: not an image PIL can read ({e})') from e
        images.append((spec, image.convert('L' if in_chans == 1 else 'RGB')))
    return images


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise AttentionCommandError("the figure needs matplotlib: pip install 'timm-mrla[plot]'") from e
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


_EXPLANATION = {
    'light': 'MRLA-light. Top: the weights over earlier blocks of a group (a CNN stage, a DeiT\'s blocks) implied '
             'by unrolling the paper\'s recurrence o_t = a_t v_t + lambda_t o_(t-1): w(t, s) = a_s x mean over a '
             'head\'s channels of |lambda_(s+1) ... lambda_t|, mean over heads and images; the diagonal is the gate. '
             'Bottom: each block\'s gates '
             'a = sigmoid(<q, k> / sqrt(d)) per head, mean over images. The implied weights are the paper\'s '
             'reading: in the authors\' models o_(t-1) is the block\'s input, which holds the previous MRLA output '
             'only inside a residual sum (and a BatchNorm follows each CNN MRLA branch).',
    'base': 'MRLA-base. Top: the softmax weights of each block over the blocks of its group (itself included), '
            'mean over heads and images. Bottom: each head\'s weight on its own block, mean over images.',
}


def plot_layer_attention(groups: List[AttentionGroup], caption: str, out: Path) -> None:
    """Per group a lower-triangular heat map of the block-to-earlier-block weights (mean over images and heads),
    under it each block's weight on itself per head (MRLA-light: its gate), one colour scale, written to ``out``."""
    plt = _pyplot()
    variant = groups[0].variant
    vmax = max(1.0, max(float(g.weights.max()) for g in groups))
    widths = [max(len(g.blocks), 2) for g in groups]
    fig, axes = plt.subplots(
        2, len(groups), squeeze=False, gridspec_kw=dict(width_ratios=widths, height_ratios=[max(widths), 4]),
        figsize=(max(8.0, 0.55 * sum(widths) + 0.9 * len(groups) + 1.5), 0.55 * max(widths) + 4.6),
        layout='constrained')
    for column, group in enumerate(groups):
        labels = group.blocks
        t_len = len(labels)
        weights = group.weights.mean(dim=(0, 3))  # [T, T]
        masked = weights.masked_fill(torch.ones(t_len, t_len, dtype=torch.bool).triu(1), float('nan'))
        top = axes[0, column]
        image = top.imshow(masked.numpy(), cmap='viridis', vmin=0, vmax=vmax)
        top.set_title(group.name, fontsize=10)
        top.set_xticks(range(t_len), labels, rotation=90, fontsize=7)
        top.set_yticks(range(t_len), labels, fontsize=7)
        top.set_xlabel('earlier block', fontsize=8)
        if column == 0:
            top.set_ylabel('block', fontsize=8)
        if t_len <= 6:
            for t in range(t_len):
                for s in range(t + 1):
                    value = float(weights[t, s])
                    top.text(s, t, f'{value:.2f}', ha='center', va='center', fontsize=7,
                             color='black' if value > 0.6 * vmax else 'white')
        bottom = axes[1, column]
        diagonal = group.weights.mean(0).diagonal(dim1=0, dim2=1)  # [H, T]
        bottom.imshow(diagonal.numpy(), cmap='viridis', vmin=0, vmax=vmax, aspect='auto', interpolation='nearest')
        bottom.set_xticks(range(t_len), labels, rotation=90, fontsize=7)
        heads = group.num_heads
        step = max(1, heads // 4)
        bottom.set_yticks(range(0, heads, step), [str(h) for h in range(0, heads, step)], fontsize=7)
        bottom.set_xlabel('block', fontsize=8)
        bottom.set_ylabel('head', fontsize=8)
        bottom.set_title('gate per head' if variant == 'light' else 'weight on itself, per head', fontsize=8)
    fig.colorbar(image, ax=axes[:, -1].tolist(), shrink=0.8,
                 label='weight (top), ' + ('gate' if variant == 'light' else 'weight on itself') + ' (bottom)')
    width = int(fig.get_figwidth() * 13)  # characters per line of the captions
    fig.suptitle('\n'.join(textwrap.fill(line, width) for line in caption.splitlines()), fontsize=9)
    fig.supxlabel(textwrap.fill(_EXPLANATION[variant], width=int(width * 1.2)), fontsize=7.5,
                  ha='left', x=0.01)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def run_attention(model_name: str, image_specs: Sequence[str], out: Path, json_out: Optional[Path] = None,
                  pretrained: bool = True, force: bool = False) -> List[AttentionGroup]:
    """Load the model and images, inspect, write the figure to ``out`` (and the numbers to ``json_out``); an
    existing file is replaced only with ``force``."""
    for path in (out, json_out):
        if path is None:
            continue
        if not path.parent.is_dir():
            raise AttentionCommandError(f'{path}: its folder {path.parent} ' +
                                        ('is a file' if path.parent.exists() else 'does not exist'))
        if path.is_dir():
            example = path / ('attention.json' if path is json_out else 'attention.png')
            raise AttentionCommandError(f'{path} is a folder; give the file to write, e.g. {example}')
        if path.exists() and not force:
            raise AttentionCommandError(f'{path} exists; pass --force to replace it')
        if not os.access(path.parent, os.W_OK):  # before the slow part; also false for root on a read-only mount
            raise AttentionCommandError(f'{path}: its folder {path.parent} is not writable (read-only)')
    _pyplot()  # before any work: without matplotlib the command says how to install it
    model, weights = load_model(model_name, pretrained)
    config = timm.data.resolve_data_config(model=model)
    images = load_images(image_specs, in_chans=config['input_size'][0])
    transform = timm.data.create_transform(**config)
    batch = torch.stack([transform(image) for _, image in images])
    try:
        groups = layer_attention(model, batch)
    except NotAnMRLAModelError as e:
        raise AttentionCommandError(f'{model_name} is not an MRLA model: {e} '
                                    f'(the MRLA models: timm.list_models("*mrla*") after import timm_mrla)') from e
    names = ', '.join(name for name, _ in images)
    size = 'x'.join(str(s) for s in config['input_size'])
    plot_layer_attention(groups, f'What each MRLA block of {model_name} retrieves\nweights: {weights}; images: '
                                 f'{names} (as {size})', out)
    if json_out is not None:
        json_out.write_text(json.dumps({
            'model': model_name, 'weights': weights, 'images': [name for name, _ in images],
            'input_size': list(config['input_size']), 'groups': [g.to_dict() for g in groups]}))
    return groups
