"""fmae's one image decode (fmae/data/image_decode.py): every mode Pillow opens becomes the right 8-bit RGB
or a one-line refusal, the same through every reader (plain files, image folders and stores, the pixel
cache), and damaged files and decompression bombs are refused by name — real files written here."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error, run_fmae
from fmae.config import DEFAULT_MAX_IMAGE_PIXELS
from fmae.data import image_decode, image_store, pixel_cache, store_pack
from fmae.data.lmdb_env import release_readers
from fmae.data.torch.datasets import ImageSet, load_rgb
from fmae.data.image_check import check_image_files, image_problem
from fmae.errors import FmaeError


@pytest.fixture(autouse=True)
def _pixel_limit():
    """Tests that lower the process's pixel limit put Pillow's default back."""
    yield
    image_decode.set_max_pixels(DEFAULT_MAX_IMAGE_PIXELS)


def rgb(path: Path) -> np.ndarray:
    return np.asarray(load_rgb(path))


GRAY16 = np.array([[0, 257, 40000, 65535]], dtype=np.uint16)
GRAY16_AS_8 = [0, 1, 156, 255]  # round(v * 255 / 65535)


def write(tmp_path: Path, name: str, img: Image.Image, expect_mode: str) -> Path:
    path = tmp_path / name
    img.save(path)
    with Image.open(path) as back:
        assert back.mode == expect_mode, (name, back.mode)  # the file really holds that mode
    return path


def test_pillow_default_is_the_default_limit():
    assert DEFAULT_MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485


def test_eight_bit_modes(tmp_path):
    gray = np.array([[0, 60, 200, 255]], dtype=np.uint8)
    colours = np.array([[[255, 0, 0], [0, 128, 0], [10, 20, 30], [255, 255, 255]]], dtype=np.uint8)
    alpha = np.array([[0, 10, 128, 255]], dtype=np.uint8)

    one = write(tmp_path, "one.png", Image.fromarray(gray > 100), "1")
    assert rgb(one)[0, :, 0].tolist() == [0, 0, 255, 255] and rgb(one).shape == (1, 4, 3)
    assert (rgb(write(tmp_path, "l.png", Image.fromarray(gray), "L")) == gray[..., None]).all()
    la = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])
    assert (rgb(write(tmp_path, "la.png", la, "LA")) == gray[..., None]).all()  # alpha dropped, not composited
    assert (rgb(write(tmp_path, "rgb.png", Image.fromarray(colours), "RGB")) == colours).all()
    rgba = Image.fromarray(np.concatenate([colours, alpha[..., None]], axis=2))
    assert (rgb(write(tmp_path, "rgba.png", rgba, "RGBA")) == colours).all()
    pal = Image.fromarray(colours).quantize(colors=4, method=Image.Quantize.MEDIANCUT)
    assert (rgb(write(tmp_path, "p.png", pal, "P")) == np.asarray(pal.convert("RGB"))).all()
    assert sorted(map(tuple, rgb(tmp_path / "p.png")[0].tolist())) == sorted(map(tuple, colours[0].tolist()))
    pa = pal.convert("PA")
    assert (rgb(write(tmp_path, "pa.tif", pa, "PA")) == colours).all()
    cmyk = Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [0, 128, 0, 0]]], np.uint8), "CMYK")
    assert rgb(write(tmp_path, "cmyk.tif", cmyk, "CMYK"))[0].tolist() == [[255, 255, 255], [0, 255, 255], [0, 0, 0],
                                                                          [255, 127, 255]]
    ycc = Image.fromarray(colours).convert("YCbCr")
    back = rgb(write(tmp_path, "ycbcr.tif", ycc, "YCbCr")).astype(int)
    assert np.abs(back - colours).max() <= 3  # YCbCr rounds on the way there and back
    cmyk_jpeg = write(tmp_path, "cmyk.jpg", Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "CMYK")
    assert (rgb(cmyk_jpeg) >= 250).all()


def test_sixteen_bit_integer_and_float_modes_are_scaled_not_clipped(tmp_path):
    png16 = write(tmp_path, "gray16.png", Image.fromarray(GRAY16), "I;16")
    assert np.asarray(Image.open(png16).convert("RGB"))[0, :, 0].tolist() == [0, 255, 255, 255]  # Pillow: white
    assert rgb(png16)[0, :, 0].tolist() == GRAY16_AS_8 and (rgb(png16) == rgb(png16)[..., :1]).all()
    big_endian = write(tmp_path, "gray16b.tif", Image.fromarray(GRAY16).convert("I").convert("I;16B"), "I;16B")
    assert rgb(big_endian)[0, :, 0].tolist() == GRAY16_AS_8
    int32 = write(tmp_path, "int32.tif", Image.fromarray(GRAY16.astype(np.int32)), "I")
    assert rgb(int32)[0, :, 0].tolist() == GRAY16_AS_8
    floats = write(tmp_path, "float.tif", Image.fromarray(np.array([[0, 0.25, 0.5, 1.0]], np.float32)), "F")
    assert rgb(floats)[0, :, 0].tolist() == [0, 64, 128, 255]


@pytest.mark.parametrize("name, values, message", [
    ("negative.tif", np.array([[-5, 0, 300, 9]], np.int32), "a 32-bit integer image with values -5..300"),
    ("huge.tif", np.array([[0, 70000]], np.int32), "a 32-bit integer image with values 0..70000"),
    ("hdr.tif", np.array([[0, 4.5]], np.float32), "a float image with values 0..4.5: fmae reads mode F as 0..1"),
    ("nan.tif", np.array([[0, np.nan]], np.float32), "a float image holding NaN or infinity"),
])
def test_values_fmae_cannot_scale_are_refused_in_one_line_everywhere(tmp_path, name, values, message):
    path = tmp_path / name
    Image.fromarray(values).save(path)
    with pytest.raises(FmaeError) as e:
        load_rgb(path)
    assert str(e.value).startswith(f"{path}: {message}") and "save it as 8-bit RGB" in str(e.value)
    assert "\n" not in str(e.value)
    assert image_problem(path, decode=True).startswith(message)  # fmae data check
    with pytest.raises(FmaeError, match=f"^{path}: {message[:20]}"):  # before a run's first step
        check_image_files({"fold 1 train split": [path]})


def test_every_reader_decodes_alike(tmp_path):
    """Plain files, image folders/stores and the pixel cache share one decode: a 16-bit PNG is the same
    image through each."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.tile(GRAY16, (4, 1))).save(folder / "a.png")
    Image.fromarray(np.array([[0, 0.5], [1, 0.25]], np.float32)).save(folder / "b.tif")
    listing = image_store.ImageFolderList(folder)
    for i in range(len(listing)):
        path = listing.file(i)
        assert np.array_equal(np.asarray(listing.read_image(i)), rgb(path))
        assert np.array_equal(np.asarray(image_store.decode_rgb(path.read_bytes(), str(path))), rgb(path))
    store_pack.pack([folder], tmp_path / "store")
    store = image_store.ImageStore(tmp_path / "store")
    for i in range(len(store)):
        assert np.array_equal(np.asarray(store.read_image(i)), rgb(folder / store.key(i).split("/", 1)[1]))
    release_readers(tmp_path / "store")
    assert pixel_cache.decode_rgb is image_store.decode_rgb
    Image.fromarray(np.array([[2.0]], np.float32)).save(folder / "bad.tif")
    with pytest.raises(FmaeError) as e:
        image_store.ImageFolderList(folder).read_image(2)
    assert str(e.value).startswith(f"{folder}/bad.tif: a float image with values 2..2")


def damaged_jpeg(path: Path) -> Path:
    """A real JPEG whose quantisation table's header bytes are overwritten; the end marker is intact."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path, "JPEG", quality=90)
    data = bytearray(path.read_bytes())
    assert data[20:22] == b"\xff\xdb" and data[-2:] == b"\xff\xd9"
    data[20:36] = bytes(range(16))
    path.write_bytes(bytes(data))
    return path


def test_damaged_images_and_bombs_are_one_line_errors_naming_the_image(tmp_path):
    bad = damaged_jpeg(tmp_path / "damaged.jpg")
    with pytest.raises(FmaeError) as e:
        load_rgb(bad)
    assert str(e.value).startswith(f"{bad}: image cannot be decoded (") and "fmae data check" in str(e.value)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (14000, 14000)).save(bomb)  # 24 KB on disk, 196 M pixels decoded
    with pytest.raises(FmaeError) as e:
        load_rgb(bomb)
    assert str(e.value) == (f"{bomb}: 196,000,000 pixels, over the 89,478,485-pixel limit (a guard against "
                            "decompression bombs; raise [data] max_image_pixels in fmae.toml to allow it)")
    with pytest.raises(FmaeError) as e:
        check_image_files({"fold 1 train split": [bad, bomb]})
    assert str(e.value).startswith(f"{bad}: image cannot be decoded") and "1 more bad images" in str(e.value)


def test_the_limit_is_a_setting_and_travels_with_the_dataset_to_workers(tmp_path):
    img = tmp_path / "big.png"
    Image.new("RGB", (300, 200), (9, 9, 9)).save(img)
    image_decode.set_max_pixels(50_000)
    assert image_problem(img, decode=True, reduced=True) == ("300 × 200 = 60,000 pixels, over the 50,000-pixel limit "
                                                             "(a guard against decompression bombs; raise [data] "
                                                             "max_image_pixels in fmae.toml to allow it)")
    data = ImageSet([img], np.zeros((1, 2), np.float32), transform=np.asarray)
    image_decode.set_max_pixels(DEFAULT_MAX_IMAGE_PIXELS)
    worker_copy = pickle.loads(pickle.dumps(data))  # what a spawned worker gets
    with pytest.raises(FmaeError, match="over the 50,000-pixel limit"):
        worker_copy[0]
    image_decode.set_max_pixels(60_000)
    assert load_rgb(img).size == (300, 200)


def test_data_check_reads_the_limit_from_fmae_toml(tmp_path):
    root = tmp_path / "root"
    for i, subject in enumerate(("F001", "F003", "F004")):
        (root / f"{subject}_T1").mkdir(parents=True)
        Image.new("RGB", (120 + 200 * (i == 2), 100), (50, 60, 70)).save(root / f"{subject}_T1" / "frame_1.jpg")
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(f'{{"img_path": "{s}_T1/frame_1.jpg", "AUs": [1]}}\n' for s in ("F001", "F003", "F004")))
    config = tmp_path / "fmae.toml"
    config.write_text("[data]\nmax_image_pixels = 20000\n")
    refused = run_fmae("data", "check", "bp4d", "--root", root, "--labels", labels, cwd=tmp_path)
    assert refused.returncode == 2
    assert (f"problem: {root}/F004_T1/frame_1.jpg: 320 × 100 = 32,000 pixels, over the 20,000-pixel limit"
            in refused.stderr), refused.stderr
    config.write_text("[data]\nmax_image_pixels = 40000\n")
    assert run_fmae("data", "check", "bp4d", "--root", root, "--labels", labels, cwd=tmp_path).returncode == 0


def test_data_lmdb_and_data_cache_read_the_limit_from_fmae_toml(tmp_path):
    """Packing a store and filling a pixel cache decode images too: the same limit as training's."""
    src = tmp_path / "faces"
    src.mkdir()
    Image.new("RGB", (120, 100), (50, 60, 70)).save(src / "small.png")
    Image.new("RGB", (320, 100), (50, 60, 70)).save(src / "big.png")
    config = tmp_path / "fmae.toml"
    config.write_text("[data]\nmax_image_pixels = 20000\n")
    packed = run_fmae("data", "lmdb", src, "--out", tmp_path / "store", cwd=tmp_path)
    assert packed.returncode == 1, packed.stderr
    assert f"{src}/big.png" in packed.stderr and "320 × 100 = 32,000 pixels, over the 20,000-pixel limit" in packed.stderr
    assert "1 images stored" in packed.stdout
    assert_one_line_error(run_fmae("data", "cache", src, "--size", "32", "--out", tmp_path / "cache", cwd=tmp_path),
                          "big.png", "over the 20,000-pixel limit")
    config.write_text("[data]\nmax_image_pixels = 40000\n")
    packed = run_fmae("data", "lmdb", src, "--out", tmp_path / "store", cwd=tmp_path)
    assert packed.returncode == 0 and "1 images stored, 1 already present" in packed.stdout, packed.stderr
    cached = run_fmae("data", "cache", src, "--size", "32", "--out", tmp_path / "cache", cwd=tmp_path)
    assert cached.returncode == 0 and ": 2 images of 32 px" in cached.stdout, cached.stderr
