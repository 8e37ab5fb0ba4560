"""Real CT DICOM files for tests, written with pydicom on the app's writer (no Django).

A synthetic chest phantom (air, body at soft-tissue HU, two lungs near -850 HU, vessels, a
vertebra) in as many slices, sizes, positions, orientations, rescale parameters and transfer
syntaxes as a test needs. Compressed files use pydicom's encoders (RLE Lossless; JPEG 2000
Lossless through pylibjpeg-openjpeg). `undecodable_write` writes encapsulated pixel data under
a transfer syntax no installed decoder handles.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from cases.dicom_writer import AXIAL, ct_image_dataset

PATIENT_ID = "HOSP-0042"
PATIENT_NAME = "Doe^Jane"


def chest_phantom(*, size: int = 64, seed: int = 0) -> np.ndarray:
    """One int16 HU slice: air -1000, body 40, lungs -850, a few vessels 40, vertebra 700."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    hu = np.full((size, size), -1000.0)
    body = ((xx - 0.5) / 0.45) ** 2 + ((yy - 0.5) / 0.36) ** 2 <= 1.0
    hu[body] = 40.0
    lungs = np.zeros_like(body)
    for cx in (0.3, 0.7):
        lungs |= ((xx - cx) / 0.14) ** 2 + ((yy - 0.48) / 0.24) ** 2 <= 1.0
    hu[lungs] = -850.0
    for _ in range(4):
        cx, cy = rng.uniform(0.22, 0.78), rng.uniform(0.35, 0.6)
        hu[lungs & (((xx - cx) ** 2 + (yy - cy) ** 2) <= 0.0006)] = 40.0
    hu[((xx - 0.5) ** 2 + (yy - 0.78) ** 2) <= 0.003] = 700.0
    hu += rng.normal(0.0, 10.0, size=hu.shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


@dataclass
class GeneratedSeries:
    """What was written: files (in writing order), UIDs, and the HU volume in the order the
    slices lie along the normal (ascending), which is what ingestion must reproduce."""

    paths: list[Path]
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    hu: np.ndarray
    z: list[float]


def ct_dataset(
    *,
    hu: np.ndarray,
    study_uid: str,
    series_uid: str,
    sop_uid: str | None = None,
    position: tuple[float, float, float] = (0.0, 0.0, 0.0),
    orientation: tuple[float, ...] = AXIAL,
    spacing: tuple[float, float] = (0.7, 0.7),
    thickness: float = 2.5,
    instance_number: int = 1,
    series_number: int = 1,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = -1024.0,
    patient_id: str = PATIENT_ID,
    patient_name: str = PATIENT_NAME,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A CT Image Storage dataset (with file meta) holding `hu` as unsigned stored values, built
    on the app's writer (`cases.dicom_writer.ct_image_dataset`) with the identifying attributes
    a scanner would add (which de-identification must remove or replace)."""
    stored = np.rint((hu.astype(np.float64) - intercept) / slope)
    ds = ct_image_dataset(
        stored=np.clip(stored, 0, 65535).astype(np.uint16),
        sop_uid=sop_uid or generate_uid(),
        study_uid=study_uid,
        series_uid=series_uid,
        series_number=series_number,
        instance_number=instance_number,
        position=position,
        orientation=orientation,
        spacing=spacing,
        thickness=thickness,
        intercept=intercept,
        slope=slope,
        sop_class_uid=CTImageStorage if modality == "CT" else MRImageStorage,
        modality=modality,
    )
    ds.file_meta.SourceApplicationEntityTitle = "SCANNER_AE"
    ds.StudyDate = "20240115"
    ds.SeriesDate = "20240115"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-998877"
    ds.Manufacturer = "ildreview-tests"
    ds.InstitutionName = "Saint Example Hospital"
    ds.InstitutionAddress = "1 Example Street, Exampletown"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.OperatorsName = "Tech^Tina"
    ds.StationName = "CT-ROOM-3"
    ds.StudyDescription = "CT chest"
    ds.SeriesDescription = f"Lung {thickness} B70f"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19580312"
    ds.PatientSex = "F"
    ds.PatientAge = "065Y"
    ds.OtherPatientIDs = "OTHER-123"
    ds.PatientAddress = "2 Patient Road"
    ds.DeviceSerialNumber = "SN-555"
    ds.ConvolutionKernel = "B70f"
    ds.KVP = 120
    ds.StudyID = "S1"
    # Identifying text inside a nested item, and a private block: both must go.
    req = Dataset()
    req.RequestedProcedureID = "RP-1"
    req.ScheduledProcedureStepID = "SPS-1"
    ds.RequestAttributesSequence = [req]
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = generate_uid()
    ref.PersonName = "Nested^Name"
    ds.ReferencedImageSequence = [ref]
    block = ds.private_block(0x0011, "ACME SCANNER", create=True)
    block.add_new(0x01, "LO", f"private {patient_id}")
    if transfer_syntax != ExplicitVRLittleEndian:
        if transfer_syntax == ImplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            ds.compress(transfer_syntax, generate_instance_uid=False)
    return ds


def dataset_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ct_series_write(
    *,
    folder: Path,
    slices: int = 4,
    size: int = 32,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    z0: float = -100.0,
    step: float = 2.5,
    orientation: tuple[float, ...] = AXIAL,
    suffix: str = ".dcm",
    shuffle: bool = True,
    seed: int = 0,
    **dataset_kwargs,
) -> GeneratedSeries:
    """Write one series into `folder` (created) and describe it.

    Positions are `z0 + k*step` along the slice normal. Files are written in a shuffled order
    with InstanceNumbers reversed, so that only sorting by position gets the order right.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    ori = np.array(orientation, dtype=np.float64)
    normal = np.cross(ori[:3], ori[3:])
    volume = np.stack([chest_phantom(size=size, seed=seed * 1000 + k) for k in range(slices)])
    sop_uids = [generate_uid() for _ in range(slices)]
    order = list(range(slices))
    if shuffle:
        np.random.default_rng(seed).shuffle(order)
    paths = []
    for n, k in enumerate(order):
        position = tuple(float(v) for v in normal * (z0 + k * step) + np.array([-50, -60, 0]))
        ds = ct_dataset(
            hu=volume[k],
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uids[k],
            position=position,
            orientation=orientation,
            instance_number=slices - k,
            series_number=series_number,
            **dataset_kwargs,
        )
        path = folder / f"{series_number:02d}-{n:04d}{suffix}"
        path.write_bytes(dataset_bytes(ds))
        paths.append(path)
    return GeneratedSeries(
        paths=paths,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uids=sop_uids,
        hu=volume,
        z=[z0 + k * step for k in range(slices)],
    )


def undecodable_write(*, path: Path, transfer_syntax: str = "1.2.826.0.1.3680043.10.999.1") -> Path:
    """A CT file whose pixel data is encapsulated under a transfer syntax no installed decoder
    handles (by default a private UID; MPEG-2 works too)."""
    ds = ct_dataset(hu=chest_phantom(size=16), study_uid=generate_uid(), series_uid=generate_uid())
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buf = io.BytesIO()
    # The dataset itself is explicit VR little endian, as every encapsulated syntax requires.
    ds.save_as(buf, implicit_vr=False, little_endian=True)
    path.write_bytes(buf.getvalue())
    return path


def zip_write(*, path: Path, members: dict[str, bytes]) -> Path:
    """A deflated zip archive of `members` (name -> content)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return path


# ------------------------------------------------------------------ hostile files


def rle_bomb_bytes(*, size: int = 8192) -> bytes:
    """A CT file whose one RLE Lossless frame decodes to size x size x 16 bits of zeros:
    two segments of 128-byte replicate runs, about size²/64 bytes on disk (2 MiB at 8192)."""
    segment = b"\x81\x00" * (size * size // 128)
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    ds = ct_dataset(hu=chest_phantom(size=16), study_uid=generate_uid(), series_uid=generate_uid())
    ds.Rows = ds.Columns = size
    ds.PixelData = encapsulate([header + segment + segment])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return dataset_bytes(ds)


def deflated_file_parts(ds: Dataset) -> tuple[bytes, bytes]:
    """(preamble + file meta for Deflated Explicit VR Little Endian, the dataset encoded as
    Explicit VR Little Endian before deflating) of `ds`."""
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    meta = DicomBytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + meta.getvalue(), body.getvalue()


def deflate_bomb_bytes(*, inflated: int, ds: Dataset | None = None) -> bytes:
    """A Deflated Explicit VR Little Endian CT file whose dataset inflates to about `inflated`
    bytes (a native PixelData of zeros; about inflated/1000 bytes on disk), built in a stream
    without ever holding it inflated."""
    if ds is None:
        ds = ct_dataset(
            hu=chest_phantom(size=16), study_uid=generate_uid(), series_uid=generate_uid()
        )
    del ds.PixelData
    prefix, body = deflated_file_parts(ds)
    out = io.BytesIO()
    out.write(prefix)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, inflated)
    out.write(deflater.compress(body + pixel_header))
    zeros = bytes(1024 * 1024)
    for _ in range(inflated // len(zeros)):
        out.write(deflater.compress(zeros))
    out.write(deflater.flush())
    return out.getvalue()
