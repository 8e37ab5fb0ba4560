"""Bad DICOM input, one table: every kind is refused by the real upload endpoint with a 4xx that
names the file and the reason, and leaves no row and no media file behind.

Each kind starts from a valid generated CT slice and changes one thing. It is uploaded together
with a valid slice of the same series, so a refusal also proves the good file was not
half-saved. Values pydicom itself would refuse to write (text in an IS, a wrong VR) are written
as raw elements, exactly as a broken or hostile tool would write them.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import (
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)
from rest_framework.test import APIClient

from cases.models import Patient, Series, Slice, Study
from tests.dicomgen import (
    chest_phantom,
    ct_dataset,
    dataset_bytes,
    deflate_bomb_bytes,
    deflated_file_parts,
    rle_bomb_bytes,
    zip_write,
)
from tests.factories import SeriesFactory, StudyFactory

pytestmark = pytest.mark.django_db

SIZE = 16
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1.1"


# ------------------------------------------------------------------ building blocks


def slice_ds(*, z: float = 0.0, size: int = SIZE, **kwargs) -> Dataset:
    """A valid CT slice of the test series at position z."""
    kwargs.setdefault("study_uid", STUDY_UID)
    kwargs.setdefault("series_uid", SERIES_UID)
    return ct_dataset(hu=chest_phantom(size=size, seed=int(z)), position=(0.0, 0.0, z), **kwargs)


def raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> Dataset:
    """Set `keyword` to raw bytes under `vr`, bypassing pydicom's validation."""
    tag = Tag(tag_for_keyword(keyword))
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    return ds


def with_attrs(**attrs) -> Callable[[], bytes]:
    def build() -> bytes:
        ds = slice_ds(z=10.0)
        ds["PixelData"].VR = "OW"  # so that writing does not need BitsAllocated
        for keyword, value in attrs.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        return dataset_bytes(ds)

    return build


def with_raw(keyword: str, value: bytes, vr: str | None = None) -> Callable[[], bytes]:
    from pydicom.datadict import dictionary_VR

    def build() -> bytes:
        ds = slice_ds(z=10.0)
        ds["PixelData"].VR = "OW"  # so that writing does not need BitsAllocated
        raw(ds, keyword, vr or dictionary_VR(tag_for_keyword(keyword)), value)
        return dataset_bytes(ds)

    return build


def with_uid(keyword: str, value: str) -> Callable[[], bytes]:
    return with_raw(keyword, value.encode(), "UI")


def _mutated(fn: Callable[[Dataset], object]) -> Callable[[], bytes]:
    def build() -> bytes:
        ds = slice_ds(z=10.0)
        fn(ds)
        return dataset_bytes(ds)

    return build


def _truncated(fraction: float) -> Callable[[], bytes]:
    def build() -> bytes:
        data = dataset_bytes(slice_ds(z=10.0))
        return data[: int(len(data) * fraction)]

    return build


def _signed_as_unsigned() -> bytes:
    # Stored values are the HU themselves (signed, intercept 0) but PixelRepresentation says
    # unsigned: air (-1000) is read as 64536.
    ds = slice_ds(z=10.0, intercept=0.0)
    hu = chest_phantom(size=SIZE, seed=10)
    ds.PixelData = hu.astype(np.int16).tobytes()
    ds.PixelRepresentation = 0
    return dataset_bytes(ds)


def _rle_bomb() -> bytes:
    return rle_bomb_bytes(size=8192)


def _deflate_bomb() -> bytes:
    return deflate_bomb_bytes(inflated=8 * 1024 * 1024, ds=slice_ds(z=10.0))


def _deflate_corrupt() -> bytes:
    # 0xFF starts a deflate block of the reserved type 3: invalid from the first byte.
    return deflated_file_parts(slice_ds(z=10.0))[0] + b"\xff" * 512


def _j2k(mutate: Callable[[Dataset], object]) -> Callable[[], bytes]:
    def build() -> bytes:
        ds = slice_ds(z=10.0, size=32, transfer_syntax=JPEG2000Lossless)
        mutate(ds)
        return dataset_bytes(ds)

    return build


def _j2k_huge_codestream(ds: Dataset) -> None:
    from pydicom.encaps import generate_frames

    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    siz = frame.find(b"\xff\x4f\xff\x51")
    patched = bytearray(frame)
    patched[siz + 8 : siz + 16] = struct.pack(">II", 60000, 60000)
    ds.PixelData = encapsulate([bytes(patched)])


def _rle_corrupt(ds: Dataset) -> None:
    header = struct.pack("<16I", 2, 64, 70, *([0] * 13))
    ds.PixelData = encapsulate([header + b"\x05\x01"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless


def _private_syntax() -> bytes:
    ds = slice_ds(z=10.0)
    ds.PixelData = encapsulate([b"\0" * 64])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.10.999.1"
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def _colour(ds: Dataset) -> None:
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = bytes(SIZE * SIZE * 3)


def _float_pixels(ds: Dataset) -> None:
    del ds.PixelData
    ds.BitsAllocated = 32
    ds.FloatPixelData = np.zeros((SIZE, SIZE), np.float32).tobytes()


def _description_sequence(ds: Dataset) -> None:
    del ds.StudyDescription
    ds.add_new(0x00081030, "SQ", [Dataset()])


# ------------------------------------------------------------------ multi-file kinds


def _pair(first: bytes, second: bytes) -> list[tuple[str, bytes]]:
    return [("first.dcm", first), ("bad.dcm", second)]


def _same_position() -> list[tuple[str, bytes]]:
    return _pair(dataset_bytes(slice_ds(z=0.0)), dataset_bytes(slice_ds(z=0.0)))


def _other_matrix() -> list[tuple[str, bytes]]:
    return _pair(dataset_bytes(slice_ds(z=0.0)), dataset_bytes(slice_ds(z=10.0, size=24)))


def _other_spacing() -> list[tuple[str, bytes]]:
    return _pair(
        dataset_bytes(slice_ds(z=0.0)), dataset_bytes(slice_ds(z=10.0, spacing=(0.9, 0.9)))
    )


def _other_patient() -> list[tuple[str, bytes]]:
    return _pair(
        dataset_bytes(slice_ds(z=0.0)), dataset_bytes(slice_ds(z=10.0, patient_id="OTHER"))
    )


def _same_sop_other_pixels() -> list[tuple[str, bytes]]:
    sop = generate_uid()
    return _pair(
        dataset_bytes(slice_ds(z=0.0, sop_uid=sop)), dataset_bytes(slice_ds(z=10.0, sop_uid=sop))
    )


def _zip(members: dict[str, bytes], name: str = "bad.zip") -> Callable[[], list]:
    def build() -> list[tuple[str, bytes]]:
        buf = io.BytesIO()
        zip_write(path=buf, members=members)  # type: ignore[arg-type]
        return [("first.dcm", dataset_bytes(slice_ds(z=0.0))), (name, buf.getvalue())]

    return build


def _nested_zip() -> list[tuple[str, bytes]]:
    inner = io.BytesIO()
    zip_write(path=inner, members={"a.dcm": dataset_bytes(slice_ds(z=10.0))})  # type: ignore[arg-type]
    return _zip({"inner.zip": inner.getvalue()})()


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Kind:
    build: Callable[[], bytes | list[tuple[str, bytes]]]
    reason: str  # must appear in the response
    settings: tuple[tuple[str, int], ...] = ()
    before: Callable[[object], None] | None = None  # prepares the database (quota kinds)


def _long_uid(n: int) -> str:
    return ("1.2." + "1" * n)[:n]


def _stored_quota(user) -> None:
    study = StudyFactory(uploaded_by=user)
    SeriesFactory(study=study, rows=512, columns=512, slice_count=100)


KINDS: dict[str, Kind] = {
    # UIDs (PS3.5 §9.1)
    "study_uid_65_chars": Kind(with_uid("StudyInstanceUID", _long_uid(65)), "maximum of 64"),
    "study_uid_200_chars": Kind(with_uid("StudyInstanceUID", _long_uid(200)), "maximum of 64"),
    "study_uid_letters": Kind(with_uid("StudyInstanceUID", "1.2.abc"), "other than digits"),
    "study_uid_leading_zero": Kind(with_uid("StudyInstanceUID", "1.2.03"), "leading zero"),
    "study_uid_empty_component": Kind(with_uid("StudyInstanceUID", "1..2"), "empty component"),
    "study_uid_trailing_dot": Kind(with_uid("StudyInstanceUID", "1.2."), "empty component"),
    "study_uid_path_traversal": Kind(
        with_uid("StudyInstanceUID", f"{STUDY_UID}/."), "other than digits"
    ),
    "study_uid_script": Kind(with_uid("StudyInstanceUID", "<script>1</script>"), "StudyInstance"),
    "study_uid_two_values": Kind(with_uid("StudyInstanceUID", "1.2\\1.3"), "2 values"),
    "study_uid_missing": Kind(with_attrs(StudyInstanceUID=None), "StudyInstanceUID"),
    "series_uid_too_long": Kind(with_uid("SeriesInstanceUID", _long_uid(70)), "maximum of 64"),
    "series_uid_leading_zero": Kind(with_uid("SeriesInstanceUID", "1.02.3"), "leading zero"),
    "series_uid_space": Kind(with_uid("SeriesInstanceUID", "1.2 .3"), "other than digits"),
    "series_uid_missing": Kind(with_attrs(SeriesInstanceUID=None), "SeriesInstanceUID"),
    "sop_uid_letters": Kind(with_uid("SOPInstanceUID", "1.2.x"), "other than digits"),
    "sop_uid_too_long": Kind(with_uid("SOPInstanceUID", _long_uid(100)), "maximum of 64"),
    "sop_uid_leading_dot": Kind(with_uid("SOPInstanceUID", ".1.2"), "empty component"),
    "sop_uid_fullwidth_digit": Kind(with_uid("SOPInstanceUID", "1.2.３"), "other than digits"),
    "sop_uid_missing": Kind(with_attrs(SOPInstanceUID=None), "SOPInstanceUID"),
    # text values bounded to their VR
    "study_description_over_lo": Kind(with_attrs(StudyDescription="x" * 65), "LO maximum"),
    "series_description_200": Kind(with_attrs(SeriesDescription="y" * 200), "LO maximum"),
    "kernel_over_sh": Kind(with_attrs(ConvolutionKernel="K" * 17), "SH maximum"),
    "patient_id_over_lo": Kind(with_attrs(PatientID="P" * 65), "LO maximum"),
    "patient_sex_over_cs": Kind(with_raw("PatientSex", b"F" * 17), "CS maximum"),
    "modality_over_cs": Kind(with_raw("Modality", b"CT" * 9), "CS maximum"),
    "study_date_over_da": Kind(with_raw("StudyDate", b"2024011500"), "DA maximum"),
    "description_nul": Kind(with_raw("SeriesDescription", b"Lung\0x"), "control characters"),
    "description_newline": Kind(with_raw("StudyDescription", b"a\nb"), "control characters"),
    "description_is_sequence": Kind(_mutated(_description_sequence), "not a text value"),
    # numbers that do not parse
    "number_of_frames_text": Kind(with_raw("NumberOfFrames", b"two"), "NumberOfFrames"),
    "slice_thickness_text": Kind(with_raw("SliceThickness", b"thick"), "SliceThickness"),
    "series_number_text": Kind(with_raw("SeriesNumber", b"one"), "SeriesNumber"),
    "instance_number_text": Kind(with_raw("InstanceNumber", b"abc"), "InstanceNumber"),
    "instance_number_fraction": Kind(with_raw("InstanceNumber", b"1.5"), "not an integer"),
    "instance_number_two_values": Kind(with_raw("InstanceNumber", b"1\\2"), "2 values"),
    "samples_per_pixel_text": Kind(with_raw("SamplesPerPixel", b"one", "LO"), "SamplesPerPixel"),
    "rows_text": Kind(with_raw("Rows", b"sixteen", "LO"), "invalid Rows"),
    "columns_text": Kind(with_raw("Columns", b"16px", "LO"), "invalid Columns"),
    "bits_allocated_text": Kind(with_raw("BitsAllocated", b"sixteen", "LO"), "BitsAllocated"),
    "pixel_representation_text": Kind(
        with_raw("PixelRepresentation", b"signed", "LO"), "PixelRepresentation"
    ),
    "rescale_slope_text": Kind(with_raw("RescaleSlope", b"steep"), "RescaleSlope"),
    "rescale_intercept_text": Kind(with_raw("RescaleIntercept", b"low"), "RescaleIntercept"),
    "pixel_spacing_text": Kind(with_raw("PixelSpacing", b"a\\b"), "PixelSpacing"),
    "position_text": Kind(with_raw("ImagePositionPatient", b"x\\y\\z"), "ImagePositionPatient"),
    "orientation_text": Kind(
        with_raw("ImageOrientationPatient", b"1\\0\\0\\0\\1\\zero"), "ImageOrientationPatient"
    ),
    "slice_thickness_two_values": Kind(with_raw("SliceThickness", b"1\\2"), "2 values"),
    # numbers out of range
    "instance_number_over_int32": Kind(with_raw("InstanceNumber", b"99999999999"), "32-bit"),
    "instance_number_under_int32": Kind(with_raw("InstanceNumber", b"-9999999999"), "32-bit"),
    "series_number_over_int32": Kind(with_raw("SeriesNumber", b"2147483648"), "32-bit"),
    "slope_nan": Kind(with_raw("RescaleSlope", b"NaN"), "not a finite number"),
    "slope_inf": Kind(with_raw("RescaleSlope", b"inf"), "not a finite number"),
    "slope_zero": Kind(with_raw("RescaleSlope", b"0"), "RescaleSlope"),
    "slope_negative": Kind(with_raw("RescaleSlope", b"-1"), "RescaleSlope"),
    "slope_1e300": Kind(with_raw("RescaleSlope", b"1e300"), "RescaleSlope"),
    "slope_tiny": Kind(with_raw("RescaleSlope", b"1e-9"), "RescaleSlope"),
    "intercept_nan": Kind(with_raw("RescaleIntercept", b"NaN"), "not a finite number"),
    "intercept_huge": Kind(with_raw("RescaleIntercept", b"1e9"), "RescaleIntercept"),
    "spacing_zero": Kind(with_attrs(PixelSpacing=[0, 0.7]), "PixelSpacing"),
    "spacing_negative": Kind(with_attrs(PixelSpacing=[-0.7, 0.7]), "PixelSpacing"),
    "spacing_1e308": Kind(with_raw("PixelSpacing", b"1e308\\1e308"), "PixelSpacing"),
    "spacing_over_10mm": Kind(with_attrs(PixelSpacing=[11, 11]), "PixelSpacing"),
    "spacing_one_value": Kind(with_raw("PixelSpacing", b"0.7"), "expected 2 numbers"),
    "spacing_nan": Kind(with_raw("PixelSpacing", b"NaN\\0.7"), "PixelSpacing"),
    "thickness_zero": Kind(with_attrs(SliceThickness=0), "SliceThickness"),
    "thickness_negative": Kind(with_attrs(SliceThickness=-2.5), "SliceThickness"),
    "thickness_absurd": Kind(with_attrs(SliceThickness=1000), "SliceThickness"),
    "thickness_nan": Kind(with_raw("SliceThickness", b"NaN"), "SliceThickness"),
    "position_huge": Kind(with_raw("ImagePositionPatient", b"0\\0\\1e300"), "ImagePosition"),
    "position_inf": Kind(with_raw("ImagePositionPatient", b"0\\0\\inf"), "ImagePosition"),
    "position_two_values": Kind(with_raw("ImagePositionPatient", b"0\\0"), "3 numbers"),
    "orientation_degenerate": Kind(
        with_attrs(ImageOrientationPatient=[1, 0, 0, 1, 0, 0]), "degenerate"
    ),
    "orientation_not_unit": Kind(
        with_attrs(ImageOrientationPatient=[2, 0, 0, 0, 2, 0]), "unit direction"
    ),
    "orientation_five_values": Kind(
        with_raw("ImageOrientationPatient", b"1\\0\\0\\0\\1"), "6 numbers"
    ),
    # pixel module
    "frames_zero": Kind(with_attrs(NumberOfFrames=0), "NumberOfFrames"),
    "multi_frame": Kind(with_attrs(NumberOfFrames=2), "multi-frame"),
    "rows_zero": Kind(with_attrs(Rows=0), "invalid Rows"),
    "rows_missing": Kind(with_attrs(Rows=None), "Rows"),
    "rows_mismatch_pixel_data": Kind(with_attrs(Rows=20), "cannot decode pixel data"),
    "pixel_data_short": Kind(
        _mutated(lambda ds: setattr(ds, "PixelData", ds.PixelData[:100])), "cannot decode"
    ),
    "high_bit_contradicts": Kind(with_attrs(HighBit=11), "HighBit"),
    "bits_stored_over_allocated": Kind(with_attrs(BitsStored=17), "BitsStored"),
    "bits_allocated_8": Kind(with_attrs(BitsAllocated=8), "BitsAllocated 8"),
    "bits_allocated_32": Kind(with_attrs(BitsAllocated=32), "BitsAllocated 32"),
    "bits_allocated_missing": Kind(with_attrs(BitsAllocated=None), "BitsAllocated"),
    "pixel_representation_2": Kind(with_attrs(PixelRepresentation=2), "PixelRepresentation"),
    "pixel_representation_missing": Kind(
        with_attrs(PixelRepresentation=None), "PixelRepresentation"
    ),
    "signed_data_read_unsigned": Kind(_signed_as_unsigned, "16-bit range"),
    "hu_median_too_high": Kind(with_attrs(RescaleIntercept=5000), "implausible CT values"),
    "hu_median_too_low": Kind(with_attrs(RescaleIntercept=-20000), "implausible CT values"),
    "colour_rgb": Kind(_mutated(_colour), "not a greyscale image"),
    "photometric_rgb_one_sample": Kind(
        with_attrs(PhotometricInterpretation="RGB"), "not a greyscale image"
    ),
    "photometric_palette": Kind(
        with_attrs(PhotometricInterpretation="PALETTE COLOR"), "not a greyscale image"
    ),
    "photometric_missing": Kind(with_attrs(PhotometricInterpretation=None), "missing"),
    "float_pixel_data": Kind(_mutated(_float_pixels), "float pixel data"),
    # not a CT image at all
    "modality_mr": Kind(with_attrs(Modality="MR"), "modality MR is not CT"),
    "modality_missing": Kind(with_attrs(Modality=None), "modality missing"),
    "no_pixel_data": Kind(with_attrs(PixelData=None), "no pixel data"),
    "plain_text": Kind(lambda: b"just some notes\n" * 20, "not a DICOM file"),
    "empty_file": Kind(lambda: b"", "not a DICOM file"),
    "random_after_preamble": Kind(
        lambda: b"\0" * 128 + b"DICM" + np.random.default_rng(7).bytes(400), "DICOM file"
    ),
    "truncated_header": Kind(_truncated(0.05), "DICOM"),
    "truncated_pixel_data": Kind(_truncated(0.9), "truncated or corrupt"),
    "position_missing": Kind(with_attrs(ImagePositionPatient=None), "ImagePositionPatient"),
    "spacing_missing": Kind(with_attrs(PixelSpacing=None), "PixelSpacing"),
    "orientation_missing": Kind(with_attrs(ImageOrientationPatient=None), "ImageOrientation"),
    # compressed data and bombs
    "rle_bomb_8192": Kind(_rle_bomb, "over the limit of 8388608 bytes"),
    "huge_dims_native": Kind(with_attrs(Rows=8192, Columns=8192), "over the limit"),
    "deflate_bomb": Kind(
        _deflate_bomb,
        "inflates beyond the limit",
        settings=(("ILDREVIEW_MAX_DICOM_FILE_BYTES", 2 * 1024 * 1024),),
    ),
    "deflate_corrupt": Kind(_deflate_corrupt, "corrupt deflated"),
    "j2k_codestream_dims_differ": Kind(
        _j2k(lambda ds: setattr(ds, "Rows", 48) or setattr(ds, "Columns", 48)), "declares 32x32"
    ),
    "j2k_codestream_huge": Kind(_j2k(_j2k_huge_codestream), "declares 60000x60000"),
    "rle_corrupt": Kind(_mutated(_rle_corrupt), "cannot decode pixel data"),
    "private_transfer_syntax": Kind(_private_syntax, "no installed decoder"),
    "file_over_limit": Kind(
        with_attrs(), "over the limit", settings=(("ILDREVIEW_MAX_DICOM_FILE_BYTES", 1000),)
    ),
    "upload_decoded_over_limit": Kind(
        with_attrs(),
        "upload too large once decoded",
        settings=(("ILDREVIEW_MAX_UPLOAD_DECODED_BYTES", SIZE * SIZE * 2 + 1),),
    ),
    "user_quota_exceeded": Kind(
        with_attrs(),
        "storage quota exceeded",
        settings=(("ILDREVIEW_USER_QUOTA_DECODED_BYTES", 512 * 512 * 100 * 2 + 600),),
        before=_stored_quota,
    ),
    "upload_over_byte_limit": Kind(
        with_attrs(), "over the limit", settings=(("ILDREVIEW_MAX_UPLOAD_BYTES", 3000),)
    ),
    # series and study consistency
    "same_position_twice": Kind(_same_position, "same slice position"),
    "other_matrix_size": Kind(_other_matrix, "inconsistent geometry"),
    "other_pixel_spacing": Kind(_other_spacing, "inconsistent geometry"),
    "study_mixes_patients": Kind(_other_patient, "mixes patients"),
    "same_sop_other_pixels": Kind(_same_sop_other_pixels, "also used by"),
    # archives
    "zip_traversal": Kind(_zip({"a/../../evil.dcm": b"x"}), "'..'"),
    "zip_absolute": Kind(_zip({"/etc/evil.dcm": b"x"}), "absolute path"),
    "zip_nested": Kind(_nested_zip, "nested zip"),
    "zip_bomb": Kind(
        _zip({"zeros.dcm": bytes(3 * 1024 * 1024)}),
        "zip bomb",
        settings=(("ILDREVIEW_MAX_ZIP_EXPANDED_BYTES", 1024 * 1024),),
    ),
    "zip_member_not_dicom": Kind(_zip({"notes.dcm": b"hello" * 50}), "not a DICOM file"),
}


def media_files() -> list[str]:
    return [
        os.path.join(root, name)
        for root, _dirs, names in os.walk(settings.MEDIA_ROOT)
        for name in names
    ]


def assert_nothing_left(user) -> None:
    assert Study.objects.exclude(uploaded_by=user).count() == 0
    assert Study.objects.filter(series__slices__isnull=False).count() == 0
    assert Slice.objects.count() == 0
    assert Patient.objects.exclude(studies__uploaded_by=user).count() == 0
    assert media_files() == []


def upload_files(kind: Kind) -> list[SimpleUploadedFile]:
    built = kind.build()
    if isinstance(built, bytes):
        built = [("good.dcm", dataset_bytes(slice_ds(z=0.0))), ("bad.dcm", built)]
    return [SimpleUploadedFile(name, data) for name, data in built]


def test_the_table_holds_at_least_75_distinct_kinds():
    assert len(KINDS) >= 75
    assert len({k.build for k in KINDS.values()}) == len(KINDS)


@pytest.mark.parametrize("kind", KINDS, ids=list(KINDS))
def test_bad_input_is_refused_by_the_api_naming_the_reason_and_leaving_nothing(
    clinician, settings, kind
):
    spec = KINDS[kind]
    for name, value in spec.settings:
        setattr(settings, name, value)
    if spec.before:
        spec.before(clinician)
    rows_before = (Study.objects.count(), Series.objects.count(), Patient.objects.count())
    api = APIClient()
    api.force_authenticate(clinician)

    response = api.post(reverse("api-study-list"), {"files": upload_files(spec)})

    assert response.status_code == 400, response.content[:300]
    detail = response.json()["detail"]
    assert spec.reason in detail
    assert (Study.objects.count(), Series.objects.count(), Patient.objects.count()) == rows_before
    assert Slice.objects.count() == 0
    assert media_files() == []


PAGE_SAMPLE = [
    "study_uid_path_traversal",
    "instance_number_text",
    "slope_nan",
    "spacing_1e308",
    "signed_data_read_unsigned",
    "rle_bomb_8192",
    "colour_rgb",
    "zip_traversal",
]


@pytest.mark.parametrize("kind", PAGE_SAMPLE)
def test_bad_input_is_refused_by_the_upload_page_with_the_reason(client, clinician, kind):
    client.force_login(clinician)

    response = client.post(reverse("cases:upload"), {"files": upload_files(KINDS[kind])})

    assert response.status_code == 400
    assert "Upload refused." in response.content.decode()
    assert KINDS[kind].reason in response.context["error"]
    assert (Study.objects.count(), Series.objects.count(), Slice.objects.count()) == (0, 0, 0)
    assert Patient.objects.count() == 0
    assert media_files() == []


# ------------------------------------------------------------------ non-UTF-8 file names


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"b0undary") -> bytes:
    body = b""
    for filename, content in parts:
        body += (
            b"--" + boundary + b"\r\n"
            b'Content-Disposition: form-data; name="files"; filename="' + filename + b'"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
        )
    return body + b"--" + boundary + b"--\r\n"


def raw_upload(client, url: str, parts: list[tuple[bytes, bytes]]):
    return client.generic(
        "POST",
        url,
        multipart(parts),
        content_type="multipart/form-data; boundary=b0undary",
    )


def test_files_with_latin1_names_are_imported_under_a_sanitised_name(clinician):
    api = APIClient()
    api.force_authenticate(clinician)
    parts = [
        ("caf\xe9-1.dcm".encode("latin-1"), dataset_bytes(slice_ds(z=0.0))),
        (b"\xff\xfe\x80.dcm", dataset_bytes(slice_ds(z=10.0))),
    ]

    response = raw_upload(api, reverse("api-study-list"), parts)

    assert response.status_code == 201, response.content[:300]
    assert Slice.objects.count() == 2


def test_a_bad_file_with_a_non_utf8_name_is_refused_by_its_sanitised_name(clinician):
    api = APIClient()
    api.force_authenticate(clinician)
    parts = [("caf\xe9.dcm".encode("latin-1"), b"not an image at all" * 10)]

    response = raw_upload(api, reverse("api-study-list"), parts)

    assert response.status_code == 400
    assert response.json()["detail"] == "caf_.dcm: not a DICOM file"


@pytest.mark.parametrize("filename", [b"..", b"."])
def test_files_whose_names_django_drops_are_refused_by_name_not_as_no_files(
    client, clinician, filename
):
    api = APIClient()
    api.force_authenticate(clinician)
    parts = [(filename, dataset_bytes(slice_ds(z=0.0)))]

    response = raw_upload(api, reverse("api-study-list"), parts)

    assert response.status_code == 400
    assert "could not be read because their names" in response.json()["detail"]
    assert repr(filename.decode()) in response.json()["detail"]
    client.force_login(clinician)
    page = raw_upload(client, reverse("cases:upload"), parts)
    assert page.status_code == 400
    assert "could not be read because their names" in page.context["error"]


def test_binary_content_is_not_touched_by_the_file_name_sanitising(clinician):
    # Bytes that are invalid UTF-8 inside the file content stay as they are.
    api = APIClient()
    api.force_authenticate(clinician)
    ds = slice_ds(z=0.0)
    ds.StudyDescription = "caf\xe9"  # Latin-1 (ISO_IR 100) bytes inside the file
    response = raw_upload(api, reverse("api-study-list"), [(b"a\xe9.dcm", dataset_bytes(ds))])

    assert response.status_code == 201, response.content[:300]
    assert np.array_equal(
        np.load(Slice.objects.get().pixels.open("rb")),
        chest_phantom(size=SIZE, seed=0),
    )


class _Trickle:
    """A request body that arrives a few bytes at a time, splitting headers and boundaries."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step = data, step

    def read(self, size: int = -1) -> bytes:
        chunk, self.data = self.data[: self.step], self.data[self.step :]
        return chunk


@pytest.mark.parametrize("step", [1, 3, 7, 64, 100_000])
def test_sanitising_survives_headers_split_across_reads_and_leaves_content_alone(step):
    from cases.middleware import _PartHeaderSanitisingStream

    content = b"\xff\xfe binary \xe9 --b0undary not a delimiter \r\n\xc3"
    body = multipart([(b"caf\xe9.dcm", content), (b"\xff\xff.dcm", content)])
    stream = _PartHeaderSanitisingStream(_Trickle(body, step), b"b0undary")

    out = b""
    while piece := stream.read(5):
        out += piece

    assert out == body.replace(b"caf\xe9.dcm", b"caf_.dcm").replace(b"\xff\xff.dcm", b"__.dcm")
    assert stream.file_names == ["caf_.dcm", "__.dcm"]
