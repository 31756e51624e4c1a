from .mrla import MRLABase, MRLALight, add_mrla_light, batchnorm_affine, eca_kernel_size
from .reference import mrla_base_reference, mrla_light_reference, reference_mode
