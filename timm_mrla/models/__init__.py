from .resnet import *
from .efficientnet import *
from .deit import *
