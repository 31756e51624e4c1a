from . import ceit, convnext, deit, efficientnet, resnet
from ._helpers import AuthorsCheckpointError
from .ceit import *
from .convnext import *
from .deit import *
from .efficientnet import *
from .resnet import *

# each MRLA model -> the timm model it extends (benchmark baseline, warm-start source); timm has no CeiT
BASE_MODELS = {**resnet.BASE_MODELS, **efficientnet.BASE_MODELS, **deit.BASE_MODELS, **convnext.BASE_MODELS}
