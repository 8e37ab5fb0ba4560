"""Site-wide login requirement and no caching of anything but static files."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.utils.cache import add_never_cache_headers

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


class NoStoreMiddleware:
    """`Cache-Control: no-store` (and `Pragma: no-cache` for HTTP/1.0 caches) on every response
    but static files: pages, API answers and stored files may carry patient data, which must
    not stay in a browser's or a shared proxy's cache after logout."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.static_prefix = "/" + settings.STATIC_URL.strip("/") + "/"

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not request.path.startswith(self.static_prefix):
            add_never_cache_headers(response)
            response["Pragma"] = "no-cache"
        return response
