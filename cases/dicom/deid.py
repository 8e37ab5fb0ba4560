"""De-identification of stored DICOM copies after DICOM PS3.15 Annex E (Django-free).

Basic Application Confidentiality Profile with these options, recorded in the dataset's
De-identification Method Code Sequence:
- Retain UIDs (113110): Study/Series/SOP Instance UIDs are kept; the application links
  studies through them and through the pseudonymous patient id, and re-imports must match.
- Retain Longitudinal Temporal Information, Full Dates (113106): study/series/acquisition/
  content dates and times are kept because follow-up comparison needs them; dates that
  describe the patient (birth date and time) are removed.
- Retain Patient Characteristics (113108): sex, age, size and weight are kept (they matter
  for reading lung CT and identify no one on their own).
Study and series descriptions, protocol-free technical attributes (kernel, thickness, kVp...)
are kept. Names, ids, addresses, institutions, physicians, operators, free-text comments,
device serial numbers, request/procedure attributes, overlays and all private tags are removed
or emptied, at every nesting level.
"""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

# LO: at most 64 characters; the code sequence below spells the options out.
METHOD = "ildreview PS3.15 basic profile; UIDs, dates, pt. chars. kept"

# (code value, code meaning) of the profile and its options (PS3.16 CID 7050).
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
    ("113110", "Retain UIDs Option"),
)

# Attributes that Type 2 rules require to stay present: emptied ("Z" in PS3.15 Table E.1-1).
EMPTY = (
    "PatientBirthDate",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "ContentCreatorName",
    "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest",
    "VerifyingObserverName",
    "PersonName",
)

# Attributes removed ("X", and "X/Z", "X/D" etc. where removal is allowed).
REMOVE = (
    # patient
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientTelecomInformation",
    "PatientMotherBirthName",
    "PatientInsurancePlanCodeSequence",
    "PatientPrimaryLanguageCodeSequence",
    "PatientReligiousPreference",
    "PatientComments",
    "PatientState",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "MedicalRecordLocator",
    "MilitaryRank",
    "BranchOfService",
    "CountryOfResidence",
    "RegionOfResidence",
    "EthnicGroup",
    "Occupation",
    "AdditionalPatientHistory",
    "MedicalAlerts",
    "Allergies",
    "SmokingStatus",
    "LastMenstrualDate",
    "PregnancyStatus",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientBirthDateInAlternativeCalendar",
    "PatientDeathDateInAlternativeCalendar",
    "ReferencedPatientSequence",
    "ReferencedPatientPhotoSequence",
    # institution, people, devices
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionCodeSequence",
    "InstitutionalDepartmentName",
    "InstitutionalDepartmentTypeCodeSequence",
    "StationName",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence",
    "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence",
    "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence",
    "OperatorsName",
    "OperatorIdentificationSequence",
    "RequestingPhysician",
    "RequestingService",
    "ScheduledPerformingPhysicianName",
    "ScheduledPerformingPhysicianIdentificationSequence",
    "HumanPerformerName",
    "HumanPerformerOrganization",
    "DeviceSerialNumber",
    "DetectorID",
    "GantryID",
    "PlateID",
    "CassetteID",
    "DeviceUID",
    # request, procedure and free text
    "RequestAttributesSequence",
    "ReferencedStudySequence",
    "ReferencedPerformedProcedureStepSequence",
    "PerformedProcedureStepID",
    "PerformedProcedureStepDescription",
    "PerformedLocation",
    "PerformedStationName",
    "PerformedStationAETitle",
    "RequestedProcedureDescription",
    "RequestedProcedureID",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID",
    "ScheduledStationName",
    "ScheduledStationAETitle",
    "ProtocolName",
    "AdmissionID",
    "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence",
    "ReasonForStudy",
    "ReasonForTheRequestedProcedure",
    "RequestedContrastAgent",
    "ImageComments",
    "FrameComments",
    "AcquisitionComments",
    "StudyComments",
    "InterpretationText",
    "TextComments",
    "TextString",
    "DerivationDescription",
    "AcquisitionDeviceProcessingDescription",
    "IconImageSequence",
    "ModifiedAttributesSequence",
    "OriginalAttributesSequence",
    "DigitalSignaturesSequence",
    "StorageMediaFileSetID",
    "StorageMediaFileSetUID",
)

_EMPTY_TAGS = frozenset(tag_for_keyword(k) for k in EMPTY)
_REMOVE_TAGS = frozenset(tag_for_keyword(k) for k in REMOVE)


def _clean(ds: Dataset) -> None:
    """Apply the removals at this level and inside every sequence item."""
    for elem in list(ds):
        tag = elem.tag
        group = tag.group
        # Overlays (60xx) and curves (50xx) can hold burned-in text; the profile removes them.
        if tag in _REMOVE_TAGS or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            del ds[tag]
        elif tag in _EMPTY_TAGS:
            elem.value = None if elem.VR != "SQ" else Sequence()
        elif elem.VR == "SQ":
            for item in elem.value:
                _clean(item)


def dataset_deidentify(*, ds: Dataset, patient_label: str) -> Dataset:
    """De-identify `ds` in place and return it.

    PatientName and PatientID become `patient_label` (the pseudonymous display id); UIDs are
    kept. The file meta loses the sending application's AE title.
    """
    ds.remove_private_tags()  # walks every nesting level itself
    _clean(ds)
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
        for keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle"):
            if keyword in meta:
                delattr(meta, keyword)
    return ds
