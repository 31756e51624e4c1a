from .mrla import MRLABase, MRLALight, eca_kernel_size
from .reference import mrla_base_reference, mrla_light_reference
