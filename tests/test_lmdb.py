"""Image stores: `fmae data lmdb` packs real files into a real LMDB, read back, resumed and checked."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from fmae.data.image_files import list_images
from fmae.data.image_store import ImageFolderList, ImageStore, open_image_source
from fmae.data.store_check import check_store
from fmae.data.store_pack import pack
from fmae.errors import FmaeError
from conftest import assert_one_line_error, run_fmae


def _image(seed: int, size=(24, 18)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _write(path: Path, seed: int, size=(24, 18)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _image(seed, size).save(path, format="PNG" if path.suffix == ".png" else "JPEG", quality=90)
    return path


def _sources(tmp_path: Path) -> tuple[Path, Path, dict[str, Path]]:
    """Two source folders (nested, JPEG and PNG, plus files that are not images by suffix)."""
    a, b = tmp_path / "src" / "faces_a", tmp_path / "src" / "faces_b"
    files = {}
    for i in range(7):
        files[f"faces_a/{'sub' if i % 2 else 'top'}/{i:02d}.jpg"] = _write(a / ("sub" if i % 2 else "top") / f"{i:02d}.jpg", i)
    for i in range(5):
        files[f"faces_b/x{i}.png"] = _write(b / f"x{i}.png", 100 + i, size=(20 + i, 16))
    (a / "notes.txt").write_text("not an image")
    (a / ".hidden.jpg").write_bytes(b"ignored: hidden")
    return a, b, files


def _stored(store: ImageStore) -> dict[str, bytes]:
    return {store.key(i): store.read_bytes(i) for i in range(len(store))}


def test_pack_two_sources_reads_back_every_file_byte_for_byte(tmp_path):
    a, b, files = _sources(tmp_path)
    dst = tmp_path / "store"
    result = run_fmae("data", "lmdb", a, b, "--out", dst)
    assert result.returncode == 0, result.stderr
    assert f"{dst}: 12 images (12 images stored, 0 already present, 0 duplicates, 0 unreadable)" in result.stdout
    store = ImageStore(dst)
    assert len(store) == 12
    assert [store.key(i) for i in range(12)] == sorted(files)  # sources in order, files sorted within
    assert _stored(store) == {k: p.read_bytes() for k, p in files.items()}
    assert store.sources == {"faces_a": 7, "faces_b": 5}
    img = store.read_image(0)
    assert img.mode == "RGB" and img.size == (24, 18)
    assert store.read_image(-1).size == (24, 16)

    check = run_fmae("data", "check", dst)
    assert check.returncode == 0, check.stderr
    assert "12 images from 2 sources" in check.stdout and "ok: no problems" in check.stdout
    assert "faces_a" in check.stdout and "faces_b" in check.stdout
    assert check_store(dst) == []


def test_max_side_shrinks_large_images_and_keeps_small_ones(tmp_path):
    src = tmp_path / "big"
    _write(src / "wide.png", 1, size=(80, 40))
    _write(src / "tall.jpg", 2, size=(30, 90))
    small = _write(src / "small.jpg", 3, size=(20, 10))
    dst = tmp_path / "store"
    result = run_fmae("data", "lmdb", src, "--out", dst, "--max-side", "32")
    assert result.returncode == 0, result.stderr
    store = ImageStore(dst)
    sizes = {store.key(i): store.read_image(i).size for i in range(len(store))}
    assert sizes == {"big/small.jpg": (20, 10), "big/tall.jpg": (11, 32), "big/wide.png": (32, 16)}
    assert store.read_bytes([store.key(i) for i in range(3)].index("big/small.jpg")) == small.read_bytes()
    resized = store.read_bytes([store.key(i) for i in range(3)].index("big/wide.png"))
    assert Image.open(io.BytesIO(resized)).format == "JPEG"
    assert store.max_side == 32
    # Resuming with another --max-side would mix sizes: refused.
    again = run_fmae("data", "lmdb", src, "--out", dst, "--max-side", "64")
    assert_one_line_error(again, "--max-side 32")


def test_duplicates_and_unreadable_files_are_reported_not_skipped(tmp_path):
    a, b, files = _sources(tmp_path)
    dup = b / "copy_of_a00.jpg"
    shutil.copyfile(files["faces_a/top/00.jpg"], dup)
    empty = a / "empty.jpg"
    empty.write_bytes(b"")
    truncated = a / "sub" / "truncated.jpg"
    truncated.write_bytes(files["faces_a/top/02.jpg"].read_bytes()[:300])
    text = b / "text.png"
    text.write_text("this is not a PNG")
    dst = tmp_path / "store"
    result = run_fmae("data", "lmdb", a, b, "--out", dst)
    assert result.returncode == 1, (result.stdout, result.stderr)
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 3
    assert any(str(empty) in p and "empty (0 bytes)" in p for p in problems)
    assert any(str(truncated) in p and "cannot be decoded" in p for p in problems)
    assert any(str(text) in p and "not an image" in p for p in problems)
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(dup) in warnings[0] and str(files["faces_a/top/00.jpg"]) in warnings[0]
    assert "1 duplicate, 3 unreadable" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "3 unreadable files not stored" in errors[0] and "Traceback" not in result.stderr

    store = ImageStore(dst)
    assert _stored(store) == {k: p.read_bytes() for k, p in files.items()}  # every good image, once
    assert store.source_info["faces_b"]["duplicates"] == 1
    assert store.source_info["faces_a"]["unreadable"] == 2
    assert run_fmae("data", "check", dst).returncode == 0

    # A rerun reports the same problems again (nothing is silently remembered as fine).
    rerun = run_fmae("data", "lmdb", a, b, "--out", dst)
    assert rerun.returncode == 1 and "0 images stored, 12 already present, 1 duplicate, 3 unreadable" in rerun.stdout


class _Stop(Exception):
    pass


def test_an_interrupted_pack_resumes_to_the_same_store(tmp_path):
    a, b, files = _sources(tmp_path)
    shutil.copyfile(files["faces_b/x1.png"], b / "x9_dup.png")
    dst = tmp_path / "store"

    def stop_after(n):
        def progress(done, total):
            assert total == 13
            if done >= n:
                raise _Stop
        return progress

    with pytest.raises(_Stop):
        pack([a, b], dst, progress=stop_after(9), commit_every=4)
    with pytest.raises(FmaeError, match="unfinished fmae image store"):
        ImageStore(dst)  # no index yet: a reader never sees half a store
    assert_one_line_error(run_fmae("data", "check", dst), "unfinished", "rerun")

    result = run_fmae("data", "lmdb", a, b, "--out", dst)
    assert result.returncode == 0, result.stderr
    assert "12 images (4 images stored, 8 already present, 1 duplicate, 0 unreadable)" in result.stdout
    store = ImageStore(dst)
    keys = [store.key(i) for i in range(len(store))]
    assert keys == sorted(files) and len(set(keys)) == len(keys)
    assert _stored(store) == {k: p.read_bytes() for k, p in files.items()}

    # Same store as an uninterrupted pack, and a third run has nothing left to do.
    fresh = tmp_path / "fresh"
    pack([a, b], fresh)
    assert _stored(ImageStore(fresh)) == _stored(store)
    third = pack([a, b], dst)
    assert (third.stored, third.already_present, len(third.duplicates)) == (0, 12, 1)


def test_map_grows_and_sources_can_be_added_and_refreshed(tmp_path):
    a, b, files = _sources(tmp_path)
    dst = tmp_path / "store"
    report = pack([a], dst, map_size=64 * 1024)  # far too small: grown on MapFullError
    assert report.images == 7
    pack([b], dst, map_size=64 * 1024)  # a second source joins the same store
    assert _stored(ImageStore(dst)) == {k: p.read_bytes() for k, p in files.items()}
    # A file removed from a source leaves the store on the next pack; a file added joins it.
    files.pop("faces_a/top/00.jpg").unlink()
    files["faces_a/new.png"] = _write(a / "new.png", 55)
    report = pack([a], dst)
    assert (report.stored, report.already_present, report.removed) == (1, 6, 1)
    store = ImageStore(dst)
    assert _stored(store) == {k: p.read_bytes() for k, p in files.items()}
    assert check_store(dst) == []


def test_check_reports_a_corrupt_entry_by_key(tmp_path):
    a, b, files = _sources(tmp_path)
    dst = tmp_path / "store"
    pack([a, b], dst)
    env = lmdb.open(str(dst))
    with env.begin(write=True) as txn:
        txn.put(b"img/faces_a/sub/03.jpg", b"garbage, not an image")
        txn.put(b"img/faces_a/top/04.jpg", files["faces_a/top/04.jpg"].read_bytes()[:300])  # truncated
        txn.delete(b"img/faces_b/x2.png")
    env.close()
    result = run_fmae("data", "check", dst)
    assert_one_line_error(result, str(dst), "3 problems found")
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 3
    assert any(f"{dst}:faces_a/sub/03.jpg" in p and "not an image" in p for p in problems)
    assert any(f"{dst}:faces_a/top/04.jpg" in p and "cannot be decoded" in p for p in problems)
    assert any(f"{dst}:faces_b/x2.png" in p and "not in the store" in p for p in problems)
    store = ImageStore(dst)
    keys = [store.key(i) for i in range(len(store))]
    with pytest.raises(FmaeError, match=r"store: entry faces_a/top/04.jpg cannot be decoded"):
        store.read_image(keys.index("faces_a/top/04.jpg"))
    with pytest.raises(FmaeError, match=r"store: entry faces_b/x2.png is in the index but not in the store"):
        store.read_image(keys.index("faces_b/x2.png"))
    quick = run_fmae("data", "check", dst, "--no-decode")  # the missing entry is still found
    assert_one_line_error(quick, "1 problems found")


class _Pixels:
    def __init__(self, store):
        self.store = store

    def __len__(self):
        return len(self.store)

    def __getitem__(self, i):
        import torch

        return torch.from_numpy(np.asarray(self.store.read_image(i))), i


def test_store_works_in_dataloader_workers_after_pickling(tmp_path):
    import torch
    from torch.utils.data import DataLoader

    a, b, files = _sources(tmp_path)
    dst = tmp_path / "store"
    pack([a, b], dst)
    store = ImageStore(dst)
    expected = [np.asarray(store.read_image(i)) for i in range(len(store))]  # the parent's env is open now
    clone = pickle.loads(pickle.dumps(store))
    assert clone._env is None and len(clone) == len(store)
    for ctx in ("fork", "spawn"):
        loader = DataLoader(_Pixels(clone), batch_size=None, num_workers=2, multiprocessing_context=ctx)
        seen = {int(i): x.numpy() for x, i in loader}
        assert sorted(seen) == list(range(len(store)))
        assert all(np.array_equal(seen[i], expected[i]) for i in seen)
    assert torch.is_tensor(next(iter(DataLoader(_Pixels(store), batch_size=None, num_workers=2)))[0])


def test_folders_and_stores_through_one_interface(tmp_path):
    a, b, files = _sources(tmp_path)
    folder = open_image_source(a)
    assert isinstance(folder, ImageFolderList)
    assert [folder.key(i) for i in range(len(folder))] == list_images(a) == [k.split("/", 1)[1] for k in sorted(files)
                                                                          if k.startswith("faces_a/")]
    assert folder.read_image(0).mode == "RGB"
    assert pickle.loads(pickle.dumps(folder)).read_bytes(3) == folder.read_bytes(3)
    dst = tmp_path / "store"
    pack([a], dst)
    assert isinstance(open_image_source(dst), ImageStore)
    assert isinstance(open_image_source(dst / "data.mdb"), ImageStore)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FmaeError, match="no images"):
        open_image_source(tmp_path / "empty")
    with pytest.raises(FmaeError, match="no such"):
        open_image_source(tmp_path / "nowhere")


def test_bad_input_is_one_line(tmp_path):
    a, b, files = _sources(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert_one_line_error(run_fmae("data", "check", plain), "not an fmae image store (no __index__)",
                          "fmae data lmdb")
    with pytest.raises(FmaeError, match="not an fmae image store"):
        ImageStore(plain)
    with pytest.raises(FmaeError, match="not an fmae image store"):
        ImageStore(a)
    other = tmp_path / "other" / "faces_a"
    _write(other / "1.jpg", 9)
    assert_one_line_error(run_fmae("data", "lmdb", a, other, "--out", tmp_path / "s"), "both named 'faces_a'")
    assert_one_line_error(run_fmae("data", "lmdb", tmp_path / "missing", "--out", tmp_path / "s"),
                          "missing: no such source folder")
    assert_one_line_error(run_fmae("data", "lmdb", plain, "--out", tmp_path / "s"), "no images")
    assert_one_line_error(run_fmae("data", "lmdb", a, "--out", b), "not an image store")
    assert_one_line_error(run_fmae("data", "lmdb", a, "--out", tmp_path / "s", "--max-side", "0"), "--max-side")
    assert not (tmp_path / "s").exists()
    # A benchmark name still means the benchmark.
    assert "unknown dataset" in run_fmae("data", "check", "nosuchbench").stderr
