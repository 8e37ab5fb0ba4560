"""Read CT DICOM instances, convert them to Hounsfield units, group and order them.

Django-free: paths in, dataclasses with numpy arrays out. Every refusal raises
`DicomInputError(filename, reason)`.

Ordering: slices are sorted by ImagePositionPatient projected on the slice normal (the cross
product of the two ImageOrientationPatient direction cosines), which is correct for any
orientation and does not trust InstanceNumber.

Nothing is trusted before it is checked, and nothing is decoded before its size is known:

- UIDs used as keys (Study, Series and SOP Instance UID) must follow PS3.5 §9.1: components
  of digits separated by dots, no empty component, no leading zero in a multi-digit component,
  at most 64 characters.
- Every text value that reaches the database must fit its VR's maximum length (LO 64, SH 16,
  CS 16, DA 8; PS3.5 table 6.2-1) and hold no control characters: a longer value is refused,
  not truncated, because the file breaks the standard and a cut value could merge two values.
  (Only a multi-valued ConvolutionKernel, each value within SH, is joined and cut to 64.)
- Numbers (IS/DS/US) that fail to parse or lie outside their physical range are refused by
  name: InstanceNumber/SeriesNumber outside the 32-bit range of IS, RescaleSlope not in
  [1e-3, 1e3], |RescaleIntercept| over 32768, PixelSpacing not in (0, 10] mm, SliceThickness
  not in (0, 50] mm.
- Resource limits (`ReadLimits`, from settings in the service layer): the file size, the
  inflated size of a Deflated Explicit VR Little Endian file (inflated in a bounded stream
  before pydicom inflates it whole), Rows x Columns x NumberOfFrames x BitsAllocated from the
  header, the dimensions inside a compressed frame, and the decoded bytes left to an upload or
  a user (`DecodeBudget`) are all checked before the pixel data is decoded.
- Plausibility of the decoded values: after rescaling, every pixel must lie within the int16
  range (a stored value misread because PixelRepresentation or the rescale contradicts the
  data lands far outside it: signed air, -1000, read as unsigned is 64536), and the median
  pixel must lie in [-1500, 3071] HU (a CT cross-section is mostly air, fat and soft tissue;
  a median beyond the standard CT scale means the values are misread).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import struct
import warnings
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pydicom
from pydicom import pixels
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_file_meta_info, read_preamble
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence

from cases.dicom import DicomInputError

# Files that commonly travel with DICOM exports but are not images: skipped, not refused.
IGNORED_NAMES = {"dicomdir", "thumbs.db", "desktop.ini", "readme", "readme.txt", "license"}
IGNORED_DIRS = {"__macosx"}

# Tolerances for geometry checks (mm, and unitless for direction cosines).
ORIENTATION_TOLERANCE = 1e-3
SPACING_TOLERANCE = 1e-3
POSITION_TOLERANCE = 1e-3

MIB = 1024 * 1024
# PS3.5 §9.1: a UID is components of digits separated by dots, no leading zero in a component
# of more than one digit, at most 64 characters.
UID_MAX_LENGTH = 64
_UID_COMPONENT = re.compile(r"(?:0|[1-9][0-9]*)\Z")
# Maximum value lengths (characters) of the VRs of the text attributes that are stored.
VR_MAX_LENGTH = {"AE": 16, "CS": 16, "DA": 8, "LO": 64, "SH": 16}
# Control characters are not allowed in these VRs (PS3.5 6.1.2.3), except ESC for
# ISO 2022 character set switching.
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")
INT32 = (-(2**31), 2**31 - 1)
# Physical ranges: values outside them are refused rather than stored.
PIXEL_SPACING_MAX_MM = 10.0
SLICE_THICKNESS_MAX_MM = 50.0
POSITION_MAX_MM = 1e5
RESCALE_SLOPE_RANGE = (1e-3, 1e3)
RESCALE_INTERCEPT_MAX = 32768.0
# Plausibility of decoded CT values (see the module docstring).
HU_MEDIAN_RANGE = (-1500.0, 3071.0)
INFLATE_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ReadLimits:
    """Limits checked before any pixel data is decoded (the service layer fills them from
    settings). `max_file_bytes` bounds one file on disk and also a deflated file once
    inflated; `max_image_bytes` bounds Rows x Columns x NumberOfFrames x BitsAllocated / 8."""

    max_file_bytes: int = 32 * MIB
    max_image_bytes: int = 8 * MIB


DEFAULT_LIMITS = ReadLimits()


class DecodeBudget:
    """Decoded bytes (int16 Hounsfield units) still allowed, e.g. for one upload or for one
    user's quota; `what` says which limit in the refusal."""

    def __init__(self, *, limit: int, what: str, used: int = 0) -> None:
        self.limit = limit
        self.what = what
        self.used = used

    def spend(self, *, nbytes: int, name: str) -> None:
        if self.used + nbytes > self.limit:
            raise DicomInputError(
                name,
                f"{self.what}: {self.used + nbytes} bytes of decoded images, over the limit "
                f"of {self.limit} bytes",
            )
        self.used += nbytes


REQUIRED_ATTRIBUTES = (
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
)


@dataclass
class CtInstance:
    """One decoded CT image. `dataset` still holds the raw (possibly compressed) PixelData so
    a de-identified copy can be written without re-encoding; `hu` is the decoded image."""

    name: str
    dataset: Dataset
    study_uid: str
    series_uid: str
    sop_uid: str
    rows: int
    columns: int
    orientation: np.ndarray
    position: np.ndarray
    pixel_spacing: tuple[float, float]
    instance_number: int | None
    hu: np.ndarray
    # Validated header values used by grouping (see `_instance_attributes`).
    series_number: int | None = None
    slice_thickness: float | None = None
    series_description: str = ""
    convolution_kernel: str = ""
    study_description: str = ""
    patient_id: str = ""
    patient_sex: str = ""

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])


@dataclass
class CtSeries:
    """The instances of one SeriesInstanceUID, ordered along the slice normal."""

    series_uid: str
    series_number: int | None
    description: str
    convolution_kernel: str
    slice_thickness: float | None
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    instances: list[CtInstance]
    # Position of each instance along the slice normal (mm), same order as `instances`.
    z_positions: list[float]


@dataclass
class CtStudy:
    """The series of one StudyInstanceUID plus the patient attributes needed before
    de-identification (the raw PatientID only ever leaves this object hashed)."""

    study_uid: str
    study_date: dt.date | None
    description: str
    patient_id: str
    patient_sex: str
    patient_birth_year: int | None
    series: list[CtSeries] = field(default_factory=list)

    @property
    def slice_count(self) -> int:
        return sum(len(s.instances) for s in self.series)


def ignored_file(name: str) -> bool:
    """Whether a file travelling with DICOM exports (hidden files, DICOMDIR, macOS resource
    forks, read-me files) should be skipped rather than refused as non-DICOM."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts:
        return True
    base = parts[-1]
    return (
        base.startswith(".")
        or base.lower() in IGNORED_NAMES
        or any(p.lower() in IGNORED_DIRS for p in parts[:-1])
    )


def _hu_unclipped(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """stored * RescaleSlope + RescaleIntercept, rounded, not yet clipped (int32 or float64).
    Computed in place to keep the peak memory at one float64 copy of the image."""
    if slope == 1.0 and float(intercept).is_integer():
        # Exact integer path: the common case, and twice as fast as going through floats.
        hu = stored.astype(np.int32)
        hu += int(intercept)
        return hu
    hu = stored.astype(np.float64)
    hu *= slope
    hu += intercept
    return np.rint(hu, out=hu)


def hu_from_stored(*, stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Hounsfield units (int16) = stored * RescaleSlope + RescaleIntercept, rounded and
    clipped to int16 (CT values beyond that range carry no meaning for lung review)."""
    hu = _hu_unclipped(stored, slope, intercept)
    return np.clip(hu, -32768, 32767).astype(np.int16)


def _hu_plausibility_check(hu: np.ndarray, name: str) -> None:
    """Refuse decoded values that cannot be CT Hounsfield units (rule in the module docstring)."""
    low, high = float(hu.min()), float(hu.max())
    if low < -32768 or high > 32767:
        raise DicomInputError(
            name,
            f"implausible CT values: Hounsfield units {low:.0f}..{high:.0f} exceed the 16-bit "
            "range (PixelRepresentation or RescaleSlope/RescaleIntercept contradict the pixel "
            "values)",
        )
    median = float(np.median(hu))
    lo, hi = HU_MEDIAN_RANGE
    if not lo <= median <= hi:
        raise DicomInputError(
            name,
            f"implausible CT values: median {median:.0f} HU is outside {lo:.0f}..{hi:.0f} HU "
            "(PixelRepresentation or RescaleSlope/RescaleIntercept contradict the pixel values)",
        )


def _shown(value) -> str:
    """A bad value as it appears in a refusal: short, printable."""
    text = repr(value) if isinstance(value, str | bytes) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _raw_value(ds: Dataset, keyword: str, name: str):
    """The value of `keyword` (None when absent); a value pydicom cannot convert is refused."""
    try:
        if keyword not in ds:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds[keyword].value
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for malformed values
        raise DicomInputError(name, f"invalid {keyword}: value cannot be parsed ({exc})") from exc


def _number(
    ds: Dataset,
    keyword: str,
    name: str,
    *,
    integer: bool,
    lo: float,
    hi: float,
    rule: str,
    required: bool = False,
    lo_open: bool = False,
):
    """A single finite number in [lo, hi] (or (lo, hi] with `lo_open`); None when absent or
    empty (refused when `required`)."""
    value = _raw_value(ds, keyword, name)
    if isinstance(value, MultiValue | list | tuple):
        if len(value) != 1:
            raise DicomInputError(name, f"invalid {keyword}: {len(value)} values, expected one")
        value = value[0]
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DicomInputError(name, f"missing required attribute(s): {keyword}")
        return None
    if isinstance(value, bytes | bytearray):
        raise DicomInputError(name, f"invalid {keyword}: binary value {_shown(bytes(value))}")
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DicomInputError(name, f"invalid {keyword}: {_shown(value)} is not a number") from exc
    if not math.isfinite(number):
        raise DicomInputError(name, f"invalid {keyword}: {_shown(value)} is not a finite number")
    if integer and not number.is_integer():
        raise DicomInputError(name, f"invalid {keyword}: {_shown(value)} is not an integer")
    if number < lo or number > hi or (lo_open and number == lo):
        raise DicomInputError(name, f"invalid {keyword}: {_shown(value)} ({rule})")
    return int(number) if integer else number


def _text(ds: Dataset, keyword: str, vr: str, name: str) -> str:
    """A text value bounded to its VR's maximum length, without control characters ("" when
    absent). Several values are each checked and joined with a backslash, as DICOM writes
    them."""
    value = _raw_value(ds, keyword, name)
    if value is None:
        return ""
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    limit = VR_MAX_LENGTH[vr]
    texts = []
    for v in values:
        if isinstance(v, bytes | bytearray | Dataset | Sequence):
            raise DicomInputError(name, f"invalid {keyword}: not a text value")
        text = "" if v is None else str(v).strip()
        if len(text) > limit:
            raise DicomInputError(
                name,
                f"invalid {keyword}: {len(text)} characters, over the {vr} maximum of {limit}",
            )
        if _CONTROL.search(text):
            raise DicomInputError(name, f"invalid {keyword}: contains control characters")
        texts.append(text)
    return "\\".join(texts)


def uid_problem(value: str) -> str | None:
    """Why `value` is not a valid DICOM UID (PS3.5 §9.1), or None when it is."""
    if not value:
        return "empty"
    if len(value) > UID_MAX_LENGTH:
        return f"{len(value)} characters, over the maximum of {UID_MAX_LENGTH}"
    if any(c not in "0123456789." for c in value):
        return "characters other than digits and dots"
    for component in value.split("."):
        if not component:
            return "empty component"
        if not _UID_COMPONENT.match(component):
            return "component with a leading zero"
    return None


def _uid(ds: Dataset, keyword: str, name: str) -> str:
    value = _raw_value(ds, keyword, name)
    if isinstance(value, MultiValue | list | tuple):
        raise DicomInputError(name, f"invalid {keyword}: {len(value)} values, expected one")
    if isinstance(value, bytes | bytearray):
        raise DicomInputError(name, f"invalid {keyword}: binary value")
    text = "" if value is None else str(value)
    # UI values are padded with a trailing NUL to an even length (PS3.5 6.2).
    text = text.rstrip("\x00")
    problem = uid_problem(text)
    if problem == "empty":
        raise DicomInputError(name, f"missing required attribute(s): {keyword}")
    if problem:
        raise DicomInputError(name, f"invalid {keyword} {_shown(text)}: {problem} (PS3.5 §9.1)")
    return text


def _deflated_size_check(path: Path, name: str, limit: int) -> None:
    """pydicom inflates a Deflated Explicit VR Little Endian dataset whole, in memory; inflate
    it first in a bounded stream, counting bytes and discarding them, and refuse it when it
    grows over `limit`."""
    try:
        meta = read_file_meta_info(path)
    except Exception:  # noqa: BLE001 - no readable file meta: not deflated; dcmread decides
        return
    if str(meta.get("TransferSyntaxUID", "") or "") != pydicom.uid.DeflatedExplicitVRLittleEndian:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    produced = 0
    try:
        with open(path, "rb") as fh:
            read_preamble(fh, False)
            _read_file_meta_info(fh)
            while chunk := fh.read(INFLATE_CHUNK):
                data = chunk
                while data:
                    produced += len(inflater.decompress(data, INFLATE_CHUNK))
                    if produced > limit:
                        raise DicomInputError(
                            name,
                            f"deflated DICOM inflates beyond the limit of {limit} bytes "
                            "(decompression bomb?)",
                        )
                    data = inflater.unconsumed_tail
    except (zlib.error, OSError, EOFError, ValueError, struct.error) as exc:
        raise DicomInputError(name, f"truncated or corrupt deflated DICOM file ({exc})") from exc


def _dcmread(path: Path, name: str, limits: ReadLimits = DEFAULT_LIMITS) -> Dataset:
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise DicomInputError(name, f"cannot read file ({exc})") from exc
    if size > limits.max_file_bytes:
        raise DicomInputError(
            name,
            f"file of {size} bytes is over the limit of {limits.max_file_bytes} bytes for one "
            "DICOM image",
        )
    _deflated_size_check(path, name, limits.max_file_bytes)
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass
    except (EOFError, OSError, ValueError, struct.error, KeyError, TypeError, zlib.error) as exc:
        raise DicomInputError(name, f"truncated or corrupt DICOM file ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - malformed headers raise many other types
        raise DicomInputError(name, f"truncated or corrupt DICOM file ({exc!r})") from exc
    # No 128-byte preamble and "DICM" prefix: older exports write the bare dataset. Accept it
    # only if it parses and carries a SOP Instance UID; random bytes do not.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
            sop = str(ds.get("SOPInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 - any parse failure of a forced read means "not DICOM"
        sop = ""
    if not sop or not all(c.isdigit() or c == "." for c in sop):
        raise DicomInputError(name, "not a DICOM file")
    return ds


def _floats(ds: Dataset, keyword: str, count: int, name: str) -> np.ndarray:
    value = _raw_value(ds, keyword, name)
    if not isinstance(value, MultiValue | list | tuple):
        value = [value]  # one value where several are expected
    try:
        values = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DicomInputError(name, f"invalid {keyword} ({exc})") from exc
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise DicomInputError(name, f"invalid {keyword}: expected {count} numbers")
    return values


def _transfer_syntax(ds: Dataset) -> pydicom.uid.UID:
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None:
        # Bare dataset read with force=True: pydicom worked out the encoding while reading.
        tsyntax = (
            pydicom.uid.ImplicitVRLittleEndian
            if ds.original_encoding[0]
            else pydicom.uid.ExplicitVRLittleEndian
        )
        if meta is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = tsyntax
    return pydicom.uid.UID(str(tsyntax))


def _codestream_dimensions(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) declared inside a JPEG 2000 or JPEG / JPEG-LS codestream, None when
    the format is not recognised (the decoder then checks the frame itself)."""
    siz = frame.find(b"\xff\x4f\xff\x51", 0, 4096)
    if siz >= 0 and len(frame) >= siz + 24:
        # SIZ: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz (ITU-T T.800 A.5.1).
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", frame[siz + 8 : siz + 24])
        return ysiz - yo, xsiz - xo
    if not frame.startswith(b"\xff\xd8"):
        return None
    pos = 2
    sof = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7}
    while pos + 4 <= len(frame) and pos < 65536:
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        (length,) = struct.unpack(">H", frame[pos + 2 : pos + 4])
        if marker in sof and pos + 9 <= len(frame):
            rows, cols = struct.unpack(">HH", frame[pos + 5 : pos + 9])
            return rows, cols
        pos += 2 + length
    return None


def _compressed_frame_check(ds: Dataset, tsyntax, rows: int, columns: int, name: str) -> None:
    """A compressed frame that declares other dimensions than Rows x Columns would make the
    decoder allocate for its own, unchecked, size: refuse it before decoding."""
    if not tsyntax.is_encapsulated or tsyntax == pydicom.uid.RLELossless:
        return
    try:
        first = next(generate_fragments(ds.PixelData[8 + _bot_length(ds.PixelData) :]))
    except Exception:  # noqa: BLE001 - a malformed encapsulation is the decoder's to refuse
        return
    dims = _codestream_dimensions(first)
    if dims is not None and dims != (rows, columns):
        raise DicomInputError(
            name,
            f"compressed frame declares {dims[0]}x{dims[1]} pixels but Rows x Columns is "
            f"{rows}x{columns}",
        )


def _bot_length(data: bytes) -> int:
    # The Basic Offset Table item: tag (FFFE,E000) then a 4-byte length.
    if len(data) < 8 or data[:4] != b"\xfe\xff\x00\xe0":
        raise ValueError("no basic offset table")
    return struct.unpack("<I", data[4:8])[0]


def _decode(ds: Dataset, name: str, rows: int, columns: int) -> np.ndarray:
    tsyntax = _transfer_syntax(ds)
    label = f"{tsyntax.name} ({tsyntax})" if tsyntax.name != str(tsyntax) else str(tsyntax)
    try:
        available = get_decoder(tsyntax).is_available
    except (NotImplementedError, ValueError):
        available = False
    if not available:
        raise DicomInputError(
            name, f"cannot decode pixel data: transfer syntax {label} has no installed decoder"
        )
    _compressed_frame_check(ds, tsyntax, rows, columns, name)
    try:
        return pixels.pixel_array(ds)
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on corrupt data
        raise DicomInputError(
            name, f"cannot decode pixel data ({label}): truncated or corrupt ({exc})"
        ) from exc


def _pixel_module_check(ds: Dataset, name: str) -> tuple[int, int, int]:
    """Check the Image Pixel attributes of a single-frame greyscale CT image from the header;
    return (rows, columns, bits allocated)."""
    frames = _number(ds, "NumberOfFrames", name, integer=True, lo=1, hi=INT32[1], rule="≥ 1")
    if frames not in (None, 1):
        raise DicomInputError(name, "multi-frame images are not supported")
    samples = _number(ds, "SamplesPerPixel", name, integer=True, lo=1, hi=65535, rule="must be ≥ 1")
    if samples not in (None, 1):
        raise DicomInputError(name, f"not a greyscale image (SamplesPerPixel {samples} != 1)")
    photometric = _text(ds, "PhotometricInterpretation", "CS", name)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomInputError(
            name,
            f"not a greyscale image (PhotometricInterpretation {photometric or 'missing'})",
        )
    dims = {}
    for keyword in ("Rows", "Columns"):
        dims[keyword] = _number(
            ds,
            keyword,
            name,
            integer=True,
            lo=1,
            hi=65535,
            rule="must be 1..65535",
            required=True,
        )
    bits = _number(
        ds, "BitsAllocated", name, integer=True, lo=1, hi=64, rule="must be 1..64", required=True
    )
    if bits != 16:
        raise DicomInputError(
            name, f"BitsAllocated {bits} is not supported (CT images store 16-bit pixels)"
        )
    stored_bits = _number(
        ds,
        "BitsStored",
        name,
        integer=True,
        lo=1,
        hi=bits,
        rule=f"must be 1..{bits}",
        required=True,
    )
    high = _number(ds, "HighBit", name, integer=True, lo=0, hi=63, rule="must be 0..63")
    if high is not None and high != stored_bits - 1:
        raise DicomInputError(
            name,
            f"invalid HighBit: {high} contradicts BitsStored {stored_bits} (expected "
            f"{stored_bits - 1})",
        )
    _number(
        ds,
        "PixelRepresentation",
        name,
        integer=True,
        lo=0,
        hi=1,
        rule="must be 0 or 1",
        required=True,
    )
    return dims["Rows"], dims["Columns"], bits


def _instance_attributes(ds: Dataset, name: str) -> dict:
    """Header values stored in the database, validated (see the module docstring)."""
    thickness = _number(
        ds,
        "SliceThickness",
        name,
        integer=False,
        lo=0.0,
        hi=SLICE_THICKNESS_MAX_MM,
        lo_open=True,
        rule=f"must be > 0 and ≤ {SLICE_THICKNESS_MAX_MM:g} mm",
    )
    kernel = _text(ds, "ConvolutionKernel", "SH", name)
    sex = _text(ds, "PatientSex", "CS", name).upper()
    for keyword in ("StudyDate", "PatientBirthDate"):
        _text(ds, keyword, "DA", name)
    _text(ds, "Modality", "CS", name)
    return {
        "series_number": _number(
            ds,
            "SeriesNumber",
            name,
            integer=True,
            lo=INT32[0],
            hi=INT32[1],
            rule="outside the 32-bit range of IS",
        ),
        "slice_thickness": thickness,
        "series_description": _text(ds, "SeriesDescription", "LO", name),
        "convolution_kernel": kernel[:64],
        "study_description": _text(ds, "StudyDescription", "LO", name),
        "patient_id": _text(ds, "PatientID", "LO", name),
        "patient_sex": sex if sex in ("M", "F", "O") else "",
    }


def ct_instance_read(
    *,
    path: Path,
    name: str | None = None,
    limits: ReadLimits = DEFAULT_LIMITS,
    budgets: tuple[DecodeBudget, ...] = (),
) -> CtInstance:
    """Parse one file, check it is a single-frame greyscale CT image, decode it to HU.

    `name` is how the file is called in error messages (defaults to the path). `limits` and
    `budgets` are checked before the pixel data is decoded; each budget is charged the bytes
    of the decoded image.
    """
    name = name or str(path)
    ds = _dcmread(path, name, limits)
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        missing_uids = [k for k in ("SOPInstanceUID", "Modality") if k not in ds]
        if missing_uids:
            raise DicomInputError(
                name, f"truncated or incomplete DICOM file (no {', '.join(missing_uids)})"
            )
        raise DicomInputError(name, "no pixel data (not an image)")
    modality = _text(ds, "Modality", "CS", name)
    if modality != "CT":
        raise DicomInputError(name, f"modality {modality or 'missing'} is not CT")
    missing = [k for k in REQUIRED_ATTRIBUTES if _raw_value(ds, k, name) in (None, "")]
    if missing:
        raise DicomInputError(name, f"missing required attribute(s): {', '.join(missing)}")
    uids = {
        k: _uid(ds, k, name) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    }
    if "PixelData" not in ds:
        raise DicomInputError(name, "float pixel data is not supported (not a CT image)")
    rows, columns, bits = _pixel_module_check(ds, name)
    image_bytes = rows * columns * bits // 8
    if image_bytes > limits.max_image_bytes:
        raise DicomInputError(
            name,
            f"image of {rows}x{columns} pixels x {bits} bits decodes to {image_bytes} bytes, "
            f"over the limit of {limits.max_image_bytes} bytes",
        )
    slope = _number(
        ds,
        "RescaleSlope",
        name,
        integer=False,
        lo=RESCALE_SLOPE_RANGE[0],
        hi=RESCALE_SLOPE_RANGE[1],
        rule=f"must be {RESCALE_SLOPE_RANGE[0]:g}..{RESCALE_SLOPE_RANGE[1]:g}",
    )
    intercept = _number(
        ds,
        "RescaleIntercept",
        name,
        integer=False,
        lo=-RESCALE_INTERCEPT_MAX,
        hi=RESCALE_INTERCEPT_MAX,
        rule=f"|intercept| must be ≤ {RESCALE_INTERCEPT_MAX:g}",
    )
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    orientation = _floats(ds, "ImageOrientationPatient", 6, name)
    norms = np.linalg.norm(orientation.reshape(2, 3), axis=1)
    if np.any(np.abs(norms - 1.0) > 1e-2):
        raise DicomInputError(name, "invalid ImageOrientationPatient (not unit direction vectors)")
    if np.linalg.norm(np.cross(orientation[:3], orientation[3:])) < 0.5:
        raise DicomInputError(name, "invalid ImageOrientationPatient (degenerate directions)")
    spacing = _floats(ds, "PixelSpacing", 2, name)
    if np.any(spacing <= 0) or np.any(spacing > PIXEL_SPACING_MAX_MM):
        raise DicomInputError(
            name,
            f"invalid PixelSpacing {spacing.tolist()} (must be > 0 and ≤ "
            f"{PIXEL_SPACING_MAX_MM:g} mm)",
        )
    position = _floats(ds, "ImagePositionPatient", 3, name)
    if np.any(np.abs(position) > POSITION_MAX_MM):
        raise DicomInputError(
            name, f"invalid ImagePositionPatient (beyond {POSITION_MAX_MM:g} mm from the origin)"
        )
    number = _number(
        ds,
        "InstanceNumber",
        name,
        integer=True,
        lo=INT32[0],
        hi=INT32[1],
        rule="outside the 32-bit range of IS",
    )
    attributes = _instance_attributes(ds, name)

    for budget in budgets:
        budget.spend(nbytes=rows * columns * 2, name=name)
    stored = _decode(ds, name, rows, columns)
    if stored.shape != (rows, columns):
        raise DicomInputError(
            name, f"pixel data shape {stored.shape} does not match Rows x Columns"
        )
    hu = _hu_unclipped(stored, slope, intercept)
    del stored
    _hu_plausibility_check(hu, name)
    return CtInstance(
        name=name,
        dataset=ds,
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_uid=uids["SOPInstanceUID"],
        rows=rows,
        columns=columns,
        orientation=orientation,
        position=position,
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        instance_number=number,
        hu=hu.astype(np.int16),
        **attributes,
    )


def _geometry_check(instances: list[CtInstance]) -> None:
    """All slices of a series share Rows/Columns, orientation and pixel spacing."""
    first = instances[0]
    for inst in instances[1:]:
        if (inst.rows, inst.columns) != (first.rows, first.columns):
            raise DicomInputError(
                inst.name,
                f"inconsistent geometry in series {inst.series_uid}: {inst.rows}x{inst.columns}"
                f" pixels but {first.name} has {first.rows}x{first.columns}",
            )
        if np.max(np.abs(inst.orientation - first.orientation)) > ORIENTATION_TOLERANCE:
            raise DicomInputError(
                inst.name,
                f"inconsistent geometry in series {inst.series_uid}: ImageOrientationPatient "
                f"differs from {first.name}",
            )
        spacing_diff = np.abs(np.subtract(inst.pixel_spacing, first.pixel_spacing))
        if spacing_diff.max() > SPACING_TOLERANCE:
            raise DicomInputError(
                inst.name,
                f"inconsistent geometry in series {inst.series_uid}: PixelSpacing "
                f"{inst.pixel_spacing} differs from {first.pixel_spacing} in {first.name}",
            )


def _series_build(instances: list[CtInstance]) -> CtSeries:
    _geometry_check(instances)
    normal = instances[0].normal
    z = np.array([float(np.dot(inst.position, normal)) for inst in instances])
    order = np.argsort(z, kind="stable")
    ordered = [instances[i] for i in order]
    z_sorted = z[order]
    for k in range(1, len(ordered)):
        if z_sorted[k] - z_sorted[k - 1] < POSITION_TOLERANCE:
            raise DicomInputError(
                ordered[k].name,
                f"inconsistent geometry in series {ordered[k].series_uid}: same slice position "
                f"({z_sorted[k]:.3f} mm along the normal) as {ordered[k - 1].name}",
            )
    first = ordered[0]
    return CtSeries(
        series_uid=first.series_uid,
        series_number=first.series_number,
        description=first.series_description,
        convolution_kernel=first.convolution_kernel,
        slice_thickness=first.slice_thickness,
        pixel_spacing=ordered[0].pixel_spacing,
        rows=ordered[0].rows,
        columns=ordered[0].columns,
        instances=ordered,
        z_positions=[float(v) for v in z_sorted],
    )


def _date(value) -> dt.date | None:
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def _birth_year(value) -> int | None:
    text = str(value or "").strip()
    if len(text) >= 4 and text[:4].isdigit() and 1850 <= int(text[:4]) <= 2200:
        return int(text[:4])
    return None


def ct_studies_group(*, instances: list[CtInstance]) -> list[CtStudy]:
    """Group instances by StudyInstanceUID and SeriesInstanceUID, order each series along its
    normal and check its geometry. The same SOP Instance UID twice (the same file given twice)
    is kept once; a study whose files name different patients is refused."""
    seen: dict[str, CtInstance] = {}
    by_study: dict[str, dict[str, list[CtInstance]]] = defaultdict(lambda: defaultdict(list))
    for inst in instances:
        if inst.sop_uid in seen:
            other = seen[inst.sop_uid]
            if other.series_uid != inst.series_uid or not np.array_equal(other.hu, inst.hu):
                raise DicomInputError(
                    inst.name, f"SOPInstanceUID {inst.sop_uid} also used by {other.name}"
                )
            continue
        seen[inst.sop_uid] = inst
        by_study[inst.study_uid][inst.series_uid].append(inst)

    studies = []
    for study_uid, series_map in by_study.items():
        series = [_series_build(members) for members in series_map.values()]
        series.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))
        first = series[0].instances[0]
        patient_id = first.patient_id
        for s in series:
            for inst in s.instances:
                if inst.patient_id != patient_id:
                    raise DicomInputError(
                        inst.name,
                        f"study {study_uid} mixes patients: PatientID differs from {first.name}",
                    )
        ds = first.dataset
        studies.append(
            CtStudy(
                study_uid=study_uid,
                study_date=_date(ds.get("StudyDate")),
                description=first.study_description,
                patient_id=patient_id,
                patient_sex=first.patient_sex,
                patient_birth_year=_birth_year(ds.get("PatientBirthDate")),
                series=series,
            )
        )
    return studies
