"""De-identification to DICOM PS3.15 Annex E (cases/dicom/deid.py) and what ingestion stores.

The central check walks every stored dataset recursively against the profile's attribute list
(Table E.1-1): input files carry an identifying value in every attribute of the table that
pydicom knows, at the top level and in sequences up to three levels deep, plus private tags,
the attributes named in issue 7 and descriptions holding a name.
"""

from __future__ import annotations

import hashlib
import hmac
import io

import numpy as np
import pydicom
import pytest
from django.apps import apps
from django.core import serializers
from django.core.files.storage import default_storage
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, RLELossless, generate_uid

from cases.dicom import deid
from cases.dicom.deid import dataset_deidentify, profile_action, uid_remap
from cases.models import Patient, Series
from cases.services.ingestion import patient_pseudonym, study_import_paths, uid_pseudonym
from tests.dicomgen import PATIENT_ID, chest_phantom, ct_dataset, dataset_bytes
from tests.factories import UserFactory

KEY = b"a-test-key-of-enough-length-0123456789"
LABEL = "P-1A2B3C4D"
NAME = "Doe^Johnathan"
# Strings that must not survive anywhere outside the pixel data (compared case-insensitively).
SECRETS = ("secret", "johnathan", "doe^", PATIENT_ID.lower(), "saint example", "acc-998877")
# The ones ct_instance_read needs or the options keep: given ordinary values, not secrets.
_NOT_STUFFED = {"StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "PatientSex"}
_VR_MAX = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "DS": 16, "IS": 12}


def _uid(originals: set[str]) -> str:
    uid = generate_uid()
    originals.add(uid)
    return uid


def _private(ds: Dataset, text: str) -> None:
    block = ds.private_block(0x0029, "ACME SECRET", create=True)
    block.add_new(0x10, "LO", f"private {text}")


def _secret_value(vr: str, n: int, originals: set[str]):
    """An identifying value of the VR, carrying the word SECRET where the VR allows text."""
    if vr == "UI":
        return _uid(originals)
    if vr == "SQ":
        item = Dataset()
        item.PatientName = NAME
        item.PatientID = PATIENT_ID
        item.ReferencedSOPInstanceUID = _uid(originals)
        return Sequence([item])
    if vr in ("AE", "CS"):
        return f"SECRET{n}"
    if vr in _VR_MAX or vr in ("LT", "ST", "UT", "UC"):
        text = f"Secret{n}^Johnathan" if vr == "PN" else f"SECRET {n} {NAME}"
        if vr in ("DS", "IS"):
            return "77"
        return text[: _VR_MAX.get(vr, 1024)]
    fixed = {"AS": "042Y", "DA": "19990101", "TM": "235959", "DT": "19990101235959"}
    if vr in fixed:
        return fixed[vr]
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return 7
    if vr in ("FL", "FD"):
        return 7.5
    if vr == "UR":
        return f"http://secret.example/{n}"
    return f"SECRET{n:04d}".encode()  # OB, OW, UN, ...: even length


def stuffed_dataset(*, index: int, uids: dict, originals: set[str]) -> Dataset:
    """A readable CT slice with an identifying value in every Table E.1-1 attribute pydicom
    knows, and identifying values nested up to three levels deep."""
    sop = uids["sops"][index]
    ds = ct_dataset(
        hu=chest_phantom(size=16, seed=index),
        study_uid=uids["study"],
        series_uid=uids["series"],
        sop_uid=sop,
        position=(0.0, 0.0, 2.5 * index),
        instance_number=index + 1,
        patient_name=NAME,
    )
    for n, tag in enumerate(sorted(deid.PROFILE)):
        if tag in ds or tag.group in (0x0000, 0x0002, 0x0004):
            continue
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:  # newer than pydicom's dictionary: cannot be written without a VR
            continue
        if pydicom.datadict.keyword_for_tag(tag) in _NOT_STUFFED:
            continue
        ds.add_new(tag, vr, _secret_value(vr, n, originals))
    ds.StudyDescription = f"Chest CT for {NAME}"
    ds.SeriesDescription = f"Lung B70f {NAME}"
    ds.ImageComments = f"{NAME} follow-up"
    ds.FrameOfReferenceUID = uids["frame"]
    ds.ClinicalTrialSubjectID = "SECRET-SUBJECT-7"
    ds.ClinicalTrialSponsorName = "SECRET Sponsor of Johnathan"
    ds.ReviewerName = NAME
    _private(ds, PATIENT_ID)
    # Level 3: inside an item of a sequence the table does not list.
    deepest = Dataset()
    deepest.PatientName = NAME
    deepest.InstitutionName = "Saint Example Hospital"
    deepest.ClinicalTrialSponsorName = "SECRET deep sponsor"
    deepest.ReferencedSOPInstanceUID = uids["sops"][(index + 2) % len(uids["sops"])]
    _private(deepest, "deep")
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "39607008", "SCT", "Lung"
    region.AnatomicRegionModifierSequence = [deepest]
    # Level 2: inside Referenced Image Sequence (X/Z/U*), inside Source Image Sequence.
    inner = Dataset()
    inner.ReferencedSOPClassUID = CTImageStorage
    inner.ReferencedSOPInstanceUID = uids["sops"][(index + 1) % len(uids["sops"])]
    inner.PersonName = NAME
    inner.StudyDescription = f"Nested description for {NAME}"
    inner.AnatomicRegionSequence = [region]
    # Level 1: the issue's examples.
    source = Dataset()
    source.ReferencedSOPClassUID = CTImageStorage
    source.ReferencedSOPInstanceUID = uids["sops"][(index + 1) % len(uids["sops"])]
    source.PatientName = NAME
    source.PatientID = PATIENT_ID
    source.ClinicalTrialSubjectID = "SECRET-SUBJECT-8"
    source.ClinicalTrialSponsorName = "SECRET nested sponsor"
    source.ReviewerName = NAME
    source.ReferencedImageSequence = [inner]
    _private(source, PATIENT_ID)
    ds.SourceImageSequence = [source]
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "SECRET Saint Example"
    issuer.PatientName = NAME
    issuer.PatientID = PATIENT_ID
    ds.IssuerOfAccessionNumberSequence = [issuer]
    originals.update({uids["study"], uids["series"], uids["frame"], *uids["sops"]})
    originals.update(str(e.value) for e in ds.iterall() if e.VR == "UI" and e.value)
    originals -= {str(u) for u in originals if deid.uid_is_registered(str(u))}
    return ds


def new_uids(count: int = 3) -> dict:
    return {
        "study": generate_uid(),
        "series": generate_uid(),
        "frame": generate_uid(),
        "sops": [generate_uid() for _ in range(count)],
    }


# ---------------------------------------------------------------- the profile walk


def _values(elem) -> list:
    value = elem.value
    return list(value) if isinstance(value, (list, MultiValue)) else [value]


def _empty(elem) -> bool:
    return all(v in (None, "", b"") for v in _values(elem)) or (
        elem.VR == "SQ" and len(elem.value) == 0
    )


def _dummy(elem) -> bool:
    dummy = deid.DUMMY.get(elem.VR)
    if dummy is None or elem.VM != 1:
        return False
    if elem.VR in ("DS", "IS"):
        return float(elem.value) == float(dummy)
    return elem.value == dummy


def profile_violations(ds: Dataset, *, originals: set[str], label: str, path: str = "") -> list:
    """Every attribute of `ds` (recursively) that the Basic Profile with the recorded options
    does not allow: listed attributes present against their action, private tags, curves and
    overlays, source UIDs, and UIDs that are neither remapped nor registered."""
    found = []
    for elem in ds:
        tag, name = elem.tag, f"{path}{elem.keyword or elem.tag}"
        if tag.is_private or 0x5000 <= tag.group <= 0x50FF or 0x6000 <= tag.group <= 0x60FF:
            found.append(f"{name}: private, curve or overlay")
            continue
        if elem.VR == "UI":
            for uid in (str(v) for v in _values(elem) if v):
                if uid in originals:
                    found.append(f"{name}: source UID {uid}")
                elif not (
                    uid.startswith("2.25.")
                    or deid.uid_is_registered(uid)
                    or uid == PYDICOM_IMPLEMENTATION_UID
                ):
                    found.append(f"{name}: UID {uid} neither remapped nor registered")
        action = profile_action(tag)
        if tag in deid.LABELLED:
            if str(elem.value) != label:
                found.append(f"{name}: {elem.value!r} is not the pseudonymous label")
        elif tag in deid.RETAINED or action in (None, "U", "X/Z/U*"):
            pass  # kept by an option, not listed, or a UID (checked above)
        elif action == "X":
            found.append(f"{name}: present, action X")
        elif action in ("Z", "X/Z") and not _empty(elem):
            found.append(f"{name}: {elem.value!r}, action {action}")
        elif action in ("D", "X/D") and not (elem.VR == "UI" or _dummy(elem)):
            found.append(f"{name}: {elem.value!r}, action {action}")
        elif action in ("Z/D", "X/Z/D") and not (_empty(elem) or _dummy(elem)):
            found.append(f"{name}: {elem.value!r}, action {action}")
        if elem.VR == "SQ" and action != "X":
            for i, item in enumerate(elem.value):
                found += profile_violations(
                    item, originals=originals, label=label, path=f"{name}[{i}]."
                )
    return found


def file_violations(data: bytes, *, originals: set[str], label: str) -> list:
    """`profile_violations` of a stored file (file meta included), plus any secret or source
    UID anywhere in its bytes outside the pixel data."""
    ds = pydicom.dcmread(io.BytesIO(data))
    found = profile_violations(ds.file_meta, originals=originals, label=label, path="meta.")
    found += profile_violations(ds, originals=originals, label=label)
    del ds.PixelData
    text = dataset_bytes(ds).decode("latin-1").lower()
    found += [f"bytes: {s!r}" for s in SECRETS if s in text]
    found += [f"bytes: source UID {u}" for u in originals if u.lower() in text]
    return found


# ---------------------------------------------------------------- unit tests (no database)


def roundtrip(ds) -> tuple[pydicom.Dataset, bytes]:
    data = dataset_bytes(ds)
    return pydicom.dcmread(io.BytesIO(data)), data


def test_attribute_list_is_the_full_table_e1_1_with_the_issues_examples():
    assert len(deid.PROFILE) + len(deid.PROFILE_MASKED) >= 650
    actions = {
        "StudyDescription": "X",
        "SeriesDescription": "X",
        "ImageComments": "X",
        "ClinicalTrialSubjectID": "D",
        "ClinicalTrialSponsorName": "D",
        "ReviewerName": "X/Z",
        "SourceImageSequence": "X/Z/U*",
        "PatientID": "Z/D",
        "FrameOfReferenceUID": "U",
        "IssuerOfAccessionNumberSequence": "X",  # not in the table; removed all the same
    }
    got = {k: profile_action(pydicom.datadict.tag_for_keyword(k)) for k in actions}
    assert got == actions
    assert profile_action(0x60003000) == "X"  # (60xx,3000) Overlay Data, a masked row


def test_stuffed_dataset_has_hundreds_of_violations_before_and_none_after():
    originals: set[str] = set()
    ds = stuffed_dataset(index=0, uids=new_uids(), originals=originals)
    before = file_violations(dataset_bytes(ds), originals=originals, label=LABEL)
    assert len(before) > 500  # the check can fail: every stuffed attribute is caught
    clean, data = roundtrip(dataset_deidentify(ds=ds, patient_label=LABEL, uid_key=KEY))
    assert file_violations(data, originals=originals, label=LABEL) == []


def test_nested_examples_of_the_issue_are_gone_and_references_remapped():
    uids = new_uids()
    ds = stuffed_dataset(index=0, uids=uids, originals=set())
    clean, _ = roundtrip(dataset_deidentify(ds=ds, patient_label=LABEL, uid_key=KEY))
    [source] = clean.SourceImageSequence
    assert str(source.PatientName) == LABEL and source.PatientID == LABEL
    assert source.ClinicalTrialSubjectID == "DEIDENTIFIED"
    assert "ReviewerName" not in source and "ReviewerName" not in clean
    assert source.ReferencedSOPClassUID == CTImageStorage  # registered UIDs stay
    assert source.ReferencedSOPInstanceUID == uid_remap(uid=uids["sops"][1], key=KEY)
    [inner] = source.ReferencedImageSequence
    assert "StudyDescription" not in inner and inner.PersonName == "DEIDENTIFIED"
    deepest = inner.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0]
    assert "InstitutionName" not in deepest and str(deepest.PatientName) == LABEL
    assert deepest.ReferencedSOPInstanceUID == uid_remap(uid=uids["sops"][2], key=KEY)
    assert "IssuerOfAccessionNumberSequence" not in clean
    for keyword in ("StudyDescription", "SeriesDescription", "ImageComments"):
        assert keyword not in clean


def test_uids_are_remapped_deterministically_under_the_key():
    uids = new_uids()
    ds = ct_dataset(hu=chest_phantom(size=8), study_uid=uids["study"], series_uid=uids["series"])
    sop = ds.SOPInstanceUID
    clean, _ = roundtrip(dataset_deidentify(ds=ds, patient_label=LABEL, uid_key=KEY))
    assert clean.StudyInstanceUID == uid_remap(uid=uids["study"], key=KEY)
    assert clean.SOPInstanceUID == clean.file_meta.MediaStorageSOPInstanceUID
    assert clean.SOPInstanceUID == uid_remap(uid=sop, key=KEY)
    assert clean.SOPClassUID == CTImageStorage
    other_key = uid_remap(uid=uids["study"], key=b"another key")
    assert other_key != clean.StudyInstanceUID
    for uid in (clean.StudyInstanceUID, clean.SeriesInstanceUID, other_key):
        # PS3.5 9.1: digits and dots, no leading zero in a component, at most 64 characters.
        assert len(uid) <= 64 and all(p == "0" or p[0] != "0" for p in uid.split("."))


def test_dates_and_patient_characteristics_are_kept_and_birth_date_emptied():
    ds = ct_dataset(hu=chest_phantom(size=8), study_uid=generate_uid(), series_uid=generate_uid())
    ds.PatientWeight = 71
    clean, _ = roundtrip(dataset_deidentify(ds=ds, patient_label=LABEL, uid_key=KEY))
    assert (clean.StudyDate, clean.SeriesDate, clean.StudyTime) == (
        "20240115",
        "20240115",
        "101500",
    )
    assert (clean.PatientSex, clean.PatientAge, clean.PatientWeight) == ("F", "065Y", 71)
    assert clean.PatientBirthDate == ""
    assert clean.ConvolutionKernel == "B70f"  # technical attributes are not in the table


def test_deidentified_copy_is_marked_and_names_its_method_and_options():
    ds = ct_dataset(hu=chest_phantom(size=8), study_uid=generate_uid(), series_uid=generate_uid())
    clean, _ = roundtrip(dataset_deidentify(ds=ds, patient_label=LABEL, uid_key=KEY))
    assert clean.PatientIdentityRemoved == "YES"
    assert "PS3.15" in clean.DeidentificationMethod
    assert len(clean.DeidentificationMethod) <= 64  # VR LO
    codes = {item.CodeValue for item in clean.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113106", "113108"}  # no 113110 "Retain UIDs"
    assert clean.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert "SourceApplicationEntityTitle" not in clean.file_meta


def test_pixel_data_is_unchanged_also_when_compressed():
    ds = ct_dataset(hu=chest_phantom(size=16), study_uid=generate_uid(), series_uid=generate_uid())
    hu_before = ds.pixel_array.copy()
    ds.compress(RLELossless, generate_instance_uid=False)
    clean, _ = roundtrip(dataset_deidentify(ds=ds, patient_label=LABEL, uid_key=KEY))
    assert clean.file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(clean.pixel_array, hu_before)


# ---------------------------------------------------------------- what ingestion stores


@pytest.fixture
def stuffed_folder(tmp_path):
    """Three slices of one series, every one stuffed; returns (folder, uids, originals)."""
    uids, originals = new_uids(), set()
    folder = tmp_path / "stuffed"
    folder.mkdir()
    for k in range(len(uids["sops"])):
        ds = stuffed_dataset(index=k, uids=uids, originals=originals)
        (folder / f"{k}.dcm").write_bytes(dataset_bytes(ds))
    return folder, uids, originals


def stored_dicom_files() -> dict[str, bytes]:
    """Every stored DICOM copy, found through the Series rows and the storage listing."""
    files = {}
    for series in Series.objects.all():
        _, names = default_storage.listdir(series.dicom_dir)
        for name in names:
            with default_storage.open(f"{series.dicom_dir}/{name}", "rb") as fh:
                files[f"{series.dicom_dir}/{name}"] = fh.read()
    return files


@pytest.mark.django_db
def test_every_stored_dataset_passes_the_profile_walk(stuffed_folder):
    folder, uids, originals = stuffed_folder
    [study] = study_import_paths(paths=[folder], uploader=UserFactory()).studies
    files = stored_dicom_files()
    assert len(files) == 3 and all(name.endswith(".dcm") for name in files)
    label = study.patient.display_id
    for name, data in files.items():
        assert file_violations(data, originals=originals, label=label) == [], name
    # References inside the study still point at its (remapped) instances.
    stored = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in files.values()}
    for data in files.values():
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in stored
        assert ds.StudyInstanceUID == study.study_instance_uid


@pytest.mark.django_db
def test_reimport_maps_to_the_same_uids_and_creates_nothing(stuffed_folder):
    folder, uids, _ = stuffed_folder
    user = UserFactory()
    first = study_import_paths(paths=[folder], uploader=user)
    files = stored_dicom_files()
    again = study_import_paths(paths=[folder], uploader=user)
    assert again.created == [False] and again.new_series == [0]
    assert again.studies[0].pk == first.studies[0].pk
    assert stored_dicom_files() == files
    series = Series.objects.get()
    assert first.studies[0].study_instance_uid == uid_pseudonym(uid=uids["study"])
    assert series.series_instance_uid == uid_pseudonym(uid=uids["series"])
    assert set(series.slices.values_list("sop_instance_uid", flat=True)) == {
        uid_pseudonym(uid=u) for u in uids["sops"]
    }


@pytest.mark.django_db
def test_database_holds_no_source_uid_free_text_or_birth_year(stuffed_folder):
    folder, _, originals = stuffed_folder
    [study] = study_import_paths(paths=[folder], uploader=UserFactory()).studies
    series = study.series.get()
    assert series.description == "B70f 2.5 mm"  # generated from kernel and thickness
    assert study.description == "CT B70f 2.5 mm"
    assert "birth_year" not in {f.name for f in Patient._meta.get_fields()}
    dump = serializers.serialize(
        "json", [o for m in apps.get_app_config("cases").get_models() for o in m.objects.all()]
    ).lower()
    assert study.study_instance_uid.lower() in dump  # the dump does hold the stored rows
    for secret in (*SECRETS, "1958", "19580312"):
        assert secret not in dump, secret
    assert [u for u in originals if u.lower() in dump] == []


@pytest.mark.django_db
def test_patient_pseudonym_is_an_hmac_under_the_secret_key(settings):
    settings.ILDREVIEW_PSEUDONYM_KEY = "k" * 40
    expected = hmac.new(
        b"k" * 40, b"ildreview-patient\x00" + PATIENT_ID.encode(), hashlib.sha256
    ).hexdigest()
    assert patient_pseudonym(patient_id=PATIENT_ID) == expected
    assert expected != hashlib.sha256(PATIENT_ID.encode()).hexdigest()
    settings.ILDREVIEW_PSEUDONYM_KEY = "m" * 40
    assert patient_pseudonym(patient_id=PATIENT_ID) != expected
    assert uid_pseudonym(uid="1.2.3") == uid_remap(uid="1.2.3", key=b"m" * 40)
