"""torch.hub entry points: one per MRLA architecture, each ``timm.create_model`` under that name.

    model = torch.hub.load('path/to/timm-mrla', 'resnet50_mrla', source='local', pretrained=True)
    model = torch.hub.load('path/to/timm-mrla', 'tf_efficientnet_lite0_mrla', source='local', pretrained=True,
                           tag='in1k_warmstart', num_classes=10)

``torch.hub.list('OWNER/REPO')`` lists the names (for a GitHub repository: torch.hub.list reads no local folder).
"""
import typing

import timm
import torch.nn as nn

import timm_mrla  # noqa: F401  registers the models with timm

dependencies = ['torch', 'timm', 'huggingface_hub', 'safetensors']


# the module's public callables are what torch.hub lists: the entry points alone (typing's names stay behind `typing.`)
def _entry_point(name: str) -> typing.Callable[..., nn.Module]:
    def create(pretrained: bool = False, tag: typing.Optional[str] = None, **kwargs) -> nn.Module:
        return timm.create_model(f'{name}.{tag}' if tag else name, pretrained=pretrained, **kwargs)
    create.__name__ = create.__qualname__ = name
    create.__doc__ = (f"``timm.create_model('{name}[.tag]', pretrained=pretrained, **kwargs)``; the pretrained tags: "
                      f"``timm.list_pretrained('{name}.*')``.")
    return create


globals().update({name: _entry_point(name) for name in timm.list_models('*mrla*')})
