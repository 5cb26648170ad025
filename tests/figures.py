"""The tests' one check of a written figure: a whole PNG that decodes, not just a file with the right first bytes."""
from PIL import Image


def png_image(path, min_side: int = 100) -> Image.Image:
    """Decode the PNG at ``path`` (a truncated or empty file fails here) and return it; a figure is at least
    ``min_side`` pixels each way."""
    with Image.open(path) as image:
        image.load()
    assert image.format == "PNG" and min(image.size) >= min_side, (path, image.format, image.size)
    return image
