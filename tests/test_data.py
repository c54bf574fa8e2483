"""Data sources and the tf.data pipeline, on embedded digits and image folders made here."""
import time

import numpy as np
import pytest

from conftest import shared_file, write_image
from kclassify.data import load_data
from kclassify.errors import DataError
from kclassify.recipe import DataConfig


def test_digits_stratified_split():
    data = load_data(DataConfig(source="digits", val_fraction=0.2))
    assert data.train.images.dtype == np.uint8 and data.input_shape == (8, 8, 1)
    assert len(data.train) + len(data.val) == 1797 and len(data.val) == 360
    counts = np.bincount(data.val.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 36 a class, +-1


def test_val_count_is_exact_and_split_is_seeded():
    a = load_data(DataConfig(source="digits", val_count=100), seed=1)
    b = load_data(DataConfig(source="digits", val_count=100), seed=1)
    assert len(a.val) == 100
    np.testing.assert_array_equal(a.val.labels, b.val.labels)


def test_image_folder_any_format_size_and_mode(image_tree):
    data = load_data(DataConfig(source="image_folder", path=str(image_tree), image_size=12, val_count=6))
    assert data.class_names == ["cat", "dog", "eel"]
    assert data.input_shape == (12, 12, 3) and len(data.train) + len(data.val) == 18
    assert sorted(np.bincount(data.val.labels)) == [2, 2, 2]


def test_image_folder_differing_sizes_need_image_size(image_tree):
    with pytest.raises(DataError, match="data.image_size"):
        load_data(DataConfig(source="image_folder", path=str(image_tree)))


def test_corrupt_file_skipped_with_path_or_error_when_strict(image_tree):
    bad = image_tree / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (image_tree / "cat" / "notes.txt").write_text("not an image")
    data = load_data(DataConfig(source="image_folder", path=str(image_tree), image_size=8, val_fraction=0.3))
    assert len(data.train) + len(data.val) == 18
    assert any("2 unreadable" in n and "broken.jpg" in n and "notes.txt" in n for n in data.notes)
    with pytest.raises(DataError, match="broken.jpg|notes.txt"):
        load_data(DataConfig(source="image_folder", path=str(image_tree), image_size=8, strict=True))


def test_empty_class_folder_is_an_error(image_tree):
    (image_tree / "fox").mkdir()
    with pytest.raises(DataError, match="fox is empty"):
        load_data(DataConfig(source="image_folder", path=str(image_tree), image_size=8))


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(DataConfig(source="image_folder", path=str(tmp_path / "nope")))


def test_separate_validation_folder(image_tree, tmp_path):
    val = tmp_path / "val"
    for c in ["cat", "dog", "eel"]:
        (val / c).mkdir(parents=True)
        write_image(val / c / "a.png", size=(9, 9))
    data = load_data(DataConfig(source="image_folder", path=str(image_tree), val_path=str(val), image_size=8))
    assert len(data.train) == 18 and len(data.val) == 3


def test_image_folder_reads_tar_gz(image_tree, tmp_path):
    import tarfile

    archive = tmp_path / "imgs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_tree, arcname="train")
    data = load_data(DataConfig(source="image_folder", path=str(archive), subdir="train", image_size=8,
                                val_fraction=0.34))
    assert len(data.train) + len(data.val) == 18


def test_npz_source(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.integers(0, 255, (40, 10, 10), dtype=np.uint8), y=np.repeat([0, 1], 20),
             class_names=np.array(["a", "b"]))
    data = load_data(DataConfig(source="npz", path=str(path), val_fraction=0.25))
    assert data.input_shape == (10, 10, 1) and data.class_names == ["a", "b"] and len(data.val) == 10
    np.savez(tmp_path / "f.npz", x=rng.random((4, 3, 3)), y=[0, 1, 0, 1])
    with pytest.raises(DataError, match="uint8"):
        load_data(DataConfig(source="npz", path=str(tmp_path / "f.npz")))


def test_unknown_source_suggests():
    from kclassify.errors import KClassifyError

    with pytest.raises(KClassifyError, match="did you mean 'digits'"):
        load_data(DataConfig(source="digit"))


def test_channel_stats_are_exact_without_a_float_copy():
    from kclassify.data.sources import channel_stats

    x = np.random.default_rng(0).integers(0, 256, (300, 17, 13, 3), dtype=np.uint8)
    mean, std = channel_stats(x, chunk_bytes=1000)  # 1 image a chunk
    flat = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(0), rtol=1e-9)
    assert channel_stats(np.zeros((4, 2, 2, 1), np.uint8)) == ([0.0], [1e-3])


def test_tfds_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    import kclassify.data.tfds_source as src

    monkeypatch.setattr(src, "PROBE", ("192.0.2.1", 443))  # TEST-NET-1: never routable
    t0 = time.time()
    with pytest.raises(DataError) as err:
        load_data(DataConfig(source="tfds", name="cifar100", data_dir=str(tmp_path)))
    assert time.time() - t0 < 10
    assert "manual_dir" in str(err.value) and "cifar-100-binary.tar.gz" in str(err.value)


def test_tfds_unknown_name():
    with pytest.raises(DataError, match="cifar1000"):
        load_data(DataConfig(source="tfds", name="cifar1000"))


def test_tfds_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=30):
        data = load_data(DataConfig(source="tfds", name="cifar100", val_path="test", data_dir=str(tmp_path)))
    assert data.input_shape == (32, 32, 3) and len(data.train) == 30 and len(data.class_names) == 100


def test_tfds_records_go_through_the_one_decoder_and_feed_the_pipeline(tmp_path):
    """A tfds dataset built here (no download): photos of different sizes, one JPEG tagged EXIF
    orientation 6 and one broken record. Each record decodes as load_image does its file (oriented),
    at data.image_size; the broken one is skipped with a note; the split feeds the training stream;
    a split bigger than data.cache_gb is refused before decoding."""
    import tensorflow_datasets as tfds
    from PIL import Image

    from kclassify.data import load_image
    from kclassify.data.pipeline import recipe_train_dataset
    from kclassify.recipe import validate

    files = []
    for i in range(12):
        path = tmp_path / f"{i}.jpg"
        write_image(path, size=(40 + 4 * i, 24 + 2 * i), seed=i)
        files.append(path)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: shown rotated 90 degrees clockwise
    Image.open(files[0]).save(files[0], exif=exif)
    (tmp_path / "broken.jpg").write_bytes(files[1].read_bytes()[:200])

    class TinyPhotos(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, supervised_keys=("image", "label"), features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(names=["a", "b"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(files + [tmp_path / "broken.jpg"]), "test": self._generate_examples(files[:4])}

        def _generate_examples(self, paths):
            for i, p in enumerate(paths):
                yield i, {"image": str(p), "label": i % 2}

    TinyPhotos(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    cfg = DataConfig(source="tfds", name="tiny_photos", data_dir=str(tmp_path / "tfds"), image_size=16, val_path="test")
    data = load_data(cfg)
    assert data.input_shape == (16, 16, 3) and len(data.train) == 12 and len(data.val) == 4
    assert data.class_names == ["a", "b"] and any("truncated" in n and "tfds:tiny_photos/train" in n for n in data.notes), data.notes
    wanted = {load_image(p, 16).tobytes() for p in files}
    assert {x.tobytes() for x in data.train.images} == wanted  # includes the oriented one
    assert load_image(files[0]).shape == (40, 24, 3)  # orientation 6: the stored 40x24 shown 24 wide
    recipe = validate({"data": {"source": "tfds", "name": "tiny_photos"}, "train": {"batch_size": 4}})
    x, y = next(iter(recipe_train_dataset(recipe, data.train, 2)))
    assert x.shape == (4, 16, 16, 3) and y.shape == (4, 2)
    with pytest.raises(DataError, match="data.cache_gb"):
        load_data(cfg.model_copy(update={"cache_gb": 1e-6}))
    with pytest.raises(DataError, match="images differ in size"):
        load_data(cfg.model_copy(update={"image_size": None}))


def test_pipeline_crops_and_flips_differ_per_image():
    from kclassify.augment.basic import image_augmenter
    from kclassify.data.pipeline import train_dataset
    from kclassify.data.sources import Split
    from kclassify.recipe import AugmentConfig

    base = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    split = Split(np.repeat(base[None], 64, 0), np.zeros(64, np.int32))
    aug = image_augmenter(AugmentConfig(crop_pad=4, flip=True))
    x, y = next(iter(train_dataset(split, 3, 64, aug)))
    distinct = {x[i].numpy().tobytes() for i in range(64)}
    assert len(distinct) > 40  # one offset per batch would give at most 2 (flip)
    assert x.dtype.name == "float32" and y.shape == (64, 3) and np.allclose(y.numpy().sum(1), 1)


@pytest.mark.slow
def test_real_cifar10_folder_loads():
    archive = shared_file("data/cifar10-train-png.tar.gz")
    data = load_data(DataConfig(source="image_folder", path=str(archive), subdir="train", val_count=5000))
    assert data.input_shape == (32, 32, 3) and len(data.train) == 45000 and len(data.val) == 5000
    assert np.bincount(data.val.labels).tolist() == [500] * 10


def test_resize_policy_of_an_image_folder(tmp_path):
    """A 2:1 photo with a white left quarter: squash keeps the quarter, crop (the default) cuts
    it off, pad letterboxes."""
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        image = np.zeros((20, 40, 3), np.uint8)
        image[:, :10] = 255
        for i in range(3):
            Image.fromarray(image).save(tmp_path / c / f"{i}.png")
    got = {p: load_data(DataConfig(source="image_folder", path=str(tmp_path), image_size=10, val_count=2, resize=p)).train.images[0]
           for p in ("crop", "squash", "pad")}
    assert got["squash"][:, :2].min() > 200 and got["crop"][:, 0].max() < 128
    assert got["pad"][:2].max() == 0 and got["pad"][4:6, :2].min() > 200
    assert DataConfig().resize == "crop"


def test_data_fields_each_source_requires_or_refuses():
    from kclassify.data import SOURCES
    from kclassify.data.spec import FIELDS, check_data
    from kclassify.recipe import AugmentConfig

    assert sorted(FIELDS) == sorted(SOURCES.names())
    assert check_data(DataConfig(source="image_folder")) == [
        "data.source image_folder needs data.path (a folder of class sub-folders, or a .tar.gz of one)"]
    assert check_data(DataConfig(source="tfds")) == ["data.source tfds needs data.name (a TensorFlow Datasets name such as cifar100)"]
    assert check_data(DataConfig(source="tfrecord", path="x")) == []
    assert check_data(DataConfig(source="image_folder", path="x", manual_dir="/m")) == [
        "data.manual_dir is set but data.source image_folder does not use it"]
    assert "data.val_subdir needs data.val_path" in check_data(DataConfig(source="image_folder", path="x", val_subdir="v"))[0]
    assert "data.path is set" in check_data(DataConfig(source="digits", path="x"))[0]
    assert check_data(DataConfig(source="digit"))[0].endswith("(did you mean 'digits'?)")
    rrc = AugmentConfig(random_resized_crop={"scale": [0.5, 0.2]})
    assert check_data(DataConfig(source="digits"), rrc) == [
        "augment.random_resized_crop needs data.image_size (the size of its crops)",
        "augment.random_resized_crop crops from the stored resolution, which data.source digits does not keep "
        "(use image_folder or tfrecord)",
        "augment.random_resized_crop.scale must satisfy 0 < lo <= hi <= 1, got [0.5, 0.2]"]
    with pytest.raises(DataError, match="manual_dir"):
        load_data(DataConfig(source="image_folder", path="x", manual_dir="/m"))


def test_data_check_and_import_are_free_of_tensorflow():
    import subprocess
    import sys

    code = ("import sys, kclassify.recipe, kclassify.data, kclassify.data.spec as s; "
            "print(s.check_data(kclassify.recipe.DataConfig(source='tfds'))); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert "needs data.name" in proc.stdout


def test_load_image_is_the_package_decoder(tmp_path):
    from kclassify.data import load_image

    write_image(tmp_path / "x.png", size=(30, 10))
    assert load_image(tmp_path / "x.png").shape == (10, 30, 3)
    assert load_image(tmp_path / "x.png", 8).shape == (8, 8, 3)
    with pytest.raises(DataError, match="empty file"):
        (tmp_path / "e.jpg").write_bytes(b"")
        load_image(tmp_path / "e.jpg")
