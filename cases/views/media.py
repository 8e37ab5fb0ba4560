"""Media files served only to logged-in users (slices and overlays are patient data)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest
from django.utils._os import safe_join


@login_required
def protected_media(request: HttpRequest, path: str) -> FileResponse:
    """Serve a file under MEDIA_ROOT to an authenticated user who may see its study."""
    # A file of a study follows the study's visibility (a clinician never gets another
    # clinician's images); 404 as for a study the user may not see.
    from cases.selectors import media_visible

    if not media_visible(user=request.user, path=path):
        raise Http404("Not found")
    try:
        full = safe_join(str(settings.MEDIA_ROOT), path)
    except Exception as exc:  # SuspiciousFileOperation on traversal
        raise Http404("Not found") from exc
    try:
        return FileResponse(open(full, "rb"))
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise Http404("Not found") from exc
