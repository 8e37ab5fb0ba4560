"""Safe expansion of uploaded zip archives (Django-free; limits come in as arguments).

Refused, naming the archive (or member) and the reason: absolute member paths, `..` in a
member path, symbolic links, encrypted members, more files than allowed, and archives that
expand beyond the byte limit. The byte limit is checked twice: first against the sizes the
headers declare (cheap, stops an honest zip bomb before any work), then against the bytes
actually produced while streaming, because headers can lie.

Members are written under `dest` with flat generated names, never with their own paths, so
nothing can land outside `dest` whatever the archive says.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cases.dicom import DicomInputError
from cases.dicom.reading import ignored_file

CHUNK = 1024 * 1024
ZIP_MAGIC = b"PK\x03\x04"
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ExtractedFile:
    """One expanded member: `name` for messages ("archive.zip/dir/file"), `path` on disk."""

    name: str
    path: Path


def looks_like_zip(*, head: bytes) -> bool:
    """Whether the first bytes of a file are a zip local-file header. DICOM files start with
    a 128-byte preamble (usually zeros) or a group-0008 tag, never with this signature."""
    return head[:4] == ZIP_MAGIC


def _member_check(info: zipfile.ZipInfo, archive: str) -> None:
    raw = info.filename
    member = f"{archive}/{raw}"
    path = raw.replace("\\", "/")
    if path.startswith("/") or _DRIVE.match(path):
        raise DicomInputError(member, "zip member has an absolute path")
    if ".." in PurePosixPath(path).parts:
        raise DicomInputError(member, "zip member path contains '..'")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DicomInputError(member, "zip member is a symbolic link")
    if info.flag_bits & 0x1:
        raise DicomInputError(member, "zip member is encrypted")


def zip_extract(
    *,
    source: Path | BinaryIO,
    name: str,
    dest: Path,
    max_expanded_bytes: int,
    max_files: int,
) -> list[ExtractedFile]:
    """Expand the regular files of a zip archive into `dest` after the safety checks above.

    Directories and files that travel with exports (see `reading.ignored_file`) are skipped.
    Raises `DicomInputError` naming the archive or member.
    """
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DicomInputError(name, f"not a valid zip archive ({exc})") from exc
    with zf:
        infos = zf.infolist()
        for info in infos:
            _member_check(info, name)
        members = [i for i in infos if not i.is_dir() and not ignored_file(i.filename)]
        if len(members) > max_files:
            raise DicomInputError(
                name, f"zip archive holds {len(members)} files, over the limit of {max_files}"
            )
        declared = sum(i.file_size for i in members)
        if declared > max_expanded_bytes:
            raise DicomInputError(
                name,
                f"zip archive expands to {declared} bytes, over the limit of "
                f"{max_expanded_bytes} (zip bomb?)",
            )
        dest.mkdir(parents=True, exist_ok=True)
        produced = 0
        extracted = []
        for k, info in enumerate(members):
            member = f"{name}/{info.filename}"
            target = dest / f"{k:06d}"
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(CHUNK):
                        produced += len(chunk)
                        if produced > max_expanded_bytes:
                            raise DicomInputError(
                                member,
                                f"zip archive expands beyond the limit of {max_expanded_bytes}"
                                " bytes (zip bomb?)",
                            )
                        out.write(chunk)
            except DicomInputError:
                raise
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
                raise DicomInputError(member, f"corrupt zip member ({exc})") from exc
            extracted.append(ExtractedFile(name=member, path=target))
        return extracted
