"""`manage.py media_rekey`: files stored by older versions under UID-named keys move to the
id-based keys, through the storage API, without losing a byte (cases/services/media_rekey.py)."""

from __future__ import annotations

import io

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.urls import reverse

from cases.models import Series, Slice
from tests.factories import SeriesFactory, SliceFactory

pytestmark = pytest.mark.django_db


def legacy_series(slices: int = 2) -> Series:
    """A series laid out as older versions stored it: `slices/<SeriesInstanceUID>/` and
    `dicom/<StudyInstanceUID>/<SeriesInstanceUID>/`."""
    series = SeriesFactory()
    series.dicom_dir = f"dicom/{series.study.study_instance_uid}/{series.series_instance_uid}"
    series.save(update_fields=["dicom_dir"])
    for index in range(slices):
        slice_ = SliceFactory(series=series, index=index)
        default_storage.delete(slice_.pixels.name)
        old = f"slices/{series.series_instance_uid}/{index:04d}.npy"
        default_storage.save(old, ContentFile(f"pixels {index}".encode()))
        Slice.objects.filter(pk=slice_.pk).update(pixels=old)
        default_storage.save(
            f"{series.dicom_dir}/{index:04d}.dcm", ContentFile(f"dicom {index}".encode())
        )
    return series


def read(key: str) -> bytes:
    with default_storage.open(key, "rb") as fh:
        return fh.read()


def test_rekey_moves_legacy_files_to_id_keys_and_keeps_their_bytes():
    series = legacy_series()
    old_keys = list(series.slices.values_list("pixels", flat=True))
    old_dicom = f"{series.dicom_dir}/0001.dcm"
    out = io.StringIO()

    call_command("media_rekey", stdout=out)

    assert "moved 4 files" in out.getvalue()
    series.refresh_from_db()
    prefix = f"studies/{series.study_id}/series/{series.pk}"
    assert series.dicom_dir == f"{prefix}/dicom"
    for slice_ in series.slices.order_by("index"):
        assert slice_.pixels.name == f"{prefix}/hu/{slice_.index:04d}.npy"
        assert read(slice_.pixels.name) == f"pixels {slice_.index}".encode()
    assert read(f"{prefix}/dicom/0001.dcm") == b"dicom 1"
    assert not any(default_storage.exists(k) for k in [*old_keys, old_dicom])


def test_rekey_is_a_no_op_the_second_time_and_for_id_keyed_files():
    legacy_series()
    SliceFactory()  # stored under an id key already
    call_command("media_rekey", stdout=io.StringIO())
    out = io.StringIO()
    call_command("media_rekey", stdout=out)
    assert "moved 0 files" in out.getvalue()


def test_dry_run_lists_the_moves_and_changes_nothing():
    series = legacy_series(slices=1)
    old_key = series.slices.get().pixels.name
    out = io.StringIO()
    call_command("media_rekey", "--dry-run", stdout=out)
    assert f"{old_key} -> studies/" in out.getvalue()
    assert "would move 2 files" in out.getvalue()
    assert series.slices.get().pixels.name == old_key and default_storage.exists(old_key)


def test_legacy_and_rekeyed_files_are_both_served_through_their_row(client):
    series = legacy_series(slices=1)
    slice_ = series.slices.get()
    client.force_login(series.study.uploaded_by)
    url = reverse("api-file-slice-dcm", args=[slice_.pk])
    assert b"".join(client.get(url).streaming_content) == b"dicom 0"
    call_command("media_rekey", stdout=io.StringIO())
    assert b"".join(client.get(url).streaming_content) == b"dicom 0"
