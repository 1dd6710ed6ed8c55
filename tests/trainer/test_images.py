"""trainer.images: folders and archives of images to one uint8 (N, C, R, R) array."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.images import ImageSourceError, Limits, archive_kind, read_images, zip_holds_arrays


def png(color: tuple[int, int, int] | int, size: tuple[int, int] = (20, 10), fmt="PNG") -> bytes:
    mode = "L" if isinstance(color, int) else "RGB"
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format=fmt)
    return out.getvalue()


def halves(size: tuple[int, int]) -> bytes:
    """Left half black, right half white."""
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 255, 255), (size[0] // 2, 0, size[0], size[1]))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def noise_png() -> bytes:
    out = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


MEMBERS = {
    "a/red.png": png((255, 0, 0)),
    "b.jpg": png((0, 0, 255), fmt="JPEG"),
    "c.webp": png((0, 255, 0), fmt="WEBP"),
    "d.bmp": png((255, 255, 0), fmt="BMP"),
    "notes.txt": b"not an image",
    "broken.png": noise_png()[:1500],  # header whole, pixel data cut short
    "e.gif": png((9, 9, 9), fmt="GIF"),
}


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "folder"])
def test_every_source_gives_the_usable_images_and_names_the_rest(tmp_path, kind):
    if kind == "zip":
        source = write_zip(tmp_path / "x.zip", MEMBERS)
    elif kind == "folder":
        source = tmp_path / "dir"
        for name, data in MEMBERS.items():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes(data)
    else:
        mode = "w:gz" if kind == "tar.gz" else "w"
        source = write_tar(tmp_path / f"x.{kind}", MEMBERS, mode)
    result = read_images(source, 16)
    assert result.array.dtype == np.uint8 and result.array.shape == (4, 3, 16, 16)
    reasons = {s.name: s.reason for s in result.skipped}
    assert set(reasons) == {"notes.txt", "broken.png", "e.gif"}
    assert reasons["notes.txt"] == "not an image"
    assert reasons["broken.png"].startswith("corrupt")
    assert "GIF is not one of PNG, JPEG, WEBP, BMP" == reasons["e.gif"]
    means = result.array.reshape(4, 3, -1).mean(-1).round()
    assert means[0].tolist() == [255, 0, 0]  # a/red.png comes first in name order


def test_gray_images_give_one_channel_unless_three_are_asked_for(tmp_path):
    source = write_zip(tmp_path / "g.zip", {"1.png": png(40), "2.png": png((90, 90, 90))})
    assert read_images(source, 8).array.shape == (2, 1, 8, 8)
    three = read_images(source, 8, channels=3).array
    assert three.shape == (2, 3, 8, 8) and (three[:, 0] == three[:, 2]).all()
    colour = write_zip(tmp_path / "c.zip", {"1.png": png((200, 10, 10))})
    one = read_images(colour, 8, channels=1).array
    assert (
        one.shape == (1, 1, 8, 8)
        and int(one.mean().round()) == (299 * 200 + 587 * 10 + 114 * 10) // 1000
    )


def test_center_crop_keeps_the_middle_and_resize_squashes(tmp_path):
    source = write_zip(tmp_path / "h.zip", {"wide.png": halves((64, 16))})
    center = read_images(source, 16, channels=1).array[0, 0].astype(int)
    assert center[:, :7].max() < 30 and center[:, 9:].min() > 225  # the middle 16 columns
    squashed = read_images(source, 16, channels=1, crop="resize").array[0, 0].astype(int)
    assert squashed[:, :7].max() < 30 and squashed[:, 9:].min() > 225
    tall = write_zip(tmp_path / "t.zip", {"tall.png": halves((16, 64))})
    assert read_images(tall, 16).array.shape == (1, 1, 16, 16)


def test_too_many_pixels_and_a_member_that_inflates_too_far_are_skipped(tmp_path):
    big = png((5, 5, 5), size=(400, 400))
    bomb = b"\0" * 5_000_000  # deflates to a few KB
    source = write_zip(tmp_path / "b.zip", {"big.png": big, "bomb.png": bomb, "ok.png": png(7)})
    assert (tmp_path / "b.zip").stat().st_size < 100_000
    result = read_images(source, 8, limits=Limits(max_pixels=100_000, max_member_bytes=1_000_000))
    reasons = {s.name: s.reason for s in result.skipped}
    assert reasons["big.png"].startswith("too many pixels (400 x 400")
    assert reasons["bomb.png"] == "larger than 1,000,000 bytes once inflated"
    assert result.count == 1


def test_member_names_are_never_paths(tmp_path, monkeypatch):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)  # an extraction would land under tmp_path, where it is looked for
    names = {"../../escaped.png": png(3), "inside.png": png(4), "/abs-ganforge-test.png": png(5)}
    result = read_images(write_tar(tmp_path / "evil.tar", names), 8)
    assert result.count == 3
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "evil.tar"]
    assert not Path("/abs-ganforge-test.png").exists()


def test_a_header_past_pillows_own_pixel_limit_is_skipped_not_raised(tmp_path):
    bmp = bytearray(png(6, size=(4, 4), fmt="BMP"))
    bmp[18:26] = (20_000).to_bytes(4, "little") + (20_000).to_bytes(4, "little")  # 400 MP
    source = write_zip(tmp_path / "forged.zip", {"forged.bmp": bytes(bmp), "ok.png": png(7)})
    result = read_images(source, 8, limits=Limits(max_pixels=10**12))  # ours lets it pass
    assert result.count == 1
    assert [(s.name, s.reason.split(" (")[0]) for s in result.skipped] == [
        ("forged.bmp", "too many pixels")
    ]


def test_no_usable_image_and_bad_options_say_why(tmp_path):
    source = write_zip(tmp_path / "n.zip", {"a.txt": b"hello", "b.txt": b"x"})
    with pytest.raises(
        ImageSourceError, match=r"no usable image among 2 files \(e.g. 'a.txt': not an image\)"
    ):
        read_images(source, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSourceError, match="no files in it"):
        read_images(tmp_path / "empty", 8)
    (tmp_path / "plain.bin").write_bytes(b"\x00" * 600)
    with pytest.raises(ImageSourceError, match="not a folder, .zip, .tar or .tar.gz"):
        read_images(tmp_path / "plain.bin", 8)
    for kwargs, field in (
        ({"resolution": 4}, "resolution"),
        ({"resolution": 8, "channels": 2}, "channels"),
        ({"resolution": 8, "crop": "fill"}, "crop"),
    ):
        with pytest.raises(ImageSourceError, match=f"^{field}: must be"):
            read_images(source, **kwargs)


def test_a_zip_of_images_is_told_from_an_npz(tmp_path):
    npz = tmp_path / "a.npz"
    np.savez(npz, x=np.zeros((2, 2)))
    images = write_zip(tmp_path / "i.zip", {"1.png": png(1)})
    assert archive_kind(npz.read_bytes()[:512]) == "zip" == archive_kind(images.read_bytes()[:512])
    assert zip_holds_arrays(npz) and not zip_holds_arrays(images)
