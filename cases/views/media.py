"""Media files served only to logged-in users (slices and overlays are patient data)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest
from django.utils._os import safe_join


@login_required
def protected_media(request: HttpRequest, path: str) -> FileResponse:
    """Serve a file under MEDIA_ROOT to an authenticated user."""
    try:
        full = safe_join(str(settings.MEDIA_ROOT), path)
    except Exception as exc:  # SuspiciousFileOperation on traversal
        raise Http404("Not found") from exc
    try:
        return FileResponse(open(full, "rb"))
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise Http404("Not found") from exc
