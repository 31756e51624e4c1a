"""Real photographs that ship with scikit-image (the ``demo`` extra), for demos and for checks on real images."""
from typing import List, Tuple

from PIL import Image

# scikit-image's bundled photographs (skimage/data), no download needed
PHOTOS = ('chelsea', 'coffee', 'astronaut', 'rocket')


def sample_photo(name: str) -> Image.Image:
    """The RGB photograph ``name`` (one of ``PHOTOS``)."""
    try:
        from skimage import data
    except ImportError as e:
        raise ImportError("the sample photographs come with scikit-image: pip install 'timm-mrla[demo]'") from e
    return Image.fromarray(getattr(data, name)()).convert('RGB')


def sample_photos() -> List[Tuple[str, Image.Image]]:
    """(name, RGB image) for each photograph in ``PHOTOS``."""
    return [(name, sample_photo(name)) for name in PHOTOS]
