"""GT boundary maps vs. a NumPy reimplementation of the official distance-transform recipe."""
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from gscnn_tf.losses.boundaries import boundary_map

IGNORE = 255


def official_edges(label, radius=2.0, num_classes=19, ignore=IGNORE):
    """Official GSCNN ``onehot_to_binary_edges`` with edge padding instead of zero padding.

    Per class c: dist = edt(mask_c) + edt(1 - mask_c), marked where dist <= radius; union
    over all classes (class 0 included); ignore pixels removed at the end.
    """
    edges = np.zeros(label.shape, dtype=bool)
    for c in range(num_classes):
        mask = (label == c).astype(np.float64)
        if mask.all() or not mask.any():
            continue  # edt of an array without zeros is undefined: no border for this class
        padded = np.pad(mask, 1, mode="edge")
        dist = ndimage.distance_transform_edt(padded) + ndimage.distance_transform_edt(1.0 - padded)
        dist = dist[1:-1, 1:-1]
        edges |= (dist > 0) & (dist <= radius)
    return (edges & (label != ignore)).astype(np.float32)


def blobby_labels(rng, h, w, num_classes=19, ignore_frac=0.15):
    """Smooth random regions (argmax of blurred noise) plus a few ignore blobs."""
    noise = ndimage.gaussian_filter(rng.normal(size=(num_classes, h, w)), sigma=(0, 2.5, 2.5))
    label = noise.argmax(0).astype(np.int32)
    ign = ndimage.gaussian_filter(rng.normal(size=(h, w)), 3.0)
    label[ign > np.quantile(ign, 1 - ignore_frac)] = IGNORE
    return label


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_official_recipe_on_blobby_maps(seed):
    rng = np.random.default_rng(seed)
    labels = np.stack([blobby_labels(rng, 37, 45) for _ in range(3)])
    assert (labels == IGNORE).any() and len(np.unique(labels)) > 5
    expected = np.stack([official_edges(l) for l in labels])
    got = boundary_map(tf.constant(labels)).numpy()
    assert got.dtype == np.float32 and got.shape == labels.shape
    np.testing.assert_array_equal(got, expected)
    assert 0 < expected.sum() < expected.size  # non-trivial case
    # Unbatched (H, W) and uint8 input give the same map.
    np.testing.assert_array_equal(boundary_map(tf.constant(labels[0].astype(np.uint8))).numpy(), expected[0])


@pytest.mark.parametrize("radius", [1.0, 1.5, 3.0])
def test_other_radii(radius):
    labels = blobby_labels(np.random.default_rng(7), 30, 30, num_classes=6)
    np.testing.assert_array_equal(boundary_map(labels, radius=radius).numpy(), official_edges(labels, radius))


def test_border_is_not_a_boundary_and_class0_counts():
    label = np.zeros((10, 12), np.int32)
    assert boundary_map(label).numpy().sum() == 0  # official zero padding would mark the border
    label[:, 6:] = 1  # class 0 | class 1 vertical border
    got = boundary_map(label).numpy()
    expected = np.zeros_like(got)
    expected[:, 4:8] = 1  # columns 4,5 (class 0) and 6,7 (class 1): within distance 2
    np.testing.assert_array_equal(got, expected)


def test_ignore_counts_as_different_and_is_never_boundary():
    label = np.full((9, 9), 3, np.int32)
    label[4, 4] = IGNORE
    got = boundary_map(label).numpy()
    yy, xx = np.mgrid[:9, :9]
    expected = (((yy - 4) ** 2 + (xx - 4) ** 2) <= 4).astype(np.float32)
    expected[4, 4] = 0
    np.testing.assert_array_equal(got, expected)
    assert boundary_map(np.full((5, 5), IGNORE)).numpy().sum() == 0


def test_inside_tf_data_with_dynamic_shapes():
    rng = np.random.default_rng(3)
    maps = [blobby_labels(rng, h, w, num_classes=5) for h, w in [(20, 31), (17, 9), (3, 2)]]
    ds = tf.data.Dataset.from_generator(lambda: iter(maps), output_signature=tf.TensorSpec((None, None), tf.int32))
    for label, got in zip(maps, ds.map(boundary_map)):
        np.testing.assert_array_equal(got.numpy(), official_edges(label))
