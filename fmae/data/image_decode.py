"""Any image Pillow opens → the 8-bit RGB every model input starts from.

The one decode behind the plain path (`datasets.load_rgb`), image stores and the pixel cache
(`image_store`, `pixel_cache`) and the checks (`image_check`), so all of them see the same pixels.

- 8-bit modes (1, L, P, RGB, CMYK, YCbCr, LAB, …) convert as Pillow converts them.
- Alpha (LA, PA, RGBA, P with transparency) is dropped, not composited: the original read every image
  with `convert("RGB")`, so an RGBA face gives the pixels it gave there.
- 16-bit (I;16, I;16B, …) scales 0..65535 to 0..255. 32-bit integer (I) is read as 16-bit data — what
  a 16-bit PNG or TIFF holds — and refused outside 0..65535. Float (F) is read as 0..1 and refused
  outside it or with NaN. Pillow's own convert clips all three to 0..255: a 16-bit face turns white.
- An image over the pixel limit (`[data] max_image_pixels`, Pillow's default) is refused from its header,
  before anything is decoded: a 14000 × 14000 file would take 600 MB per copy in every loader worker.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fmae.errors import FmaeError

EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                             "LAB", "HSV"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
MODES = EIGHT_BIT_MODES | SIXTEEN_BIT_MODES | {"I", "F"}
LIMIT_HINT = "raise [data] max_image_pixels in fmae.toml to allow it"
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

# fmae refuses every image over the limit itself (open_image), so Pillow's warning between the limit
# and twice it would only repeat that, once per worker.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageRefused(ValueError):
    """Why an image cannot be used, without its path (callers say where)."""


def set_max_pixels(limit: int | None) -> None:
    """The process's pixel limit (Pillow's global, which its own bomb check reads too)."""
    if limit is not None and Image.MAX_IMAGE_PIXELS != int(limit):
        Image.MAX_IMAGE_PIXELS = int(limit)


def max_pixels() -> int:
    return int(Image.MAX_IMAGE_PIXELS or 0)


def _over_limit(pixels: int, shape: str) -> ImageRefused:
    return ImageRefused(f"{shape}{pixels:,} pixels, over the {max_pixels():,}-pixel limit (a guard against "
                        f"decompression bombs; {LIMIT_HINT})")


def open_image(source: Path | bytes) -> Image.Image:
    """Open an image (its header only) and refuse one over the pixel limit before any pixel is decoded."""
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)
    except Image.DecompressionBombError as e:  # Pillow's own check, at twice the limit
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _over_limit(int(found.group(1)), "") if found else ImageRefused(f"{e} ({LIMIT_HINT})") from None
    if max_pixels() and img.width * img.height > max_pixels():
        img.close()
        raise _over_limit(img.width * img.height, f"{img.width} × {img.height} = ")
    if img.mode not in MODES:
        mode = img.mode
        img.close()
        raise ImageRefused(f"image mode {mode} is not one fmae reads — save it as 8-bit RGB (JPEG or PNG)")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """A decoded image of any supported mode as 8-bit RGB (see the module's notes for each mode)."""
    mode = img.mode
    if mode in EIGHT_BIT_MODES:
        return img.convert("RGB")
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        a = np.asarray(img)
        if mode == "I":
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi > 65535:
                raise ImageRefused(f"a 32-bit integer image with values {lo}..{hi}: fmae reads mode I as 16-bit "
                                   "data (0..65535) — save it as 8-bit RGB (JPEG or PNG)")
        gray = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # rounded 65535 → 255
    elif mode == "F":
        a = np.asarray(img, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ImageRefused("a float image holding NaN or infinity — save it as 8-bit RGB (JPEG or PNG)")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 1:
            raise ImageRefused(f"a float image with values {lo:g}..{hi:g}: fmae reads mode F as 0..1 — save it "
                               "as 8-bit RGB (JPEG or PNG)")
        gray = np.rint(a * 255).astype(np.uint8)
    else:
        raise ImageRefused(f"image mode {mode} is not one fmae reads — save it as 8-bit RGB (JPEG or PNG)")
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))


def decode_rgb(source: Path | bytes, where: str, fix: str = "run `fmae data check` to list every bad image",
               limit: int | None = None) -> Image.Image:
    """Decode one image as 8-bit RGB, or raise one FmaeError line naming `where`, why, and what to do."""
    set_max_pixels(limit)
    try:
        with open_image(source) as img:
            img.load()
            return to_rgb(img)
    except ImageRefused as e:
        raise FmaeError(f"{where}: {e}") from None
    except FileNotFoundError:
        raise FmaeError(f"{where}: image missing — {fix}") from None
    except UnidentifiedImageError:
        raise FmaeError(f"{where}: image cannot be decoded (not an image: cannot identify the format) — "
                        f"{fix}") from None
    except DECODE_ERRORS as e:
        raise FmaeError(f"{where}: image cannot be decoded ({reason(e)}) — {fix}") from None


def reason(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
