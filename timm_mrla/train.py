"""``python -m timm_mrla.train PATH/TO/train.py ARGS``: timm's train.py with the MRLA models (see ``launch``)."""
from timm_mrla.launch import launch

if __name__ == '__main__':
    launch('train')
