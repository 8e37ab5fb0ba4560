import numpy as np
import pytest

from tests.factories import SliceFactory, UserFactory


@pytest.mark.django_db
def test_slice_factory_stores_readable_hu_pixels():
    s = SliceFactory()
    with s.pixels.open("rb") as fh:
        arr = np.load(fh)
    assert arr.shape == (64, 64) and arr.dtype == np.int16 and int(arr.min()) == -1000


@pytest.mark.django_db
def test_user_factory_role_puts_user_in_group():
    u = UserFactory(role="Expert")
    assert u.groups.filter(name="Expert").exists()
