"""Data sets: the fixed digits split, normalization, pipelines and offline failures."""

import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.training import data
from bnn_keras.errors import BnnError


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def test_digits_split_is_fixed_and_stratified(digits):
    assert (digits.num_train, digits.num_test) == (1437, 360)
    assert digits.image_shape == (8, 8, 1) and digits.num_classes == 10
    y_test = np.concatenate([y.numpy()[None] for _, y in digits.test])
    again = np.concatenate([y.numpy()[None] for _, y in data.load_digits().test])
    np.testing.assert_array_equal(y_test, again)
    # Stratified: every class has 20% (+/- rounding) of its examples in the test split.
    assert np.bincount(y_test, minlength=10).min() >= 35


def test_normalization_matches_numpy(digits):
    x_train = np.stack([x.numpy() for x, _ in digits.train])
    assert digits.normalization.mean[0] == pytest.approx(x_train.mean())
    assert digits.normalization.std[0] == pytest.approx(x_train.std())
    restored = data.Normalization.from_dict(digits.normalization.to_dict())
    assert restored == digits.normalization


def test_pipeline_resizes_normalizes_and_batches(digits):
    ds = data.make_pipeline(
        digits.test, batch_size=64, normalization=digits.normalization, image_size=(16, 16)
    )
    x, y = data.to_numpy(ds)
    assert x.shape == (360, 16, 16, 1) and y.shape == (360,)
    raw = np.stack([img.numpy() for img, _ in digits.test])
    expected = (tf.image.resize(raw, (16, 16)).numpy() - digits.normalization.mean[0]) / (
        digits.normalization.std[0]
    )
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)


def test_crop_flip_is_reproducible_with_seed_and_changes_images():
    images = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
    ds = tf.data.Dataset.from_tensor_slices((images, np.array([0, 1], np.int32)))
    norm = data.Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    def batches(seed):
        pipeline = data.make_pipeline(ds, batch_size=2, normalization=norm, training=True,
                                      augmentation="crop_flip", seed=seed, cache=False)
        return data.to_numpy(pipeline)

    (a, ya), (b, yb) = batches(3), batches(3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    # Labels still pair with their own image, and augmentation moved at least one of them.
    augmented = a[np.argsort(ya)]
    assert not np.array_equal(augmented, images)
    assert all(np.isin(augmented[i], images[i]).all() for i in range(2))


@pytest.mark.parametrize("augmentation", ["none", "crop_flip"])
def test_epoch_stream_resumes_at_any_epoch_with_the_same_batches(augmentation):
    images = np.arange(20 * 8 * 8 * 1, dtype=np.float32).reshape(20, 8, 8, 1)
    ds = tf.data.Dataset.from_tensor_slices((images, np.arange(20, dtype=np.int32)))
    norm = data.Normalization(mean=(0.0,), std=(1.0,))

    def stream(first_epoch, batches):
        pipeline = data.make_pipeline(ds, batch_size=8, normalization=norm, training=True,
                                      augmentation=augmentation, seed=5, first_epoch=first_epoch)
        return [(x.numpy(), y.numpy()) for x, y in pipeline.take(batches)]

    # 20 examples in batches of 8: 3 batches per epoch (8, 8, 4).
    from_start, from_epoch_2 = stream(0, 9), stream(2, 3)
    assert [len(y) for _, y in from_start] == [8, 8, 4] * 3
    for (xa, ya), (xb, yb) in zip(from_start[6:], from_epoch_2):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    orders = [np.concatenate([y for _, y in from_start[e * 3:e * 3 + 3]]) for e in range(3)]
    assert all(sorted(order) == list(range(20)) for order in orders)  # each epoch: every example
    assert not np.array_equal(orders[0], orders[1])  # and a new order each epoch
    if augmentation == "crop_flip":
        # The same example is augmented differently in two epochs.
        first, second = (np.concatenate([x for x, _ in from_start[e * 3:e * 3 + 3]])[
            np.argsort(orders[e])] for e in range(2))
        assert not np.array_equal(first, second)


def test_epoch_stream_takes_steps_per_epoch_batches_of_each_epoch():
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((20, 4, 4, 1), np.float32),
                                             np.arange(20, dtype=np.int32)))
    pipeline = data.make_pipeline(ds, batch_size=4, normalization=data.Normalization((0.0,), (1.0,)),
                                  training=True, seed=1, first_epoch=0, steps_per_epoch=2)
    labels = [y.numpy() for _, y in pipeline.take(4)]
    again = data.make_pipeline(ds, batch_size=4, normalization=data.Normalization((0.0,), (1.0,)),
                               training=True, seed=1, first_epoch=1, steps_per_epoch=2)
    np.testing.assert_array_equal(np.concatenate(labels[2:]),
                                  np.concatenate([y.numpy() for _, y in again.take(2)]))


@pytest.mark.parametrize("global_seed", [None, 0])
def test_used_training_examples_are_those_the_epochs_draw(global_seed):
    """A cache of per-example values (`distill_cache`) covers exactly the examples the
    training stream draws in the session's epochs, whatever global seed is set."""
    n, batch, steps, seed = 300, 8, 5, 3
    if global_seed is not None:
        tf.random.set_seed(global_seed)
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((n, 2, 2, 1), np.float32),
                                             np.arange(n, dtype=np.int32)))
    pipeline = data.make_pipeline(ds, batch_size=batch, training=True, seed=seed,
                                  normalization=data.Normalization((0.0,), (1.0,)),
                                  first_epoch=2, steps_per_epoch=steps)
    drawn = np.concatenate([y.numpy() for _, y in pipeline.take(3 * steps)])  # epochs 3-5
    used = data.used_training_examples(n, batch_size=batch, seed=seed, first_epoch=2, epochs=5,
                                       steps_per_epoch=steps)
    np.testing.assert_array_equal(used, np.unique(drawn))
    assert len(used) < n
    # Every example, or no epoch left: nothing to leave out.
    assert data.used_training_examples(n, batch_size=batch, seed=seed, first_epoch=0,
                                       epochs=1, steps_per_epoch=38) is None
    assert len(data.used_training_examples(n, batch_size=batch, seed=seed, first_epoch=5,
                                           epochs=5, steps_per_epoch=steps)) == 0


def test_teacher_logits_travel_with_their_images_through_the_shuffle():
    """Example i is an image of value i with label i % 3; its logits row is (i, -i)."""
    count = 20
    images = np.arange(count, dtype=np.float32)[:, None, None, None] * np.ones((1, 4, 4, 1))
    ds = tf.data.Dataset.from_tensor_slices((images.astype(np.float32),
                                             np.arange(count, dtype=np.int32) % 3))
    logits = np.stack([np.arange(count), -np.arange(count)], axis=1).astype(np.float32)
    norm = data.Normalization((0.0,), (1.0,))
    pipeline = data.make_pipeline(ds, batch_size=4, normalization=norm, training=True, seed=3,
                                  first_epoch=0, steps_per_epoch=5, teacher_logits=logits)
    plain = data.make_pipeline(ds, batch_size=4, normalization=norm, training=True, seed=3,
                               first_epoch=0, steps_per_epoch=5)
    seen = []
    for ((x, t), y), (x_plain, y_plain) in zip(pipeline.take(10), plain.take(10)):
        index = x.numpy()[:, 0, 0, 0]
        np.testing.assert_array_equal(t.numpy(), logits[index.astype(int)])
        np.testing.assert_array_equal(y.numpy(), index.astype(int) % 3)
        np.testing.assert_array_equal(x.numpy(), x_plain.numpy())  # the same order as without
        np.testing.assert_array_equal(y.numpy(), y_plain.numpy())
        seen.append(index)
    first_epoch = np.concatenate(seen[:5])
    assert sorted(first_epoch) == list(range(count))
    assert not np.array_equal(first_epoch, np.arange(count))  # shuffled

    with pytest.raises(BnnError) as err:
        data.make_pipeline(ds, batch_size=4, normalization=norm, training=True,
                           augmentation="crop_flip", teacher_logits=logits)
    assert str(err.value) == ("Cached teacher logits are those of the un-augmented images; "
                              "train without augmentation to use them, or let the teacher run "
                              "at every step.")
    with pytest.raises(BnnError) as err:
        data.make_pipeline(ds, batch_size=4, normalization=norm, training=True,
                           teacher_logits=logits[:19])
    assert str(err.value) == ("Expected teacher logits of shape (20, classes), one row per "
                              "example, got (19, 2).")


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(BnnError, match="Unknown data set 'imagenet1k'; expected one of: .*digits"):
        data.load_dataset("imagenet1k")


def test_tfds_download_failure_says_so_and_names_offline_options(monkeypatch):
    import tensorflow_datasets as tfds

    class OfflineBuilder:
        def download_and_prepare(self):
            raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: OfflineBuilder())
    with pytest.raises(BnnError) as info:
        data.load_dataset("cifar10")
    message = str(info.value)
    assert "Could not download or prepare the TFDS data set 'cifar10'" in message
    # The library names the fields; `bnn train` spells them --dataset and --data-dir.
    assert "Failed to resolve" in message and "`dataset` digits" in message
    assert "`data_dir`" in message and "\n" not in message


# ---------------------------------------------------------------------------------------------
# IDX files, image folders, pixel_max, pipelines, TFDS manual downloads


def _write_idx(path, array, compress):
    import gzip
    import struct

    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips_uint8_and_big_endian_int32(tmp_path, compress):
    images = np.random.RandomState(0).randint(0, 256, (3, 4, 5)).astype(np.uint8)
    ints = np.array([1, -2, 70000], ">i4")
    read = data.read_idx(_write_idx(tmp_path / "a", images, compress))
    np.testing.assert_array_equal(read, images)
    read = data.read_idx(_write_idx(tmp_path / "b", ints, compress))
    np.testing.assert_array_equal(read, [1, -2, 70000])


def test_read_idx_rejects_truncated_files(tmp_path):
    path = _write_idx(tmp_path / "a", np.zeros((2, 3, 3), np.uint8), False)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(BnnError, match="truncated"):
        data.read_idx(path)


def _write_mnist_folder(folder, compress):
    rng = np.random.RandomState(1)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (6, 28, 28)).astype(np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 9, 9, 3], np.uint8),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (2, 28, 28)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": np.array([4, 5], np.uint8),
    }
    for name, array in arrays.items():
        _write_idx(folder / name, array, compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_from_an_idx_folder_without_tfds(tmp_path, monkeypatch, compress):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds, "builder", lambda *a, **k: pytest.fail("TFDS must not be used"))
    arrays = _write_mnist_folder(tmp_path, compress)
    splits = data.load_dataset("fashion_mnist", data_dir=str(tmp_path))
    assert (splits.num_train, splits.num_test, splits.image_shape) == (6, 2, (28, 28, 1))
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    assert splits.pixel_max == 255.0
    x = np.stack([img.numpy() for img, _ in splits.train])
    y = np.array([label.numpy() for _, label in splits.test])
    np.testing.assert_array_equal(x[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y, [4, 5])
    assert splits.normalization.mean[0] == pytest.approx(arrays["train-images-idx3-ubyte"].mean())


def test_mnist_idx_folder_names_classes_by_digit(tmp_path):
    _write_mnist_folder(tmp_path, True)
    splits = data.load_dataset("mnist", data_dir=str(tmp_path))
    assert splits.class_names == [str(d) for d in range(10)]


def test_a_data_dir_without_the_idx_files_names_them_and_the_folder(tmp_path, monkeypatch):
    """Offline, a wrong `data_dir` for mnist/fashion_mnist says which IDX files it lacks (not
    only that TFDS cannot download), and without `data_dir` which folder was looked in."""
    from bnn_keras.training.data import sources

    def offline(name, data_dir, **kwargs):
        raise BnnError(f"Could not download or prepare the TFDS data set {name!r} (offline).")

    monkeypatch.setattr(sources, "load_tfds", offline)
    _write_mnist_folder(tmp_path, False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(BnnError) as partial:
        data.load_dataset("fashion_mnist", data_dir=str(tmp_path))
    assert str(partial.value) == (
        f"No fashion_mnist IDX files in `data_dir` {tmp_path} (missing t10k-labels-idx1-ubyte, "
        "each optionally .gz); and TensorFlow Datasets: Could not download or prepare the TFDS "
        "data set 'fashion_mnist' (offline).")
    with pytest.raises(BnnError, match=r"^`data_dir` /no/such/folder is not a folder, so it has "
                                       r"no mnist IDX files \(train-images-idx3-ubyte, "):
        data.load_dataset("mnist", data_dir="/no/such/folder")
    monkeypatch.setattr(sources, "has_idx_files", lambda folder: False)
    with pytest.raises(BnnError, match=r"^Without `data_dir`, fashion_mnist is read from "
                                       r"/usr/share/datasets/fashion-mnist \(Debian's "
                                       r"dataset-fashion-mnist package: apt-get install "
                                       r"dataset-fashion-mnist\), which has no IDX files here"):
        data.load_dataset("fashion_mnist")


def test_each_source_says_where_its_images_come_from(tmp_path):
    _write_mnist_folder(tmp_path, False)
    assert data.load_dataset("mnist", data_dir=str(tmp_path)).source == f"IDX files in {tmp_path}"
    assert data.load_dataset("digits").source == "scikit-learn's bundled 8x8 digits"


def test_idx_folder_with_a_missing_file_says_which(tmp_path):
    _write_mnist_folder(tmp_path, False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(BnnError, match="t10k-labels-idx1-ubyte"):
        data.load_idx_folder("mnist", str(tmp_path))


@pytest.mark.skipif(
    not data.has_idx_files(data.DEBIAN_FASHION_MNIST_DIR),
    reason="Debian package dataset-fashion-mnist not installed "
    "(apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_the_debian_package():
    splits = data.load_dataset("fashion_mnist", data_dir=data.DEBIAN_FASHION_MNIST_DIR)
    assert (splits.num_train, splits.num_test) == (60_000, 10_000)
    assert splits.image_shape == (28, 28, 1) and splits.num_classes == 10
    # In two batches: an eager loop over 10,000 single images takes ~10 s.
    labels = np.concatenate([y.numpy() for _, y in splits.test.batch(5000)])
    # Fashion-MNIST's test split is balanced: 1,000 images per class.
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)
    # Published mean pixel value of the training set: 72.94 (0.2860 x 255).
    assert splits.normalization.mean[0] == pytest.approx(72.94, abs=0.1)


def _write_pngs(folder, classes, per_class, size=(6, 5), channels=3):
    rng = np.random.RandomState(2)
    written = {}
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.randint(0, 256, (*size, channels)).astype(np.uint8)
            path = folder / c / f"img{i}.png"
            path.write_bytes(tf.io.encode_png(image).numpy())
            written[f"{c}/img{i}.png"] = image
    return written


def test_folder_source_with_train_and_test_subfolders(tmp_path):
    train = _write_pngs(tmp_path / "train", ["cat", "dog"], 2)
    test = _write_pngs(tmp_path / "test", ["cat", "dog"], 1)
    splits = data.load_dataset(f"folder:{tmp_path}")
    assert splits.class_names == ["cat", "dog"] and splits.image_shape == (6, 5, 3)
    assert (splits.num_train, splits.num_test, splits.pixel_max) == (4, 2, 255.0)
    assert splits.augmentation == "crop_flip"
    images = [(img.numpy(), int(y)) for img, y in splits.train]
    # Sorted paths: cat/img0, cat/img1, dog/img0, dog/img1.
    np.testing.assert_array_equal(images[2][0], train["dog/img0.png"])
    assert [y for _, y in images] == [0, 0, 1, 1]
    np.testing.assert_array_equal(next(iter(splits.test))[0].numpy(), test["cat/img0.png"])


def test_single_folder_is_split_by_path_hash(tmp_path):
    import zlib

    written = _write_pngs(tmp_path, ["a", "b"], 10, channels=1)
    splits = data.load_dataset(f"folder:{tmp_path}")
    expected_test = sorted(k for k in written if zlib.crc32(k.encode()) % 100 < 20)
    assert splits.num_test == len(expected_test) and splits.num_train == 20 - len(expected_test)
    assert splits.image_shape == (6, 5, 1) and splits.augmentation == "none"
    test_images = [img.numpy() for img, _ in splits.test]
    for got, key in zip(test_images, expected_test):
        np.testing.assert_array_equal(got, written[key])


def test_one_class_folder_is_refused(tmp_path):
    # Before, it trained to a constant and reported accuracy 0.0000 (issue 13's fault tour).
    _write_pngs(tmp_path, ["only"], 10)
    with pytest.raises(BnnError, match="has 1 class \\(only\\); a classifier needs at least 2"):
        data.load_dataset(f"folder:{tmp_path}")


def test_empty_folder_says_what_layout_is_expected(tmp_path):
    with pytest.raises(BnnError, match="one sub-folder per class"):
        data.load_dataset(f"folder:{tmp_path}")


def test_pixel_max_is_16_for_digits_and_255_by_default(digits):
    assert digits.pixel_max == 16.0
    assert data.DataSplits.__dataclass_fields__["pixel_max"].default == 255.0


@pytest.mark.parametrize("training", [False, True])
def test_untuned_pipeline_gives_the_same_batches_as_the_tuned_one(digits, training):
    options = dict(batch_size=50, normalization=digits.normalization, image_size=(16, 16),
                   training=training, seed=5)
    tuned = list(data.make_pipeline(digits.train, tuned=True, **options).take(4))
    untuned = list(data.make_pipeline(digits.train, tuned=False, **options).take(4))
    for (xa, ya), (xb, yb) in zip(tuned, untuned):
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
        np.testing.assert_allclose(xa.numpy(), xb.numpy(), rtol=1e-6, atol=1e-6)
    if training:  # shuffled: not the split's own order
        first = np.array([y.numpy() for _, y in digits.train.take(50)])
        assert not np.array_equal(tuned[0][1].numpy(), first)


def test_cache_is_decided_by_the_preprocessed_size(digits):
    small = data.pipeline._fits_in_memory(digits.train, (16, 16), data.CACHE_LIMIT_BYTES)
    # 1,437 images of 224x224x1 float32 is 288 MB: not under a 100 MB limit.
    large = data.pipeline._fits_in_memory(digits.train, (224, 224), 100 * 1024**2)
    assert small and not large


def test_resized_crop_flip_is_reproducible_and_has_the_model_size():
    images = np.random.RandomState(3).uniform(0, 255, (4, 40, 30, 3)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images, np.arange(4, dtype=np.int32)))
    norm = data.Normalization(mean=(0.0,) * 3, std=(1.0,) * 3)

    def batches(seed):
        return data.to_numpy(data.make_pipeline(
            ds, batch_size=4, normalization=norm, image_size=(16, 16), training=True,
            augmentation="resized_crop_flip", seed=seed))

    (a, ya), (b, yb) = batches(1), batches(1)
    assert a.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    plain = tf.image.resize(images[ya], (16, 16)).numpy()
    assert not np.allclose(a, plain, atol=1.0)


def test_tfds_manual_download_error_names_files_and_folder(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    class ImageNetBuilder:
        MANUAL_DOWNLOAD_INSTRUCTIONS = "download the tars"

        def is_prepared(self):
            return False

        def download_and_prepare(self, **kwargs):
            pytest.fail("must not try to download without the manual files")

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: ImageNetBuilder())
    with pytest.raises(BnnError) as info:
        data.load_dataset("imagenet2012", data_dir=str(tmp_path))
    message = str(info.value)
    assert "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in message
    assert str(tmp_path / "downloads" / "manual") in message
    with pytest.raises(BnnError, match=str(tmp_path / "mine")):
        data.load_dataset("imagenet2012", data_dir=str(tmp_path), manual_dir=str(tmp_path / "mine"))


def test_tfds_set_without_test_split_uses_validation(monkeypatch):
    import tensorflow_datasets as tfds

    class Split:
        def __init__(self, n):
            self.num_examples = n

    class Feature:
        def __init__(self, shape=None, names=None):
            self.shape, self.names = shape, names

    class Info:
        splits = {"train": Split(3), "validation": Split(2)}
        features = {"image": Feature(shape=(None, None, 3)), "label": Feature(names=["a", "b"])}

    requested = []

    class Builder:
        info = Info()

        def download_and_prepare(self):
            pass

        def as_dataset(self, split, as_supervised):
            requested.append(split)
            n = self.info.splits[split].num_examples
            images = np.full((n, 5, 7, 3), 10 if split == "train" else 20, np.uint8)
            return tf.data.Dataset.from_tensor_slices((images, np.zeros(n, np.int64)))

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: Builder())
    splits = data.load_dataset("imagenette")
    assert requested == ["train", "validation"]
    assert (splits.num_train, splits.num_test, splits.default_image_size) == (3, 2, 224)
    assert splits.image_shape == (None, None, 3) and splits.augmentation == "resized_crop_flip"
    assert float(next(iter(splits.test))[0][0, 0, 0]) == 20.0
    assert splits.normalization.mean == (10.0, 10.0, 10.0)


# ---------------------------------------------------------------------------------------------
# The package keeps the one-module API; image folders are checked without decoding every file


def test_the_package_exports_every_name_of_the_former_module():
    from bnn_keras.training.data import images, normalization, pipeline, sources

    # The public names of bnn_keras/training/data.py before it became a package.
    former = {
        "AUGMENTATIONS", "CACHE_LIMIT_BYTES", "DEBIAN_FASHION_MNIST_DIR", "DEFAULT_PIXEL_MAX",
        "DataSplits", "FASHION_MNIST_CLASSES", "FOLDER_PREFIX", "FOLDER_TEST_PERCENT",
        "IMAGE_EXTENSIONS", "NETWORK_PROBE_ENV", "Normalization", "has_idx_files",
        "image_file_size", "list_datasets", "load_dataset", "load_digits", "load_idx_folder",
        "load_image_folder", "load_tfds", "make_pipeline", "network_unreachable_reason",
        "preprocess", "read_idx", "to_numpy",
    }
    # and the names added since.
    assert set(data.__all__) == former | {"used_training_examples"}
    assert data.Normalization is normalization.Normalization
    assert data.load_dataset is sources.load_dataset and data.preprocess is pipeline.preprocess
    assert data.image_file_size is images.image_file_size


def _image_bytes(fmt, size=(13, 9)):
    import io

    from PIL import Image

    pixels = np.random.RandomState(4).randint(0, 256, (size[1], size[0], 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _decodes(raw: bytes) -> bool:
    try:
        tf.io.decode_image(raw, expand_animations=False)
        return True
    except tf.errors.InvalidArgumentError:
        return False


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_looks_complete_agrees_with_the_decoder(tmp_path, fmt):
    whole = _image_bytes(fmt)
    cases = {"whole": whole, "cut by 2 bytes": whole[:-2], "cut in half": whole[:len(whole) // 2],
             "empty": b"", "error page": b"<html>404 Not Found</html>"}
    if fmt == "PNG":  # its chunks carry a CRC-32: damage inside the image data is found too
        middle = len(whole) // 2
        cases["one byte changed"] = whole[:middle] + bytes([whole[middle] ^ 0xFF]) + whole[
            middle + 1:]
    for name, raw in cases.items():
        path = tmp_path / f"{name}.{fmt.lower()}"
        path.write_bytes(raw)
        assert data.images.looks_complete(path) == (name == "whole"), name
        assert _decodes(raw) == (name == "whole"), name
    assert not data.images.looks_complete(tmp_path / "missing.png")


def test_folder_decodes_only_the_normalization_sample_and_files_that_look_damaged(
        tmp_path, monkeypatch):
    import zlib
    from pathlib import Path

    _write_pngs(tmp_path, ["a", "b"], 10)
    # Bytes after a JPEG's end marker: the file looks damaged, yet decodes, so it is accepted.
    padded = tmp_path / "b" / "padded.jpg"
    padded.write_bytes(_image_bytes("JPEG", size=(5, 6)) + b"\0" * 16)
    decoded = []
    real = data.images.decoded_images

    def counting(files, decode):
        decoded.extend(Path(p).name for p, _ in files)
        return real(files, decode)

    monkeypatch.setattr(data.folder, "decoded_images", counting)
    monkeypatch.setattr(data.images, "decoded_images", counting)
    monkeypatch.setattr(data.folder, "NORMALIZATION_SAMPLE_LARGE", 3)
    splits = data.load_dataset(f"folder:{tmp_path}")
    first_train = [f"img{i}.png" for i in range(10) if zlib.crc32(f"a/img{i}.png".encode()) % 100
                   >= 20][:3]
    # The first training image (for the shape), the normalization sample, the padded JPEG.
    assert decoded == first_train[:1] + first_train + ["padded.jpg"]
    assert splits.num_train + splits.num_test == 21
    everything = [x.numpy() for split in (splits.train, splits.test) for x, _ in split]
    assert len(everything) == 21 and all(x.shape == (6, 5, 3) for x in everything)


@pytest.mark.parametrize("fmt, damage, reason", [
    ("PNG", lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:], "Invalid PNG data"),
    ("JPEG", lambda b: b[:-100], "Invalid JPEG data"),
    ("BMP", lambda b: b[:-1], "Input size should match"),
])
def test_a_damaged_file_after_the_normalization_sample_is_named(tmp_path, monkeypatch, fmt,
                                                               damage, reason):
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                (tmp_path / split / c / f"{i}.{fmt.lower()}").write_bytes(_image_bytes(fmt))
    bad = tmp_path / "train" / "dog" / f"1.{fmt.lower()}"
    bad.write_bytes(damage(bad.read_bytes()))
    monkeypatch.setattr(data.folder, "NORMALIZATION_SAMPLE_LARGE", 1)
    with pytest.raises(BnnError) as info:
        data.load_dataset(f"folder:{tmp_path}")
    message = str(info.value)
    assert message.startswith(f"Image file {bad} cannot be decoded (") and reason in message
    assert "\n" not in message
