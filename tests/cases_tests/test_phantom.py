"""The synthetic chest CT phantom: shapes, Hounsfield ranges, the true lung mask, patterns."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cases.phantom import PATTERNS, chest_phantom

SIZE = 128


@pytest.mark.parametrize("pattern", PATTERNS)
def test_phantom_returns_int16_hu_and_bool_lung_mask_of_the_requested_size(pattern):
    hu, mask = chest_phantom(size=SIZE, pattern=pattern, seed=1)
    assert hu.shape == mask.shape == (SIZE, SIZE)
    assert hu.dtype == np.int16
    assert mask.dtype == bool
    assert hu.min() >= -1024 and hu.max() <= 3071


def test_full_size_slice_is_512_square_by_default():
    hu, mask = chest_phantom(seed=0)
    assert hu.shape == mask.shape == (512, 512)


def test_air_outside_body_soft_tissue_and_bone_inside_and_lungs_near_minus_850():
    hu, mask = chest_phantom(size=SIZE, pattern="normal", seed=2)
    corners = np.concatenate([hu[:8, :8].ravel(), hu[-8:, -8:].ravel()])
    assert -1030 <= corners.mean() <= -970
    assert -900 <= np.median(hu[mask]) <= -780
    body = ~mask & (hu > -300)
    assert np.mean((hu[body] >= -150) & (hu[body] <= 100)) > 0.6  # fat and soft tissue
    assert (hu >= 500).sum() > 20  # ribs and spine


def test_lung_mask_is_two_lungs_either_side_of_the_midline():
    _, mask = chest_phantom(size=SIZE, pattern="normal", seed=3, z=0.0)
    labels, count = ndimage.label(mask)
    assert count == 2
    cols = [ndimage.center_of_mass(labels == k)[1] for k in (1, 2)]
    assert min(cols) < SIZE / 2 < max(cols)
    assert 0.1 < mask.mean() < 0.45
    assert not mask[:, SIZE // 2 - 2 : SIZE // 2 + 2].any()  # mediastinum is not lung


def test_lungs_are_small_at_the_apex_and_larger_towards_the_base():
    areas = [chest_phantom(size=SIZE, seed=4, z=z)[1].sum() for z in (-1.0, -0.5, 0.0)]
    assert areas[0] < areas[1] < areas[2]


def test_phantom_is_deterministic_in_its_seed_and_differs_between_seeds():
    a, ma = chest_phantom(size=SIZE, pattern="reticulation", seed=5)
    b, mb = chest_phantom(size=SIZE, pattern="reticulation", seed=5)
    c, mc = chest_phantom(size=SIZE, pattern="reticulation", seed=6)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert not np.array_equal(ma, mc)


def test_anatomy_seed_keeps_the_lung_outline_while_contents_change():
    a, ma = chest_phantom(size=SIZE, seed=1, anatomy_seed=9)
    b, mb = chest_phantom(size=SIZE, seed=2, anatomy_seed=9)
    assert np.array_equal(ma, mb)
    assert not np.array_equal(a, b)


def _in_range(hu, mask, low, high):
    values = hu[mask]
    return float(np.mean((values >= low) & (values <= high)))


def test_ground_glass_raises_patches_of_lung_to_about_minus_600_to_minus_450():
    normal, mask = chest_phantom(size=SIZE, pattern="normal", seed=7)
    ggo, mask_g = chest_phantom(size=SIZE, pattern="ground_glass", seed=7)
    assert np.array_equal(mask, mask_g)  # the pattern does not change the lung outline
    raised = mask & (ggo.astype(int) - normal.astype(int) > 150)
    assert raised.sum() > 0.15 * mask.sum()
    assert -650 <= np.median(ggo[raised]) <= -420
    assert _in_range(ggo, mask, -650, -420) > _in_range(normal, mask, -650, -420) + 0.1


def test_consolidation_makes_dense_lung_with_air_bronchograms_inside():
    cons, mask = chest_phantom(size=256, pattern="consolidation", seed=8)
    dense = mask & (cons >= -60) & (cons <= 110)
    assert dense.mean() / mask.mean() > 0.08
    # Air bronchograms: air-density pixels enclosed by the consolidation.
    near_dense = ndimage.binary_dilation(dense, iterations=2)
    assert (near_dense & mask & (cons <= -880)).sum() > 10


def test_reticulation_changes_the_subpleural_lung_more_than_the_core():
    normal, mask = chest_phantom(size=256, pattern="normal", seed=9, z=0.2)
    ret, _ = chest_phantom(size=256, pattern="reticulation", seed=9, z=0.2)
    changed = mask & (np.abs(ret.astype(int) - normal.astype(int)) > 100)
    depth = ndimage.distance_transform_edt(mask)
    rim = mask & (depth <= 8)
    core = mask & (depth > 20)
    assert core.sum() > 500
    assert changed[rim].mean() > 2 * max(changed[core].mean(), 0.01)
    # Honeycomb cysts: near-air holes that the normal lung does not have.
    assert (mask & (ret <= -930)).sum() > (mask & (normal <= -930)).sum()


@pytest.mark.parametrize("centre", [(0.5, 0.3), (0.5, 0.7)])
def test_focal_lesion_is_one_compact_blob_at_the_lesion_center(centre):
    normal, mask = chest_phantom(size=SIZE, pattern="normal", seed=10)
    lesion, _ = chest_phantom(
        size=SIZE, pattern="ground_glass", seed=10, lesion_center=centre, focal=True
    )
    changed = mask & (np.abs(lesion.astype(int) - normal.astype(int)) > 100)
    assert changed.sum() > 30
    row, col = ndimage.center_of_mass(changed)
    assert abs(row / SIZE - centre[0]) < 0.06
    assert abs(col / SIZE - centre[1]) < 0.06
    assert changed.mean() < 0.05  # compact, not spread over the lungs


def test_lesion_center_on_the_normal_pattern_still_draws_a_visible_lesion():
    normal, mask = chest_phantom(size=SIZE, pattern="normal", seed=11)
    lesion, _ = chest_phantom(size=SIZE, pattern="normal", seed=11, lesion_center=(0.5, 0.3))
    dense = mask & (lesion > -200) & ~(normal > -200)
    row, col = ndimage.center_of_mass(dense)
    assert dense.sum() > 30
    assert col / SIZE < 0.5


def test_unknown_pattern_and_out_of_range_lesion_center_are_refused():
    with pytest.raises(ValueError, match="unknown pattern"):
        chest_phantom(size=SIZE, pattern="emphysema", seed=0)
    with pytest.raises(ValueError, match="lesion_center"):
        chest_phantom(size=SIZE, seed=0, lesion_center=(1.5, 0.2))


def test_reticulation_is_more_extensive_at_the_bases_than_at_the_apex():
    def changed_fraction(z):
        normal, mask = chest_phantom(size=SIZE, pattern="normal", seed=12, z=z)
        ret, _ = chest_phantom(size=SIZE, pattern="reticulation", seed=12, z=z)
        return (mask & (np.abs(ret.astype(int) - normal.astype(int)) > 100)).sum() / mask.sum()

    assert changed_fraction(0.8) > changed_fraction(-0.8)
