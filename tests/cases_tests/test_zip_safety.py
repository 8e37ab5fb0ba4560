"""Safe zip expansion (cases/dicom/archive.py): traversal, links, bombs and limits."""

from __future__ import annotations

import stat
import struct
import zipfile
import zlib

import pytest

from cases.dicom import DicomInputError
from cases.dicom.archive import zip_extract
from tests.dicomgen import zip_write

LIMITS = {"max_expanded_bytes": 1024 * 1024, "max_files": 10}


def extract(path, dest, **limits):
    return zip_extract(source=path, name=path.name, dest=dest, **{**LIMITS, **limits})


def test_extracts_regular_members_to_flat_names_inside_dest(tmp_path):
    archive = zip_write(
        path=tmp_path / "ok.zip",
        members={"study/a.dcm": b"A" * 10, "study/sub/b": b"B" * 20, "DICOMDIR": b"x"},
    )
    out = extract(archive, tmp_path / "out")
    assert [f.name for f in out] == ["ok.zip/study/a.dcm", "ok.zip/study/sub/b"]
    assert [f.path.read_bytes() for f in out] == [b"A" * 10, b"B" * 20]
    assert all(f.path.parent == tmp_path / "out" for f in out)


@pytest.mark.parametrize(
    "member", ["/etc/passwd", "C:/evil.dcm", "\\\\server\\share\\x", "../../outside.dcm"]
)
def test_rejects_zip_with_absolute_or_parent_paths(tmp_path, member):
    archive = zip_write(path=tmp_path / "bad.zip", members={"ok.dcm": b"1", member: b"2"})
    with pytest.raises(DicomInputError, match="absolute path|'\\.\\.'") as err:
        extract(archive, tmp_path / "out")
    assert err.value.filename.startswith("bad.zip/")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "outside.dcm").exists()


def test_rejects_zip_with_backslash_parent_path(tmp_path):
    archive = zip_write(path=tmp_path / "bad.zip", members={"a\\..\\..\\evil.dcm": b"2"})
    with pytest.raises(DicomInputError, match="'\\.\\.'"):
        extract(archive, tmp_path / "out")


def test_rejects_zip_with_symlink_member(tmp_path):
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("series/evil")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DicomInputError, match="symbolic link"):
        extract(path, tmp_path / "out")


def test_rejects_zip_with_too_many_files(tmp_path):
    archive = zip_write(path=tmp_path / "many.zip", members={f"{i}.dcm": b"x" for i in range(11)})
    with pytest.raises(DicomInputError, match="11 files, over the limit of 10"):
        extract(archive, tmp_path / "out")


def test_rejects_zip_bomb_by_declared_expanded_size(tmp_path):
    # 8 MiB of zeros deflates to about 8 KiB: a small bomb against a 1 MiB limit.
    archive = zip_write(path=tmp_path / "bomb.zip", members={"zeros.dcm": bytes(8 * 1024 * 1024)})
    assert archive.stat().st_size < 64 * 1024
    with pytest.raises(DicomInputError, match="over the limit.*zip bomb"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _lying_zip(path, content: bytes, declared: int):
    """A deflated zip whose local and central headers understate the member's size."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = comp.compress(content) + comp.flush()
    crc = zlib.crc32(content)
    name = b"liar.dcm"
    local = struct.pack(
        "<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), declared, len(name), 0
    )
    central = struct.pack(
        "<4s6H3L5H2L",
        b"PK\x01\x02",
        20,
        20,
        0,
        8,
        0,
        0,
        crc,
        len(data),
        declared,
        len(name),
        0,
        0,
        0,
        0,
        0,
        0,
    )
    offset = len(local) + len(name) + len(data)
    cd = central + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(cd), offset, 0)
    path.write_bytes(local + name + data + cd + end)
    return path


def test_rejects_zip_whose_headers_understate_the_size(tmp_path):
    # The headers promise 100 bytes; the member inflates to 4 MiB. Expansion must not trust
    # the headers: it stops (CRC mismatch after the declared bytes, or the streamed byte count).
    archive = _lying_zip(tmp_path / "liar.zip", bytes(4 * 1024 * 1024), declared=100)
    with pytest.raises(DicomInputError) as err:
        extract(archive, tmp_path / "out")
    assert err.value.filename == "liar.zip/liar.dcm"
    assert "corrupt" in err.value.reason or "zip bomb" in err.value.reason


def test_rejects_file_that_is_not_a_zip(tmp_path):
    path = tmp_path / "fake.zip"
    path.write_bytes(b"PK\x03\x04 then nothing useful")
    with pytest.raises(DicomInputError, match="not a valid zip archive"):
        extract(path, tmp_path / "out")
