"""`manage.py import_study`: output, idempotence, refusals and the real Lung-PET-CT-Dx data."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from cases.models import Series, Slice, Study
from cases.services.ingestion import uid_pseudonym
from tests.dicomgen import ct_series_write

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command("import_study", *[str(a) for a in args], stdout=out)
    return out.getvalue()


def test_command_prints_created_then_found_study(admin_user, tmp_path):
    gen = ct_series_write(folder=tmp_path / "s", slices=3)
    out = run(tmp_path / "s", "--uploader", admin_user.username)
    study = Study.objects.get()
    uid = uid_pseudonym(uid=gen.study_uid)  # the stored UID, never the source one
    assert out.strip() == f"created study {study.pk} ({uid}): 1 series, 3 slices"
    out = run(tmp_path / "s", "--uploader", admin_user.username)
    assert out.strip() == f"found study {study.pk} ({uid}): 1 series, 3 slices"
    assert Slice.objects.count() == 3


def test_command_refuses_bad_file_with_its_name_and_saves_nothing(admin_user, tmp_path):
    ct_series_write(folder=tmp_path / "s", slices=2)
    (tmp_path / "s" / "junk.bin").write_bytes(b"\x01\x02garbage" * 50)
    with pytest.raises(CommandError, match=r"junk\.bin: not a DICOM file"):
        run(tmp_path / "s", "--uploader", admin_user.username)
    assert Study.objects.count() == 0


def test_command_refuses_unknown_uploader(tmp_path):
    ct_series_write(folder=tmp_path / "s", slices=1)
    with pytest.raises(CommandError, match="no user named 'ghost'"):
        run(tmp_path / "s", "--uploader", "ghost")


def test_command_imports_real_lung_pet_ct_dx_studies(admin_user, lung_pet_ct_dx):
    out = run(lung_pet_ct_dx / "A0001", lung_pet_ct_dx / "A0002", "--uploader", admin_user.username)
    lines = out.strip().splitlines()
    assert len(lines) == 2 and all(re.match(r"created study \d+ ", line) for line in lines)
    assert Study.objects.count() == 2  # one per patient
    counts = {
        study.patient_id: sorted(study.series.values_list("slice_count", flat=True))
        for study in Study.objects.all()
    }
    assert sorted(counts.values()) == [[30, 30], [64, 64]]
    assert Series.objects.filter(convolution_kernel__in=["B70f", "B40f"]).count() == 2

    # HU: air near -1000, soft tissue 0..100 well represented in the middle of the body.
    series = Series.objects.filter(slice_count=64).first()
    middle = series.slices.get(index=32)
    with middle.pixels.open("rb") as fh:
        hu = np.load(fh, allow_pickle=False)
    assert hu.shape == (512, 512) and hu.dtype == np.int16
    assert middle.hu_min <= -900
    corner = hu[:40, :40]
    assert -1100 <= float(np.median(corner)) <= -900
    assert all(s.hu_min <= -900 for s in Slice.objects.all())
    body = hu[hu > -500]
    soft = np.mean((body >= 0) & (body <= 100))
    assert soft > 0.3, soft
