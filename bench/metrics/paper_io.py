"""What the paper's evaluation did to images before scoring them (docs/paper.md §2.1 output, B8, B9).

The reference code saved each generated 512x512 image resized to 256x256 (PIL bicubic) as a JPEG
(PIL default quality 75), then read images back with cv2.imread, i.e. in BGR channel order.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bench.datasets.base import apply_exif_orientation, to_eight_bit
from bench.sd.errors import ConfigError

COLOR_ORDERS = ("rgb", "bgr")


def paper_saved_image(image: np.ndarray, size: int = 256, quality: int = 75) -> np.ndarray:
    """uint8 [H, W, 3] -> the same image after the code's save: resize to size x size (bicubic), JPEG, decode."""
    pil = Image.fromarray(image)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()


def in_color_order(image: np.ndarray, color_order: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> the channel order the network is fed ('bgr' = what cv2.imread gives)."""
    if color_order not in COLOR_ORDERS:
        raise ConfigError(f"color_order={color_order!r}; expected one of {COLOR_ORDERS}.")
    return np.ascontiguousarray(image[..., ::-1]) if color_order == "bgr" else image


def as_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL image at its own size -> RGB uint8 [H, W, 3] (transparent pixels composited on white).

    As the model's input (bench/datasets/base.py): the EXIF orientation applied (cv2.imread, the paper
    code's reader, does the same), 16-bit grayscale scaled to 8 bits, not clipped.
    """
    image = to_eight_bit(apply_exif_orientation(image)[0])[0]
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
