"""The one image decoder (kclassify/kit/kitlib.py, used by kclassify.data.decode) on real files made here
with Pillow: EXIF orientation, bit depth, transparency, animation, modes, broken files; the
resize policies (PIL and their TensorFlow twins); random-resized-crop; and the kit, run in a
process where TensorFlow and kclassify cannot be imported, giving the same arrays."""
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from conftest import shared_file
from test_kit import GUARD, KIT
from kclassify.data import load_image
from kclassify.data.decode import decode_image, resize_image
from kclassify.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

# What each EXIF orientation means, from the EXIF 2.3 spec (which corner the stored first row and
# column are), as the array a viewer shows for the stored array s.
SHOWN = {1: lambda s: s, 2: lambda s: s[:, ::-1], 3: lambda s: s[::-1, ::-1], 4: lambda s: s[::-1],
         5: lambda s: s.transpose(1, 0, 2), 6: lambda s: np.rot90(s, -1), 7: lambda s: s.transpose(1, 0, 2)[::-1, ::-1],
         8: lambda s: np.rot90(s, 1)}


def pixels(h=6, w=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def with_orientation(image, path, orientation, **save):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **save)


def write_png(path, samples, color_type, depth=16):
    """A PNG written byte by byte (Pillow cannot write 16-bit RGB): big-endian samples."""
    h, w = samples.shape[:2]
    rows = b"".join(b"\x00" + samples[y].astype(">u2" if depth == 16 else "u1").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def over(rgb, alpha):
    """Compositing onto the white background, in integers."""
    a = alpha.astype(np.uint32)[..., None]
    return ((rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


# ---------------------------------------------------------------- the cases, as files
def make_cases(folder):
    """{name: (path, expected uint8 HxWx3 or None when only checked for shape)}; every file is
    real (Pillow, or a hand-written PNG) and non-square, so a wrong rotation shows."""
    from PIL import Image

    cases = {}
    stored = pixels(6, 10)
    for o in range(1, 9):
        path = folder / f"orient{o}.png"
        with_orientation(Image.fromarray(stored), path, o)
        cases[f"orientation {o} (png)"] = (path, SHOWN[o](stored))
    jpeg_plain = folder / "phone_plain.jpg"
    Image.fromarray(pixels(30, 40, 1)).save(jpeg_plain, quality=90)
    jpeg6 = folder / "phone_orient6.jpg"
    with_orientation(Image.fromarray(pixels(30, 40, 1)), jpeg6, 6, quality=90)
    cases["orientation 6 (jpeg)"] = (jpeg6, SHOWN[6](np.asarray(Image.open(jpeg_plain).convert("RGB"))))

    noise16 = np.random.default_rng(2).integers(0, 65536, (7, 9), dtype=np.uint16)
    Image.fromarray(noise16).save(folder / "gray16.png")
    cases["16-bit gray png"] = (folder / "gray16.png", np.repeat((noise16 >> 8).astype(np.uint8)[..., None], 3, -1))
    rgb16 = np.random.default_rng(3).integers(0, 65536, (7, 9, 3), dtype=np.uint16)
    write_png(folder / "rgb16.png", rgb16, color_type=2)
    cases["16-bit rgb png"] = (folder / "rgb16.png", (rgb16 >> 8).astype(np.uint8))

    rgba = np.random.default_rng(4).integers(0, 256, (5, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(folder / "rgba.png")
    cases["rgba png"] = (folder / "rgba.png", over(rgba[..., :3], rgba[..., 3]))
    la = np.random.default_rng(5).integers(0, 256, (5, 8, 2), dtype=np.uint8)
    Image.fromarray(la).save(folder / "la.png")
    cases["la png"] = (folder / "la.png", over(np.repeat(la[..., :1], 3, -1), la[..., 1]))
    index = np.random.default_rng(6).integers(0, 4, (5, 8), dtype=np.uint8)
    palette = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200], [0, 0, 0]], np.uint8)
    pal = Image.frombytes("P", (8, 5), index.tobytes())
    pal.putpalette(palette.ravel().tolist() + [0] * (768 - 12))
    expected_pal = np.where((index == 3)[..., None], 255, palette[index]).astype(np.uint8)  # index 3: transparent
    pal.save(folder / "palette.png", transparency=3)
    cases["palette png with transparency"] = (folder / "palette.png", expected_pal)
    pal.save(folder / "palette.gif", transparency=3)
    cases["palette gif with transparency"] = (folder / "palette.gif", expected_pal)

    frames = [Image.fromarray(np.full((6, 9, 3), c, np.uint8)) for c in ((250, 0, 0), (0, 0, 250), (0, 250, 0))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    cases["animated gif (first frame)"] = (folder / "anim.gif", np.asarray(frames[0]))
    frames[0].save(folder / "anim.png", save_all=True, append_images=frames[1:], duration=50)
    cases["animated png (first frame)"] = (folder / "anim.png", np.asarray(frames[0]))

    Image.new("CMYK", (9, 6), (255, 0, 0, 0)).save(folder / "cmyk.jpg", quality=95)  # pure cyan ink
    cases["cmyk jpeg"] = (folder / "cmyk.jpg", np.broadcast_to(np.array([0, 255, 255], np.uint8), (6, 9, 3)))
    gray = np.ascontiguousarray(pixels(6, 10, 7)[..., 0])
    Image.fromarray(gray).save(folder / "gray.png")
    cases["gray png"] = (folder / "gray.png", np.repeat(gray[..., None], 3, -1))
    bits = gray > 127
    Image.fromarray(bits).save(folder / "bits.png")
    cases["1-bit png"] = (folder / "bits.png", np.repeat(np.where(bits, 255, 0).astype(np.uint8)[..., None], 3, -1))
    floats = np.linspace(0, 1, 60, dtype=np.float32).reshape(6, 10)
    Image.fromarray(floats).save(folder / "float.tif")
    cases["float tiff 0..1"] = (folder / "float.tif", np.repeat(np.floor(floats * 255 + 0.5).astype(np.uint8)[..., None], 3, -1))
    ints = (np.arange(60, dtype=np.int32).reshape(6, 10) * 1000)
    Image.fromarray(ints).save(folder / "int32.tif")
    cases["32-bit int tiff (16-bit range)"] = (folder / "int32.tif", np.repeat((ints >> 8).astype(np.uint8)[..., None], 3, -1))
    png_as_jpg = folder / "really_a_png.jpg"
    Image.fromarray(stored).save(png_as_jpg, format="PNG")
    cases["png named .jpg"] = (png_as_jpg, stored)
    return cases


def make_bad_files(folder):
    """{file: words its reason must contain}."""
    from PIL import Image

    (folder / "empty.jpg").write_bytes(b"")
    good = folder / "whole.jpg"
    Image.fromarray(pixels(64, 64)).save(good, quality=90)
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / "text.jpg").write_text("these are notes, not a photo\n")
    (folder / "notes.txt").write_text("a README in a class folder")
    # Bombs: tiny files whose header claims an enormous canvas (Pillow raises above twice
    # MAX_IMAGE_PIXELS and only warns between once and twice; both are refused).
    write_png(folder / "tiny.png", np.zeros((1, 1), np.uint8), color_type=0, depth=8)
    for name, side in (("bomb.png", 20000), ("bomb_warning_range.png", 10000)):
        data = bytearray((folder / "tiny.png").read_bytes())
        data[16:24] = struct.pack(">II", side, side)  # IHDR width and height, then its CRC
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
        (folder / name).write_bytes(bytes(data))
    (folder / "tiny.png").unlink()
    return {"empty.jpg": "empty file", "truncated.jpg": "truncated", "text.jpg": "not an image",
            "notes.txt": "not an image", "bomb.png": "decompression bomb", "bomb_warning_range.png": "decompression bomb"}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return make_cases(tmp_path_factory.mktemp("cases"))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    return folder, make_bad_files(folder)


# ---------------------------------------------------------------- decoding
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_all_eight(cases, orientation):
    path, expected = cases[f"orientation {orientation} (png)"]
    image = load_image(path)
    assert image.shape == expected.shape  # 5-8 swap height and width
    np.testing.assert_array_equal(image, expected)


def test_phone_jpeg_tagged_6_is_turned_upright(cases):
    path, expected = cases["orientation 6 (jpeg)"]
    np.testing.assert_array_equal(load_image(path), expected)
    assert load_image(path).shape == (40, 30, 3)


def test_sixteen_bit_is_scaled_not_clipped(cases):
    for name in ("16-bit gray png", "16-bit rgb png"):
        path, expected = cases[name]
        image = load_image(path)
        np.testing.assert_array_equal(image, expected)
        assert 100 < image.mean() < 155, name  # uniform 16-bit noise: mid-gray (clipping gave 254)


@pytest.mark.parametrize("name", ["rgba png", "la png", "palette png with transparency", "palette gif with transparency",
                                  "animated gif (first frame)", "animated png (first frame)", "gray png", "1-bit png",
                                  "float tiff 0..1", "32-bit int tiff (16-bit range)", "png named .jpg"])
def test_modes_alpha_and_animation(cases, name):
    path, expected = cases[name]
    image = load_image(path)
    assert image.dtype == np.uint8 and image.shape == expected.shape
    np.testing.assert_array_equal(image, expected)


def test_cmyk_jpeg_becomes_rgb(cases):
    path, expected = cases["cmyk jpeg"]
    image = load_image(path)
    assert image.shape == expected.shape
    assert np.abs(image.astype(int) - expected).max() <= 3  # JPEG's loss only


def test_broken_files_are_named_with_their_reason(bad_files):
    folder, reasons = bad_files
    for name, words in reasons.items():
        with pytest.raises(DataError, match=words) as err:
            load_image(folder / name)
        assert str(folder / name) in str(err.value)
    assert load_image(folder / "whole.jpg").shape == (64, 64, 3)


def test_image_folder_reports_each_bad_file_and_strict_fails(bad_files, tmp_path):
    import shutil

    from kclassify.data import load_data
    from kclassify.recipe import DataConfig

    folder, reasons = bad_files
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            shutil.copy(folder / "whole.jpg", tmp_path / c / f"{i}.jpg")
    for name in reasons:
        shutil.copy(folder / name, tmp_path / "a" / name)
    data = load_data(DataConfig(source="image_folder", path=str(tmp_path), image_size=16, val_count=2))
    assert len(data.train) + len(data.val) == 6
    note = " ".join(data.notes)
    assert f"skipped {len(reasons)} unreadable" in note
    for reason in ("2 not an image", "2 decompression bomb", "1 empty file", "1 truncated"):
        assert reason in note
    with pytest.raises(DataError, match="data.strict"):
        load_data(DataConfig(source="image_folder", path=str(tmp_path), image_size=16, val_count=2, strict=True))


# ---------------------------------------------------------------- the kit decodes identically
KIT_SCRIPT = """
import json, sys
sys.path.insert(0, KIT)
import numpy as np
import kitlib
cases, out = json.loads(open(sys.argv[1]).read()), sys.argv[2]
arrays, errors = {}, {}
for i, (path, size, resize) in enumerate(cases):
    try:
        arrays[str(i)] = kitlib.load_image(path, size, resize)
    except kitlib.ImageError as exc:
        errors[str(i)] = str(exc)
np.savez(out, **arrays)
open(out + ".errors.json", "w").write(json.dumps(errors))
"""


def test_kit_gives_bit_identical_arrays_without_kclassify(cases, bad_files, tmp_path):
    """Every case, at its stored size and through every resize policy, decoded by the kit's file
    in a process that cannot import TensorFlow or kclassify: the same arrays and messages."""
    folder, reasons = bad_files
    paths = [str(p) for p, _ in cases.values()] + [str(folder / n) for n in reasons]
    calls = [(p, size, resize) for p in paths for size, resize in [(None, "crop"), (8, "crop"), (8, "squash"),
                                                                      (8, "pad"), ([5, 12], "crop")]]
    (tmp_path / "calls.json").write_text(json.dumps(calls))
    script = tmp_path / "kit_decode.py"
    script.write_text(KIT_SCRIPT.replace("KIT", repr(str(KIT))))
    out = str(tmp_path / "kit.npz")
    proc = subprocess.run([sys.executable, "-c", GUARD, str(script), str(tmp_path / "calls.json"), out],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "BANNED" not in proc.stderr, proc.stderr[-2000:]
    kit_arrays = np.load(out)
    kit_errors = json.loads(open(out + ".errors.json").read())
    checked = 0
    for i, (path, size, resize) in enumerate(calls):
        try:
            mine = load_image(path, size, resize)
        except DataError as exc:
            assert kit_errors[str(i)] == str(exc)
            continue
        theirs = kit_arrays[str(i)]
        assert theirs.dtype == mine.dtype and theirs.shape == mine.shape, (path, size, resize)
        assert np.array_equal(theirs, mine), (path, size, resize)
        checked += 1
    assert checked == len(cases) * 5 and len(kit_errors) == len(reasons) * 5


def test_kclassify_decoder_is_the_kit_file():
    from kclassify.data import decode
    from kclassify.kit import kitlib

    assert decode.decode_image is kitlib.decode_image and decode.resize_image is kitlib.resize_image


def test_kit_spec_gives_model_input_and_gray_for_one_channel(cases):
    from kclassify.kit import kitlib

    path, expected = cases["orientation 6 (jpeg)"]
    spec = {"input": {"shape": [None, 16, 16, 1]}}
    gray = kitlib.load_image(path, spec)
    assert gray.shape == (16, 16, 1)
    rgb = load_image(path, 16, "crop")
    from PIL import Image

    np.testing.assert_array_equal(gray[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))
    spec["input"]["resize_policy"] = "pad"
    assert kitlib.load_image(path, spec).shape == (16, 16, 1)


# ---------------------------------------------------------------- resize policies
def test_resize_policies_keep_or_lose_the_aspect():
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :10] = 255  # white left quarter
    crop = resize_image(image, 10, "crop")  # 10x20, center 10 columns: columns 5..14 of the halved image
    assert crop.shape == (10, 10, 3) and crop[:, 0].max() < 60 and crop[:, -1].max() == 0
    squash = resize_image(image, 10, "squash")
    assert squash[:, :2].min() > 200 and squash[:, -2:].max() == 0  # the quarter stays a quarter
    pad = resize_image(image, 10, "pad")  # 5x10 letterboxed: black bars above and below
    assert pad[:2].max() == 0 and pad[-3:].max() == 0 and pad[3:7, :2].min() > 200
    for policy in ("crop", "squash", "pad"):  # already at the size: untouched
        same = pixels(10, 10)
        assert resize_image(same, 10, policy) is same
    with pytest.raises(Exception, match="unknown resize policy"):
        resize_image(image, 10, "stretch")


def real_photos(n=12):
    archive = shared_file("data/clothing-small-trainval.tar.gz")
    from kclassify.data.image_folder import list_files, resolve_root

    paths, _, _ = list_files(resolve_root(archive, "validation"))
    return [decode_image(p) for p in paths[::max(len(paths) // n, 1)][:n]]


@pytest.mark.parametrize("policy", ["crop", "squash", "pad"])
def test_tensorflow_resize_matches_pil_within_one_level_on_real_photos(policy):
    import tensorflow as tf

    from kclassify.augment.geometry import resize

    photos = real_photos() + [pixels(32, 32, 9)]  # and CIFAR-sized upscaling
    for photo in photos:
        for size in (224, 128, 32):
            pil = resize_image(photo, size, policy).astype(int)
            tfr = resize(tf.constant(photo), size, policy).numpy().astype(int)
            assert tfr.shape == pil.shape == (size, size, 3)
            assert np.abs(pil - tfr).max() <= 1 and np.abs(pil - tfr).mean() < 0.3, (policy, size, photo.shape)


# ---------------------------------------------------------------- random-resized-crop
def test_random_resized_crop_boxes_follow_the_inception_ranges():
    import tensorflow as tf

    from kclassify.augment.geometry import crop_box

    areas, ratios = [], []
    for i in range(400):
        top, left, h, w = (int(v) for v in crop_box(300, 400, (0.08, 1.0), (3 / 4, 4 / 3), tf.constant([7, i], tf.int64)))
        assert 0 <= top <= 300 - h and 0 <= left <= 400 - w
        areas.append(h * w / (300 * 400))
        ratios.append(w / h)
    assert 0.07 < min(areas) < 0.15 and max(areas) > 0.9
    assert min(ratios) > 0.7 and max(ratios) < 1.4 and min(ratios) < 0.8 and max(ratios) > 1.25
    again = crop_box(300, 400, (0.08, 1.0), (3 / 4, 4 / 3), tf.constant([7, 3], tf.int64))
    first = crop_box(300, 400, (0.08, 1.0), (3 / 4, 4 / 3), tf.constant([7, 3], tf.int64))
    assert [int(v) for v in again] == [int(v) for v in first]  # stateless: same seed, same box


def test_random_resized_crop_falls_back_to_a_clamped_center_crop():
    import tensorflow as tf

    from kclassify.augment.geometry import crop_box, random_resized_crop

    # A 10x1000 strip: no draw of ratio 3/4..4/3 and area >= 8% fits; timm's fallback is the
    # center crop of the whole height, its width clamped to 4/3 of it.
    top, left, h, w = (int(v) for v in crop_box(10, 1000, (0.08, 1.0), (3 / 4, 4 / 3), tf.constant([1, 2], tf.int64)))
    assert (top, h, w) == (0, 10, 13) and left == (1000 - 13) // 2
    out = random_resized_crop(tf.zeros([10, 1000, 3], tf.uint8), 24, seed=[1, 2])
    assert out.shape == (24, 24, 3) and out.dtype == tf.uint8
