"""Data sets: the fixed digits split, normalization, pipelines and offline failures."""

import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import data
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
    assert "Failed to resolve" in message and "--dataset digits" in message
    assert "--data-dir" in message and "\n" not in message
