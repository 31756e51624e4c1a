"""``python -m timm_mrla.validate PATH/TO/validate.py ARGS``: timm's validate.py with the MRLA models (see ``launch``)."""
from timm_mrla.launch import launch

if __name__ == '__main__':
    launch('validate')
