"""Site-wide login requirement."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse

# Paths that handle authentication themselves: the login page, the admin (own login), the API
# (DRF answers 401/403 rather than redirecting) and static files.
_EXEMPT_PREFIXES = ("/accounts/login/", "/admin/", "/api/", "/static/", "/healthz")


class LoginRequiredMiddleware:
    """Redirect anonymous requests for any page to the login page."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.user.is_authenticated and not request.path.startswith(_EXEMPT_PREFIXES):
            return redirect_to_login(request.get_full_path(), settings.LOGIN_URL)
        return self.get_response(request)
