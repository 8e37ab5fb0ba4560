"""`import_reference`: manifests of images and DICOM series folders become labelled, approved
reference cases, idempotently; bad rows are rejected with the reason and leave nothing."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image

from cases.dicom_writer import write_ct_series
from cases.models import Diagnosis, ExpertLabel, Patient, ReferenceCase, Series, Slice, Study
from cases.phantom import chest_phantom
from cases.services.ingestion import patient_pseudonym, uid_pseudonym
from cases.services.reference_import import (
    IMPORT_COMMENT,
    SERVICE_ACCOUNT,
    ManifestRow,
    reference_import_user,
    reference_manifest_import,
    reference_row_import,
)
from cases.uids import deterministic_uid
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _manifest(folder: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    path = folder / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient_id", "split"])
        writer.writerows(rows)
    return path


def _media_files() -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(p for p in root.rglob("*") if p.is_file())


def _load(slice_: Slice) -> np.ndarray:
    with slice_.pixels.open("rb") as fh:
        return np.load(fh, allow_pickle=False)


@pytest.fixture
def library(tmp_path) -> dict:
    """A small library of each supported kind: 8-bit PNG, RGB JPEG, signed 16-bit TIFF (HU)
    and a DICOM series folder."""
    data = tmp_path / "lib"
    data.mkdir()
    grey = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
    Image.fromarray(grey).save(data / "a.png")
    rgb = np.zeros((40, 56, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(data / "b.jpg", quality=95)
    hu, _ = chest_phantom(size=64, seed=1)
    tifffile.imwrite(data / "c.tif", hu)
    volume = np.stack([chest_phantom(size=48, seed=k, anatomy_seed=3)[0] for k in range(3)])
    write_ct_series(
        volume_hu=volume,
        folder=data / "dicom" / "p4",
        patient_id="P4",
        study_uid=deterministic_uid("test-lib", "study"),
        series_uid=deterministic_uid("test-lib", "series"),
        slice_spacing=10.0,
    )
    manifest = _manifest(
        data,
        [
            ("a.png", "Normal", "P1", "train"),
            ("b.jpg", "Ground-glass", "P2", "train"),
            ("c.tif", "Consolidation", "P3", "test"),
            ("dicom/p4", "Reticulation/honeycombing", "P4", "test"),
        ],
    )
    return {"dir": data, "manifest": manifest, "grey": grey, "hu": hu, "volume": volume}


def test_import_creates_patients_studies_slices_labels_and_approved_reference_cases(
    library, admin_user
):
    report = reference_manifest_import(manifest=library["manifest"], admin=admin_user)
    assert report.summary() == "4 created, 0 existing, 0 rejected"
    assert Study.objects.count() == 4
    for study in Study.objects.all():
        assert study.status == Study.Status.REVIEWED
        assert study.source == Study.Source.REFERENCE_IMPORT
        assert study.uploaded_by == admin_user
        label = ExpertLabel.objects.get(study=study)
        assert label.expert == admin_user and label.comment == IMPORT_COMMENT
        ref = ReferenceCase.objects.get(study=study)
        assert ref.state == ReferenceCase.State.APPROVED
        assert ref.proposed_by == admin_user and ref.approved_by == admin_user
        assert ref.decided_at is not None and ref.diagnosis == label.diagnosis
    # Pseudonyms are the salted hash of the manifest's patient_id, as in DICOM ingestion.
    for pid in ("P1", "P2", "P3", "P4"):
        assert Patient.objects.filter(pseudonym=patient_pseudonym(patient_id=pid)).exists()
    assert not Patient.objects.filter(pseudonym__in=["P1", "P2", "P3", "P4"]).exists()
    # Labels that were not in the taxonomy are created; known ones are reused.
    assert Diagnosis.objects.filter(name="Ground-glass").exists()
    normal = ReferenceCase.objects.get(study__patient__pseudonym=patient_pseudonym(patient_id="P1"))
    assert normal.diagnosis.code == "normal"


def test_images_are_stored_as_windowed_uint8_or_int16_hounsfield_units(library, admin_user):
    reference_manifest_import(manifest=library["manifest"], admin=admin_user)

    def only_slice(pid):
        return Slice.objects.get(
            series__study__patient__pseudonym=patient_pseudonym(patient_id=pid)
        )

    png = only_slice("P1")
    assert png.is_windowed and png.hu_min is None
    assert np.array_equal(_load(png), library["grey"])
    jpg = only_slice("P2")
    pixels = _load(jpg)
    assert jpg.is_windowed and pixels.dtype == np.uint8 and pixels.shape == (40, 56)
    assert abs(int(pixels.mean()) - 124) <= 3  # BT.601 luma of (200, 100, 50)
    tif = only_slice("P3")
    assert not tif.is_windowed
    assert _load(tif).dtype == np.int16
    assert np.array_equal(_load(tif), library["hu"])
    assert tif.hu_min == library["hu"].min() and tif.hu_max == library["hu"].max()
    series = tif.series
    assert (series.rows, series.columns, series.slice_count) == (64, 64, 1)


def test_dicom_series_folder_is_imported_through_ingestion_with_its_slices(library, admin_user):
    reference_manifest_import(manifest=library["manifest"], admin=admin_user)
    source_uid = deterministic_uid("test-lib", "study")
    study = Study.objects.get(study_instance_uid=uid_pseudonym(uid=source_uid))
    series = study.series.get()
    assert series.slice_count == 3
    slices = list(series.slices.order_by("index"))
    stored = np.stack([_load(s) for s in slices])
    # Ingestion orders along the slice normal (ascending z): the writer went head to feet.
    assert np.array_equal(stored, library["volume"][::-1])
    assert study.reference_cases.get().diagnosis.name == "Reticulation/honeycombing"


def test_reimport_creates_nothing_new(library, admin_user):
    reference_manifest_import(manifest=library["manifest"], admin=admin_user)
    counts = [m.objects.count() for m in (Patient, Study, Series, Slice, ExpertLabel)]
    refs = ReferenceCase.objects.count()
    files = _media_files()
    report = reference_manifest_import(manifest=library["manifest"], admin=admin_user)
    assert report.summary() == "0 created, 4 existing, 0 rejected"
    assert [m.objects.count() for m in (Patient, Study, Series, Slice, ExpertLabel)] == counts
    assert ReferenceCase.objects.count() == refs
    assert _media_files() == files


def test_bad_rows_are_rejected_with_reasons_and_leave_nothing_while_good_rows_import(
    tmp_path, admin_user
):
    data = tmp_path / "bad"
    (data / "notdicom").mkdir(parents=True)
    (data / "notdicom" / "readme.txt").write_text("not a DICOM file")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(data / "ok.png")
    whole = (data / "ok.png").read_bytes()
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(data / "full.png")
    (data / "truncated.png").write_bytes((data / "full.png").read_bytes()[:60])
    (data / "notes.txt").write_text("hello")
    tifffile.imwrite(data / "u16.tif", np.zeros((16, 16), np.uint16))
    assert whole
    manifest = _manifest(
        data,
        [
            ("ok.png", "Normal", "Q1", "train"),
            ("missing.png", "Normal", "Q2", "train"),
            ("truncated.png", "Normal", "Q3", "train"),
            ("notes.txt", "Normal", "Q4", "train"),
            ("full.png", "", "Q5", "train"),
            ("full.png", "Normal", "", "train"),
            ("u16.tif", "Normal", "Q7", "train"),
            ("notdicom", "Normal", "Q8", "train"),
            ("full.png", "Brand-new label", "Q9", "validation"),
        ],
    )
    report = reference_manifest_import(manifest=manifest, admin=admin_user)
    assert report.summary() == "1 created, 0 existing, 8 rejected"
    reasons = {o.row.line: o.reason for o in report.rejected}
    assert "missing file or folder" in reasons[3]
    assert "unreadable PNG" in reasons[4] and "truncated.png" in reasons[4]
    assert "unknown format" in reasons[5]
    assert reasons[6] == "empty label"
    assert reasons[7] == "empty patient_id"
    assert "uint16" in reasons[8]
    assert "readme.txt" in reasons[9] or "notdicom" in reasons[9]
    assert "neither train nor test" in reasons[10]
    # Only the good row is stored: one study, one slice file, no label created for rejects.
    assert Study.objects.count() == 1
    assert Patient.objects.count() == 1
    assert not Diagnosis.objects.filter(name="Brand-new label").exists()
    assert len(_media_files()) == 1


def test_a_rejected_dicom_folder_leaves_no_rows_and_no_media(tmp_path, admin_user):
    folder = tmp_path / "series"
    written = write_ct_series(
        volume_hu=np.stack([chest_phantom(size=32, seed=k)[0] for k in range(3)]),
        folder=folder,
        patient_id="R1",
        study_uid=deterministic_uid("r", "study"),
        series_uid=deterministic_uid("r", "series"),
    )
    written.paths[1].write_bytes(written.paths[1].read_bytes()[:400])  # truncated instance
    outcome = reference_row_import(
        row=ManifestRow(line=2, path=str(folder), label="Normal", patient_id="R1"),
        base_dir=tmp_path,
        admin=admin_user,
    )
    assert outcome.status == "rejected"
    assert "IM0002.dcm" in outcome.reason
    assert Study.objects.count() == 0 and Slice.objects.count() == 0
    assert _media_files() == []


def test_same_image_with_a_different_label_is_rejected_not_relabelled(tmp_path, admin_user):
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(tmp_path / "x.png")
    first = _manifest(tmp_path, [("x.png", "Normal", "S1", "")])
    reference_manifest_import(manifest=first, admin=admin_user)
    second = _manifest(tmp_path, [("x.png", "Other", "S1", "")])
    report = reference_manifest_import(manifest=second, admin=admin_user)
    assert report.summary() == "0 created, 0 existing, 1 rejected"
    assert (
        "already in the reference library (approved) labelled 'Normal'" in report.rejected[0].reason
    )
    assert ReferenceCase.objects.get().diagnosis.name == "Normal"
    assert ExpertLabel.objects.count() == 1


def test_absolute_paths_in_the_manifest_are_accepted(tmp_path, admin_user):
    image = tmp_path / "elsewhere" / "y.png"
    image.parent.mkdir()
    Image.fromarray(np.full((16, 16), 3, np.uint8)).save(image)
    sub = tmp_path / "m"
    sub.mkdir()
    manifest = _manifest(sub, [(str(image), "Normal", "T1", "test")])
    assert reference_manifest_import(manifest=manifest, admin=admin_user).created == 1


def test_command_reports_counts_rejects_and_exits_non_zero_on_rejects(library, admin_user, capsys):
    call_command(
        "import_reference", str(library["manifest"]), admin=admin_user.username, verbosity=0
    )
    assert "4 created, 0 existing, 0 rejected" in capsys.readouterr().out
    with open(library["manifest"], "a", newline="") as fh:
        csv.writer(fh).writerow(["nothing-here.png", "Normal", "P9", "train"])
    with pytest.raises(CommandError, match="1 row"):
        call_command(
            "import_reference", str(library["manifest"]), admin=admin_user.username, verbosity=0
        )
    captured = capsys.readouterr()
    assert "0 created, 4 existing, 1 rejected" in captured.out
    assert "line 6 (nothing-here.png): missing file or folder" in captured.err


def test_command_refuses_a_missing_manifest_or_header_or_unknown_admin(tmp_path, admin_user):
    with pytest.raises(CommandError, match="no such manifest"):
        call_command("import_reference", str(tmp_path / "none.csv"), verbosity=0)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.png,Normal\n")
    with pytest.raises(CommandError, match="path, label, patient_id"):
        call_command("import_reference", str(bad), verbosity=0)
    good = _manifest(tmp_path, [])
    with pytest.raises(CommandError, match="no user named 'ghost'"):
        call_command("import_reference", str(good), admin="ghost", verbosity=0)
    UserFactory(username="clin", role="Clinician")
    with pytest.raises(CommandError, match="neither an admin nor an expert"):
        call_command("import_reference", str(good), admin="clin", verbosity=0)


def test_importing_user_defaults_to_first_superuser_else_an_inactive_service_account():
    service = reference_import_user()
    assert service.username == SERVICE_ACCOUNT
    assert not service.is_active and not service.has_usable_password()
    assert reference_import_user().pk == service.pk  # not created twice
    boss = get_user_model().objects.create_superuser("root", password="pw-for-tests-123")
    assert reference_import_user() == boss


@pytest.mark.slow
def test_real_covid_ct_subset_imports_as_windowed_reference_images(covid_ct, tmp_path, admin_user):
    with open(covid_ct / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:20]
    manifest = _manifest(
        tmp_path,
        [
            (
                os.path.relpath(covid_ct / r["path"], tmp_path),
                r["label"],
                r["patient_id"],
                r["split"],
            )
            for r in rows
        ],
    )
    report = reference_manifest_import(manifest=manifest, admin=admin_user)
    assert report.summary() == "20 created, 0 existing, 0 rejected"
    assert Slice.objects.filter(is_windowed=True).count() == 20
    labels = set(ReferenceCase.objects.values_list("diagnosis__name", flat=True))
    assert labels == {r["label"] for r in rows}
    assert Patient.objects.count() == len({r["patient_id"] for r in rows})
    pixels = _load(Slice.objects.first())
    assert pixels.dtype == np.uint8 and pixels.ndim == 2 and pixels.std() > 10
    again = reference_manifest_import(manifest=manifest, admin=admin_user)
    assert again.summary() == "0 created, 20 existing, 0 rejected"
