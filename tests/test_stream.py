"""Packing image folders into TFRecord shards and streaming them: the manifest, one epoch per
call, seeded shuffles, resume by skip, disjoint balanced worker shards, random-resized-crop
from the stored resolution, and the image_folder that does not fit cache_gb."""
import json

import numpy as np
import pytest

from conftest import run_cli, write_image
from kclassify.data import load_data
from kclassify.data.decode import decode_image
from kclassify.data.pack import pack_folder
from kclassify.data.tfrecord import Pack, StreamSplit
from kclassify.errors import DataError
from kclassify.recipe import AugmentConfig, DataConfig


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """4 classes x 15 photos of different sizes and aspects, plus one file that is not an image."""
    root = tmp_path_factory.mktemp("photos") / "train"
    for c, name in enumerate(["ant", "bee", "cow", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(15):
            write_image(root / name / f"{i:02d}.jpg", size=(40 + 3 * i, 30 + c * 5), seed=100 * c + i)
    (root / "bee" / "readme.jpg").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def pack(folder, tmp_path_factory):
    return pack_folder(folder, tmp_path_factory.mktemp("packs") / "p", max_side=48, fmt="jpeg", shard_mb=0.02,
                       progress=False)


def epoch(split, **kw):
    return [(x, int(y)) for x, y in split.examples(**kw).as_numpy_iterator()]


def test_manifest_counts_checksums_and_skipped(pack, folder):
    m = pack.manifest
    assert m["classes"] == ["ant", "bee", "cow", "dog"] and m["count"] == 60
    assert m["counts_per_class"] == [15, 15, 15, 15] and len(m["shards"]) >= 3
    assert sum(s["count"] for s in m["shards"]) == 60
    assert np.sum([s["counts_per_class"] for s in m["shards"]], axis=0).tolist() == [15] * 4
    assert pack.verify() == [] and len({s["sha256"] for s in m["shards"]}) == len(m["shards"])
    assert m["source"]["skipped"] == [{"path": str(folder / "bee" / "readme.jpg"), "reason": "not an image (no known image format)"}]
    assert m["decoder"]["orientation"].startswith("EXIF") and m["max_side"] == 48
    assert np.bincount(pack.labels).tolist() == [15] * 4
    assert len(set(pack.labels[:15].tolist())) > 1  # stored order is shuffled: shards mix classes


def test_pack_tamper_is_detected(pack, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pack.dir, copy)
    shard = copy / pack.manifest["shards"][0]["file"]
    data = shard.read_bytes()
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # flipped: a constant byte may be the one already there
    assert Pack(copy).verify() == [shard.name]
    shard.unlink()
    with pytest.raises(DataError, match="missing"):
        Pack(copy)


def test_raw_pack_holds_exactly_what_the_decoder_gave(folder, tmp_path):
    pack = pack_folder(folder, tmp_path / "raw", fmt="raw", progress=False)
    split = StreamSplit(pack, size=None) if pack.shape else None
    assert split is None  # sizes differ: a size is required
    with pytest.raises(DataError, match="image_size"):
        StreamSplit(pack)
    import tensorflow as tf

    from kclassify.data.tfrecord import _parse

    record = next(iter(tf.data.TFRecordDataset(pack.files([0])).map(_parse)))
    path = folder / tf.io.parse_single_example(next(iter(tf.data.TFRecordDataset(pack.files([0])))),
                                               {"path": tf.io.FixedLenFeature([], tf.string)})["path"].numpy().decode()
    stored = np.frombuffer(record["image"].numpy(), np.uint8).reshape(int(record["height"]), int(record["width"]), 3)
    np.testing.assert_array_equal(stored, decode_image(path))


def test_one_epoch_covers_every_example_once_and_shuffles_by_seed_and_epoch(pack):
    split = StreamSplit(pack, size=24)
    plain = epoch(split)
    assert len(plain) == 60 and [y for _, y in plain] == split.labels.tolist()  # stored order
    assert all(x.shape == (24, 24, 3) and x.dtype == np.uint8 for x, _ in plain)
    key = {x.tobytes(): i for i, (x, _) in enumerate(plain)}
    a = epoch(split, seed=3, epoch=0, training=True)
    b = epoch(split, seed=3, epoch=0, training=True)
    c = epoch(split, seed=3, epoch=1, training=True)
    order = [key[x.tobytes()] for x, _ in a]
    assert sorted(order) == list(range(60)) and order != list(range(60))
    assert [key[x.tobytes()] for x, _ in b] == order  # deterministic
    assert [key[x.tobytes()] for x, _ in c] != order  # a new order each epoch
    resumed = epoch(split, seed=3, epoch=0, skip=17, training=True)
    assert [key[x.tobytes()] for x, _ in resumed] == order[17:]


def test_epoch_may_be_a_tensor_inside_flat_map(pack):
    import tensorflow as tf

    split = StreamSplit(pack, size=16)
    # a run resumed 7 examples into epoch 3: skip is a tensor too, non-zero only in the first epoch;
    # global seed 0 (runtime.seed 0) is the case where Dataset.shuffle cannot take a tensor seed
    tf.random.set_seed(0)
    try:
        ds = tf.data.Dataset.range(3, 5).flat_map(lambda e: split.examples(
            seed=1, epoch=e, skip=tf.where(e == 3, tf.constant(7, tf.int64), 0), training=True))
        both = [int(y) for _, y in ds.as_numpy_iterator()]
        memory = load_data(DataConfig(source="digits", val_count=100)).train
        one = tf.data.Dataset.range(2).flat_map(lambda e: memory.examples(seed=0, epoch=e, training=True))
        assert sum(1 for _ in one) == 2 * len(memory)
    finally:
        tf.random.set_seed(None)
    assert both == [y for _, y in epoch(split, seed=1, epoch=3, training=True)][7:] + \
        [y for _, y in epoch(split, seed=1, epoch=4, training=True)]


def test_workers_get_disjoint_balanced_shards(pack):
    split = StreamSplit(pack, size=16)
    n = len(pack.shards)
    shards = [split.worker_shards(i, 3) for i in range(3)]
    assert sorted(sum(shards, [])) == list(range(n))
    counts = [split.count(i, 3) for i in range(3)]
    assert sum(counts) == 60 and max(counts) - min(counts) <= max(s["count"] for s in pack.shards)
    seen = [len(epoch(split, shard_index=i, shard_count=3, training=True, seed=2)) for i in range(3)]
    assert seen == counts
    with pytest.raises(DataError, match="smaller --shard-mb"):
        split.worker_shards(0, n + 1)


def test_a_pack_has_enough_shards_for_workers_whatever_its_size(tmp_path):
    """130 small images fit one 128 MB shard, but a pack cuts them into shards of at most
    ceil(130 / MIN_SHARDS) = 3, so 2 to 40 workers each get whole shards, loads within one shard."""
    from kclassify.data.pack import MIN_SHARDS

    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(65):
            write_image(tmp_path / "f" / c / f"{i}.png", size=(8, 8), seed=100 * ord(c) + i)
    pack = pack_folder(tmp_path / "f", tmp_path / "p", fmt="raw", progress=False)
    counts = [s["count"] for s in pack.shards]
    assert max(counts) == -(-130 // MIN_SHARDS) == 3 and sum(counts) == 130 and len(counts) == 44
    split = StreamSplit(pack)
    for workers in (2, 5, 40):
        loads = [split.count(i, workers) for i in range(workers)]
        assert sum(loads) == 130 and max(loads) - min(loads) <= 3


def test_the_epoch_of_a_streamed_multi_worker_run_ends_with_its_least_loaded_worker(tmp_path):
    """The pipeline's (and so the engine's) epoch length for a streamed split over workers is the
    global batches every worker can fill from its own shards: 5 workers of a 130-image pack, a
    global batch of 10, loads [27, 27, 27, 25, 24] give 24 // 2 = 12 steps, not 130 // 10 = 13
    (a 13th batch would find worker 4 out of images and run into the next epoch); one worker and
    an in-memory split keep len // batch; the steps cap still applies."""
    from kclassify.data.batching import steps_per_epoch
    from kclassify.data.pipeline import BatchPlan, streamed_batches

    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(65):
            write_image(tmp_path / "f" / c / f"{i}.png", size=(8, 8), seed=100 * ord(c) + i)
    split = StreamSplit(pack_folder(tmp_path / "f", tmp_path / "p", fmt="raw", progress=False))
    loads = [split.count(i, 5) for i in range(5)]
    assert steps_per_epoch(split, 10, workers=5) == min(loads) // 2 == 12 < 130 // 10
    assert steps_per_epoch(split, 10) == 13 and steps_per_epoch(split, 10, cap=5, workers=5) == 5
    memory = load_data(DataConfig(source="digits", val_fraction=0.2)).train
    assert steps_per_epoch(memory, 10, workers=5) == len(memory) // 10
    spe, w = steps_per_epoch(split, 10, workers=5), int(np.argmin(loads))
    plan = BatchPlan(split.labels, 10, spe, seed=3, worker=(w, 5))
    images = [im.tobytes() for x, _, _ in streamed_batches(split, plan).take(spe).as_numpy_iterator() for im in x]
    assert len(set(images)) == len(images) == loads[w]  # one epoch: each of its images once, none of the next


def test_pipeline_workers_stream_disjoint_shards_in_full_batches(pack):
    """Each worker of the pipeline's BatchPlan streams its own shards: over one epoch of
    steps_per_epoch full local batches, the workers' images are disjoint and each comes from
    that worker's shards only; a 1-worker run of the same split sees every image."""
    from kclassify.data.pipeline import BatchPlan, streamed_batches

    split = StreamSplit(pack, size=12).subset(np.arange(3, 60))  # 57 examples: uneven shards per worker
    assert len(pack.shards) == 60  # one image a shard here (60 images < MIN_SHARDS)
    key = {x.tobytes(): p for (x, _), p in zip(epoch(split), split.positions)}
    workers, batch = 3, 6
    spe = split.steps_per_epoch(batch, workers)
    assert spe == min(split.count(i, workers) for i in range(workers)) // (batch // workers)
    seen = []
    for w in range(workers):
        plan = BatchPlan(split.labels, batch, spe, seed=4, worker=(w, workers))
        images = [x for x, _, _ in streamed_batches(split, plan).take(spe).as_numpy_iterator()]
        assert all(b.shape == (batch // workers, 12, 12, 3) for b in images)
        positions = [key[im.tobytes()] for b in images for im in b]
        assert len(set(positions)) == len(positions) == spe * (batch // workers)
        assert set(pack.shard_of(np.array(positions)).tolist()) <= set(split.worker_shards(w, workers))
        seen.append(set(positions))
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    one = BatchPlan(split.labels, 57, 1, seed=4)
    (x, _, _), = streamed_batches(split, one).take(1).as_numpy_iterator()
    assert sorted(key[im.tobytes()] for im in x) == split.positions.tolist()


def test_take_matches_the_eval_stream_and_subset_keeps_stored_order(pack):
    split = StreamSplit(pack, size=20, resize="pad")
    plain = epoch(split)
    got = split.take([5, 0, 5, 59])
    for j, i in enumerate([5, 0, 5, 59]):
        np.testing.assert_array_equal(got[j], plain[i][0])
    sub = split.subset([40, 3, 10])
    assert [y for _, y in epoch(sub)] == [plain[3][1], plain[10][1], plain[40][1]] == sub.labels.tolist()
    mean, std = split.channel_stats()
    assert len(mean) == 3 and all(0 < s for s in std)


def test_random_resized_crop_cuts_from_the_stored_resolution(tmp_path):
    """A quarter-area square crop of a 48x48 stored image, at size 24, is an exact 24x24 window
    of the stored pixels (at a random offset): the crop came from the stored image, not from a
    square shrunk to the training size first."""
    for c in ("a", "b"):
        (tmp_path / "sq" / c).mkdir(parents=True)
        for i in range(4):
            write_image(tmp_path / "sq" / c / f"{i}.png", size=(48, 48), seed=10 * len(c) + i)
    pack = pack_folder(tmp_path / "sq", tmp_path / "sqpack", fmt="raw", progress=False)
    stored = StreamSplit(pack)  # every image 48x48: no size needed, nothing resized
    assert stored.image_shape == (48, 48, 3)
    split = StreamSplit(pack, size=24, crop={"scale": (0.25, 0.25), "ratio": (1.0, 1.0)})
    offsets = set()
    for i in (0, 3, 5, 6):
        image = stored.take([i])[0]
        for seed in range(3):
            (x, _), = epoch(split.subset([i]), seed=seed, training=True)
            windows = np.lib.stride_tricks.sliding_window_view(image, (24, 24, 3))[:, :, 0]
            match = np.argwhere((windows == x).all(axis=(2, 3, 4)))
            assert len(match) >= 1, (i, seed)
            offsets.add(tuple(match[0]))
    assert len(offsets) > 4


def test_tfrecord_source_with_stratified_validation_in_memory(pack):
    from kclassify.data.sources import Split

    data = load_data(DataConfig(source="tfrecord", path=str(pack.dir), image_size=16, val_count=8))
    assert isinstance(data.train, StreamSplit) and isinstance(data.val, Split)  # val fits cache_gb
    assert len(data.train) == 52 and len(data.val) == 8 and sorted(np.bincount(data.val.labels)) == [2, 2, 2, 2]
    assert data.input_shape == (16, 16, 3) and data.class_names == ["ant", "bee", "cow", "dog"]
    assert any("not an image" in n for n in data.notes)
    streamed = load_data(DataConfig(source="tfrecord", path=str(pack.dir), image_size=16, val_count=8, cache_gb=0))
    assert isinstance(streamed.val, StreamSplit)
    np.testing.assert_array_equal(streamed.val.labels, data.val.labels)


def test_image_folder_bigger_than_cache_is_packed_once_and_streamed(folder):
    from kclassify.data.image_folder import cache_root

    cfg = DataConfig(source="image_folder", path=str(folder), image_size=16, val_count=8, cache_gb=0)
    data = load_data(cfg)
    assert isinstance(data.train, StreamSplit) and len(data.train) + len(data.val) == 60
    packs = sorted((cache_root() / "packed").glob("train-*"))
    assert len(packs) == 1 and (packs[0] / "manifest.json").is_file()
    stamp = (packs[0] / "manifest.json").stat().st_mtime_ns
    again = load_data(cfg)
    assert (packs[0] / "manifest.json").stat().st_mtime_ns == stamp  # reused, not packed again
    np.testing.assert_array_equal(again.train.labels, data.train.labels)
    assert any("not an image" in n for n in data.notes)
    with pytest.raises(DataError, match="readme.jpg"):
        load_data(cfg.model_copy(update={"strict": True}))


def test_random_resized_crop_streams_an_image_folder_that_fits(folder):
    from kclassify.data.sources import Split

    data = load_data(DataConfig(source="image_folder", path=str(folder), image_size=16, val_count=8),
                     augment=AugmentConfig(random_resized_crop=True))
    assert isinstance(data.train, StreamSplit) and isinstance(data.val, Split)
    assert data.train.crop == {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)}
    assert data.train.pack.manifest["max_side"] == 32  # kept at twice the training size
    x, _ = epoch(data.train, training=True)[0]
    assert x.shape == (16, 16, 3)


def test_in_memory_split_has_the_same_api():
    data = load_data(DataConfig(source="digits", val_count=100))
    split = data.train
    assert split.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(split.take([3, 1]), split.images[[3, 1]])
    plain = epoch(split)
    assert [y for _, y in plain] == split.labels.tolist()
    shuffled = epoch(split, seed=1, training=True)
    assert sorted(y for _, y in shuffled) == sorted(split.labels.tolist())
    assert [y for _, y in shuffled] != split.labels.tolist()
    assert len(epoch(split, skip=10)) == len(split) - 10
    assert len(epoch(split, shard_index=1, shard_count=4)) == len(range(1, len(split), 4))


def test_cli_pack(folder, tmp_path):
    out = tmp_path / "cli"
    proc = run_cli("data", "pack", folder, "--out", out, "--max-side", "32", "--format", "raw", "--shard-mb", "0.05")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "packed 60 images of 4 classes" in proc.stdout and "skipped 1" in proc.stdout
    assert json.loads((out / "manifest.json").read_text())["format"] == "raw"
    again = run_cli("data", "pack", folder, "--out", out)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores
def test_fit_with_random_resized_crop_trains_from_a_pack_of_the_stored_images(folder, tmp_path, monkeypatch):
    """The whole command: `kclassify fit` on a photo folder with augment.random_resized_crop packs
    the training images once into KCLASSIFY_CACHE (kept above the training size) and trains from
    the stream, cropping there (before 83145c0 fit did not pass augment to load_data and trained
    on squares shrunk in memory); the validation images stay in memory at the crop policy's size."""
    from kclassify.data.sources import Split
    from kclassify.run import Run

    recipe = tmp_path / "photos.yaml"
    recipe.write_text(f"data: {{source: image_folder, path: '{folder}', image_size: 16, val_count: 8}}\n"
                      "model: {name: resnet20, params: {width_mult: 0.25}}\n"
                      "augment: {random_resized_crop: {scale: [0.3, 1.0]}, crop_pad: 0}\n"
                      "train: {epochs: 1, batch_size: 8, lr: 0.02}\n"
                      "output: {tensorboard: false, plots: false, report: false, export: []}\n")
    cache = tmp_path / "cache"
    proc = run_cli("fit", recipe, "--out", tmp_path / "run", env={"KCLASSIFY_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    packs = list((cache / "packed").glob("train-*"))
    assert len(packs) == 1 and json.loads((packs[0] / "manifest.json").read_text())["max_side"] == 32
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_images"] == 52 and metrics["steps"] == 52 // 8
    monkeypatch.setenv("KCLASSIFY_CACHE", str(cache))
    stamp = (packs[0] / "manifest.json").stat().st_mtime_ns
    data = Run(tmp_path / "run").data()  # the run's own data, as fit loaded it: the same pack, reused
    assert isinstance(data.train, StreamSplit) and data.train.crop["scale"] == (0.3, 1.0)
    assert data.train.pack.dir == packs[0] and (packs[0] / "manifest.json").stat().st_mtime_ns == stamp
    assert isinstance(data.val, Split) and data.val.image_shape == (16, 16, 3)
