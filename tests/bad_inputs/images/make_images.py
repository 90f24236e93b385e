"""Writes the image cases added for issue 14 (run from this folder; the files are committed beside it).

damaged_header.jpg   a real JPEG whose quantisation-table header bytes are overwritten; its end marker is
                     intact, so a check of the last bytes alone passes it
bomb.png             14000 × 14000 (196 M pixels, 24 KB as a 1-bit PNG): a decompression bomb
float_out_of_range.tif  a mode F (32-bit float) TIFF with values up to 4.0: fmae reads F as 0..1
"""

from pathlib import Path

import numpy as np
from PIL import Image

here = Path(__file__).resolve().parent
rng = np.random.default_rng(14)
face = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
face.save(here / "damaged_header.jpg", "JPEG", quality=90)
data = bytearray((here / "damaged_header.jpg").read_bytes())
assert data[20:22] == b"\xff\xdb"  # the first DQT segment (JFIF APP0 is 18 bytes before it)
data[20:36] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
assert data[-2:] == b"\xff\xd9"
(here / "damaged_header.jpg").write_bytes(bytes(data))
Image.new("1", (14000, 14000)).save(here / "bomb.png")
Image.fromarray(np.linspace(0, 4, 32 * 32, dtype=np.float32).reshape(32, 32)).save(here / "float_out_of_range.tif")
