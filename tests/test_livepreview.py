"""The live preview: bands pass through unchanged; the JPEG does not depend on how the output
is cut into bands; constant stays constant; rows not finished are grey; only earlier
previews (or empty files) are replaced."""
import numpy as np
import pytest
from PIL import Image

from tiledsr.errors import InputError
from tiledsr.livepreview import PREVIEW_SIDE, check_preview_path, preview_bands

RNG = np.random.default_rng(7)


def run(image, rows, path, every=0.0):
    seen = []
    bands = [image[y:y + rows] for y in range(0, image.shape[0], rows)]
    out = list(preview_bands(iter(bands), image.shape[:2], path, every, lambda p, r: seen.append(r)))
    return out, bands, seen


@pytest.mark.parametrize("shape", [(741, 1003, 3), (37, 5, 4), (1, 1, 1), (1200, 97, 2)])
def test_bands_pass_through_and_cuts_do_not_matter(tmp_path, shape):
    image = RNG.random(shape, dtype=np.float32)
    pictures = []
    for rows in (1, 13, shape[0]):
        out, bands, seen = run(image, rows, tmp_path / f"p{rows}.jpg", every=3600)
        assert all(a is b for a, b in zip(out, bands))
        assert seen == [shape[0]]  # rewritten once at the end when the interval is long
        with Image.open(tmp_path / f"p{rows}.jpg") as im:
            assert im.format == "JPEG" and max(im.size) <= PREVIEW_SIDE
            pictures.append(np.asarray(im.convert("RGB")))
    assert all(np.array_equal(pictures[0], p) for p in pictures[1:])


@pytest.mark.parametrize("value, dtype, expect", [(0.25, np.float32, 64), (200, np.uint8, 200),
                                                  (65535, np.uint16, 255)])
def test_constant_stays_constant(tmp_path, value, dtype, expect):
    image = np.full((1500, 1000, 3), value, dtype)
    run(image, 350, tmp_path / "c.jpg")
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.size == (334, 500) and np.abs(np.asarray(im).astype(int) - expect).max() <= 1


def test_every_band_rewrites_it_when_the_interval_is_zero(tmp_path):
    _, _, seen = run(RNG.random((60, 40, 3), dtype=np.float32), 16, tmp_path / "p.jpg")
    assert seen == [16, 32, 48, 60]


def test_unfinished_rows_are_grey_and_alpha_over_grey(tmp_path):
    image = np.zeros((1024, 1024, 4), np.float32)  # transparent black: shows as mid grey
    bands = iter([np.ones((512, 1024, 4), np.float32), image[512:]])
    gen = preview_bands(bands, (1024, 1024), tmp_path / "a.jpg", 0.0, lambda p, r: None)
    next(gen), next(gen, None)  # the first band handed on and previewed
    with Image.open(tmp_path / "a.jpg") as im:
        a = np.asarray(im).astype(int)
    assert np.abs(a[:250] - 255).max() <= 2 and np.abs(a[262:] - 128).max() <= 2


def test_only_earlier_previews_or_empty_files_are_replaced(tmp_path):
    run(np.zeros((8, 8, 3), np.float32), 8, tmp_path / "mine.jpg")
    check_preview_path(tmp_path / "mine.jpg")  # an earlier preview
    (tmp_path / "empty.jpg").write_bytes(b"")
    check_preview_path(tmp_path / "empty.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.jpg")
    for bad in (tmp_path / "photo.jpg", "-", tmp_path, tmp_path / "no" / "p.jpg"):
        with pytest.raises(InputError):
            check_preview_path(bad)
    (tmp_path / "in.png").write_bytes(b"x")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "in.png")
    with pytest.raises(InputError, match="input or output"):
        check_preview_path(tmp_path / "link.jpg", others=[tmp_path / "in.png"])


def test_a_preview_that_cannot_be_written_never_fails_the_run(tmp_path, monkeypatch):
    import errno

    import tiledsr
    import tiledsr.livepreview as lp

    def full_disk(small, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lp, "_write", full_disk)
    failures, image = [], RNG.random((40, 30, 3), dtype=np.float32)
    bands = [image[y:y + 8] for y in range(0, 40, 8)]
    out = list(preview_bands(iter(bands), (40, 30), tmp_path / "p.jpg", 0.0, lambda p, r: None, failures.append))
    assert len(out) == 5 and len(failures) == 1 and "No space left" in failures[0]
    src = tmp_path / "in.png"
    Image.fromarray((image * 255).astype(np.uint8)).save(src)
    with pytest.warns(UserWarning, match="preview .* could not be written"):
        tiledsr.upscale(src, tmp_path / "out.png", preset="lanczos", scale=2, preview=tmp_path / "p.jpg").close()
    assert (tmp_path / "out.png").is_file() and not (tmp_path / "p.jpg").exists()
