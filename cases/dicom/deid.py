"""De-identification of stored DICOM copies to DICOM PS3.15 Annex E (Django-free).

Profile: the Basic Application Level Confidentiality Profile, applied to every attribute at
every nesting level (items of every sequence, including the file meta information).

Attribute list: PS3.15 Table E.1-1 as published in DICOM 2026c, taken from the
`dicom-anonymizer` package (`dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c`,
655 attributes generated from the standard's own table) rather than from a hand-written list.
Only that table is used; the actions are implemented here, because the package's own actions
do not fit an archive that must re-import idempotently: they replace UIDs with random ones
(a re-import would create new studies), fill "D" dates with 00010101 and know no options.
The other well-kept libraries do not carry the table: `dicognito` (0.19) replaces a fixed set
of names, ids, addresses, dates and UIDs with fake values and keeps descriptions and clinical
trial attributes; `deid` (0.4.13) ships a recipe of 67 removals plus a few additions.

Actions (PS3.15 E.1.1): X remove; Z empty; D replace by a dummy value of the VR; U replace the
UID; X/Z, X/D, X/Z/D remove (no attribute they name is required by the CT Image IOD); Z/D
empty; X/Z/U* (Referenced/Source Image Sequence) keep the items and apply all rules inside
them, so their UIDs are remapped like the rest. "D" on a sequence or a binary value removes it:
those attributes (content trees, annotations, encapsulated documents, signatures) belong to
other IODs and a CT image needs none of them. PatientName and PatientID, wherever they occur,
become the pseudonymous label. All private attributes, curves (50xx) and overlays (60xx) are
removed. Stricter than the table: the Issuer of Accession Number Sequence and the Storage
Media File-set ID (not listed) are removed too, and the file meta keeps only what PS3.10
requires, written by pydicom.

UIDs (no "Retain UIDs" option): every UID that is not a registered DICOM UID (SOP classes,
transfer syntaxes, coding schemes stay) is replaced by `2.25.<first 128 bits of
HMAC-SHA256(key, UID)>`: the same input always maps to the same UID, so references inside a
study stay consistent and re-importing the same files finds the same rows, while without the
key nobody can tell which original UID an output belongs to.

Options, recorded in the De-identification Method Code Sequence (PS3.16 CID 7050):
- Retain Longitudinal Temporal Information, Full Dates (113106): the study, series,
  acquisition and content dates and times are kept, because follow-up comparison of a
  patient's studies needs their real intervals; every other date (birth date included) is
  handled by the basic action.
- Retain Patient Characteristics (113108): sex, age, size and weight are kept, because reading
  a lung CT depends on them and they identify no one on their own.
"""

from __future__ import annotations

import hashlib
import hmac

from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as _table
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

PROFILE_EDITION = "DICOM PS3.15 2026c, Table E.1-1"

# Action code (as printed in Table E.1-1) of each of the table's lists.
_ACTION_LISTS = {
    "D": _table.D_TAGS,
    "Z": _table.Z_TAGS,
    "X": _table.X_TAGS,
    "U": _table.U_TAGS,
    "Z/D": _table.Z_D_TAGS,
    "X/Z": _table.X_Z_TAGS,
    "X/D": _table.X_D_TAGS,
    "X/Z/D": _table.X_Z_D_TAGS,
    "X/Z/U*": _table.X_Z_U_STAR_TAGS,
}

# Not in Table E.1-1, removed all the same: the issuer of an emptied accession number names
# the hospital, and a file-set id is a free-text label.
EXTRA_REMOVED = ("IssuerOfAccessionNumberSequence", "StorageMediaFileSetID")

PROFILE: dict[int, str] = {}
# Repeating-group rows, e.g. (60xx,3000) Overlay Data: (group, element, group mask,
# element mask, action).
PROFILE_MASKED: list[tuple[int, int, int, int, str]] = []
for _action, _tags in _ACTION_LISTS.items():
    for _entry in _tags:
        if len(_entry) == 2:
            PROFILE[Tag(_entry[0], _entry[1])] = _action
        else:
            PROFILE_MASKED.append((*_entry, _action))
for _keyword in EXTRA_REMOVED:
    PROFILE.setdefault(Tag(tag_for_keyword(_keyword)), "X")

# Kept by the options above (at every nesting level).
RETAINED_DATES = (
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "ContentDate",
    "ContentTime",
)
RETAINED_PATIENT_CHARACTERISTICS = ("PatientSex", "PatientAge", "PatientSize", "PatientWeight")
RETAINED = frozenset(tag_for_keyword(k) for k in RETAINED_DATES + RETAINED_PATIENT_CHARACTERISTICS)

# Replaced by the pseudonymous label wherever they occur.
LABELLED = frozenset(tag_for_keyword(k) for k in ("PatientName", "PatientID"))

# LO: at most 64 characters; the code sequence below spells the options out.
METHOD = "PS3.15 E.1 Basic Profile; full dates, patient chars. retained"

# (code value, code meaning) of the profile and its options (PS3.16 CID 7050).
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
)

# "D": a dummy value of the VR (the attribute's content is gone, its presence kept).
DUMMY = {
    "AE": "DEIDENTIFIED",
    "CS": "DEIDENTIFIED",
    "SH": "DEIDENTIFIED",
    "LO": "DEIDENTIFIED",
    "PN": "DEIDENTIFIED",
    "LT": "DEIDENTIFIED",
    "ST": "DEIDENTIFIED",
    "UT": "DEIDENTIFIED",
    "UC": "DEIDENTIFIED",
    "AS": "000D",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "DS": "0",
    "IS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "FL": 0.0,
    "FD": 0.0,
}

# File meta attributes kept (PS3.10 7.1); source/sending/receiving AE titles, presentation
# addresses and private information go, the implementation becomes pydicom's (it writes).
_META_KEPT = frozenset(
    tag_for_keyword(k)
    for k in (
        "FileMetaInformationGroupLength",
        "FileMetaInformationVersion",
        "MediaStorageSOPClassUID",
        "MediaStorageSOPInstanceUID",
        "TransferSyntaxUID",
    )
)


def profile_action(tag: BaseTag | int) -> str | None:
    """The Basic Profile action code for `tag` ("X", "Z", "D", "U", "X/Z/U*", ...), or None
    for an attribute the table does not list."""
    tag = Tag(tag)
    action = PROFILE.get(tag)
    if action is not None:
        return action
    for group, element, group_mask, element_mask, masked in PROFILE_MASKED:
        if tag.group & group_mask == group and tag.element & element_mask == element:
            return masked
    return None


def uid_is_registered(uid: str) -> bool:
    """Whether `uid` is a UID of the DICOM standard (a SOP class, transfer syntax, coding
    scheme, well-known frame of reference...): those identify nothing and must stay."""
    return UID(uid).name != str(uid)


def uid_remap(*, uid: str, key: bytes) -> str:
    """The replacement of `uid`: `2.25.<integer>` (PS3.5 B.2) from the first 128 bits of
    HMAC-SHA256(key, uid). Deterministic, so references and re-imports stay consistent."""
    digest = hmac.new(key, b"ildreview-uid\x00" + uid.encode(), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _uid_value(value, key: bytes):
    def one(uid) -> str:
        uid = str(uid).strip("\x00 ")
        return uid if not uid or uid_is_registered(uid) else uid_remap(uid=uid, key=key)

    if isinstance(value, (list, MultiValue)):
        return [one(v) for v in value]
    return one(value) if value is not None else value


def _clean(ds: Dataset, *, label: str, key: bytes) -> None:
    """Apply the profile to this level and, recursively, to every sequence item."""
    for elem in list(ds):
        tag = elem.tag
        if tag.is_private or 0x5000 <= tag.group <= 0x50FF or 0x6000 <= tag.group <= 0x60FF:
            del ds[tag]
            continue
        if tag in LABELLED:
            elem.value = label
            continue
        if tag in RETAINED:
            continue
        action = profile_action(tag)
        if action is None or action in ("U", "X/Z/U*"):
            # Unlisted attributes are safe by the profile; their UIDs and items still need
            # the rules (e.g. PatientName inside an unlisted sequence).
            if elem.VR == "UI":
                elem.value = _uid_value(elem.value, key)
            elif elem.VR == "SQ":
                for item in elem.value:
                    _clean(item, label=label, key=key)
        elif action.startswith("X"):
            del ds[tag]
        elif action in ("Z", "Z/D"):
            elem.value = Sequence() if elem.VR == "SQ" else None
        elif elem.VR == "UI":  # "D" on a UID
            elem.value = _uid_value(elem.value, key)
        elif elem.VR in DUMMY:  # "D"
            elem.value = DUMMY[elem.VR]
        else:  # "D" on a sequence or binary value: see the module docstring
            del ds[tag]


def _meta_clean(meta: FileMetaDataset, key: bytes) -> None:
    for elem in list(meta):
        if elem.tag not in _META_KEPT:
            del meta[elem.tag]
    if "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = _uid_value(meta.MediaStorageSOPInstanceUID, key)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID


def dataset_deidentify(*, ds: Dataset, patient_label: str, uid_key: bytes) -> Dataset:
    """De-identify `ds` in place (Basic Profile with the options above) and return it.

    PatientName and PatientID become `patient_label` (the pseudonymous display id); every
    non-registered UID becomes its `uid_remap` under `uid_key`. Pixel data is not touched.
    """
    ds.remove_private_tags()  # walks every nesting level itself
    _clean(ds, label=patient_label, key=uid_key)
    ds.PatientName = patient_label
    ds.PatientID = patient_label
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    codes = Sequence()
    for value, meaning in METHOD_CODES:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes
    ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _meta_clean(meta, uid_key)
    return ds
