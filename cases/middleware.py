"""Upload file names that Django would drop silently.

Django's multipart parser decodes each part header as UTF-8 and skips a header line that does
not decode: a file whose name is, say, Latin-1 ("caf\\xe9.dcm" from an old Windows tool) loses
its Content-Disposition, the part is ignored, and the view sees no file at all. This middleware
wraps the request body of multipart POSTs before anything parses it: in part headers only,
every byte of an invalid UTF-8 sequence is replaced by "_" (the same length, so the content
length still holds), which keeps the file under a sanitised name. The file names seen in part
headers are recorded (`upload_file_names`) so that a view can name files Django still drops
(names such as ".." or "") instead of answering "no files".
"""

from __future__ import annotations

import re

from django.utils.http import parse_header_parameters

READ_CHUNK = 64 * 1024
# Part headers longer than this are left alone (Django refuses them anyway).
MAX_HEADER_BYTES = 8192
_FILENAME = re.compile(rb'filename="([^"]*)"', re.IGNORECASE)


def _utf8_sanitised(line: bytes) -> bytes:
    """`line` with every byte of an invalid UTF-8 sequence replaced by b"_"."""
    out = bytearray()
    rest = line
    while rest:
        try:
            rest.decode("utf-8")
        except UnicodeDecodeError as exc:
            out += rest[: exc.start] + b"_" * (exc.end - exc.start)
            rest = rest[exc.end :]
            continue
        out += rest
        break
    return bytes(out)


class _PartHeaderSanitisingStream:
    """A read-only stream over a multipart body that sanitises part headers (see above)."""

    def __init__(self, stream, boundary: bytes) -> None:
        self._stream = stream
        self._delimiter = b"--" + boundary + b"\r\n"
        self._pending = b""
        self._out = bytearray()
        self._eof = False
        self.file_names: list[str] = []

    def read(self, size: int | None = -1) -> bytes:
        while not self._eof and (size is None or size < 0 or len(self._out) < size):
            self._fill()
        n = len(self._out) if size is None or size < 0 else min(size, len(self._out))
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        while not self._eof and b"\n" not in self._out:
            if size is not None and 0 <= size <= len(self._out):
                break
            self._fill()
        end = self._out.find(b"\n") + 1 or len(self._out)
        if size is not None and size >= 0:
            end = min(end, size)
        data = bytes(self._out[:end])
        del self._out[:end]
        return data

    def _fill(self) -> None:
        chunk = self._stream.read(READ_CHUNK)
        if chunk:
            self._pending += chunk
        else:
            self._eof = True
        self._scan(final=self._eof)

    def _scan(self, *, final: bool) -> None:
        buf, pos = self._pending, 0
        while True:
            found = buf.find(self._delimiter, pos)
            if found < 0:
                # Keep a tail that may hold the start of a delimiter split across reads.
                keep = 0 if final else len(self._delimiter) - 1
                cut = max(pos, len(buf) - keep)
                break
            start = found + len(self._delimiter)
            end = buf.find(b"\r\n\r\n", start, start + MAX_HEADER_BYTES)
            if end < 0:
                if not final and len(buf) - start < MAX_HEADER_BYTES:
                    cut = found  # the header is not complete yet: wait for more
                    break
                pos = start
                continue
            header = self._header_sanitise(buf[start:end])
            buf = buf[:start] + header + buf[end:]
            pos = end
        self._out += buf[:cut]
        self._pending = buf[cut:]

    def _header_sanitise(self, header: bytes) -> bytes:
        lines = [_utf8_sanitised(line) for line in header.split(b"\r\n")]
        for line in lines:
            if line.lower().startswith(b"content-disposition"):
                match = _FILENAME.search(line)
                if match and match.group(1):
                    self.file_names.append(match.group(1).decode("utf-8"))
        return b"\r\n".join(lines)


def upload_file_names(request) -> list[str]:
    """Names of the file parts in a multipart request's body (after sanitising), once the
    body has been parsed; [] for other requests."""
    stream = getattr(request, "_upload_name_stream", None)
    return list(stream.file_names) if stream is not None else []


def dropped_files_reason(request) -> str | None:
    """Why an upload that reached a view without files had some after all: file parts whose
    names Django's parser discards (e.g. "..", or only unprintable characters); None when
    the request held no file parts."""
    names = upload_file_names(request)
    if not names:
        return None
    shown = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
    return (
        f"{len(names)} file(s) could not be read because their names are not usable file "
        f"names ({shown}); rename them, or send them in the field 'files'"
    )


class UploadFileNameMiddleware:
    """Wraps the body of multipart POST requests (see the module docstring). Must come before
    anything that reads request.POST or request.FILES (CSRF middleware included)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        content_type, params = parse_header_parameters(request.META.get("CONTENT_TYPE", ""))
        boundary = params.get("boundary", "")
        if request.method == "POST" and content_type == "multipart/form-data" and boundary:
            try:
                delimiter = boundary.encode("ascii")
            except UnicodeEncodeError:
                delimiter = b""  # Django refuses such a boundary itself
            if delimiter:
                stream = _PartHeaderSanitisingStream(request._stream, delimiter)
                request._stream = stream
                request._upload_name_stream = stream
        return self.get_response(request)
