"""Login protection around django-axes: the client address behind trusted proxies, the login
form's message with the attempts left, and the lockout response (a page, or JSON for the API).

Failures are counted per username+address combination (AXES_LOCKOUT_PARAMETERS), so one
account's failures never lock another account, nor everyone behind the same NAT or proxy.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.translation import ngettext


def client_ip_address(request: HttpRequest) -> str:
    """The address failures are counted for.

    REMOTE_ADDR unless ILDREVIEW_TRUSTED_PROXY_COUNT is N > 0: then the N-th entry from the
    right of X-Forwarded-For, the one the outermost trusted proxy saw. Entries left of it are
    written by the client and never trusted, so a client cannot pick its own address; a
    missing or malformed entry falls back to REMOTE_ADDR.
    """
    remote = request.META.get("REMOTE_ADDR", "")
    count = settings.ILDREVIEW_TRUSTED_PROXY_COUNT
    if count <= 0:
        return remote
    header = request.META.get("HTTP_X_FORWARDED_FOR", "")
    forwarded = [part.strip() for part in header.split(",") if part.strip()]
    if len(forwarded) < count:
        return remote
    candidate = forwarded[-count]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote


def lockout_duration_text() -> str:
    """AXES_COOLOFF_TIME (hours) in words, e.g. "30 minutes" or "2 hours"."""
    minutes = round(float(settings.AXES_COOLOFF_TIME) * 60)
    if minutes >= 60 and minutes % 60 == 0:
        hours = minutes // 60
        return ngettext("%(n)d hour", "%(n)d hours", hours) % {"n": hours}
    return ngettext("%(n)d minute", "%(n)d minutes", minutes) % {"n": minutes}


def lockout_message() -> str:
    return (
        f"Too many failed login attempts for this account from your address. "
        f"Try again in {lockout_duration_text()}, or ask an administrator to unlock it."
    )


class LoginForm(AuthenticationForm):
    """The login form; a failed attempt says how many attempts are left before the lockout."""

    def get_invalid_login_error(self):
        error = super().get_invalid_login_error()
        # Set by axes' failure handler during authenticate() for this request.
        failures = getattr(self.request, "axes_failures_since_start", None)
        if failures is None:
            return error
        left = max(settings.AXES_FAILURE_LIMIT - failures, 0)
        error.message = "Wrong username or password. " + ngettext(
            "%(left)d attempt left before this account is locked for %(duration)s.",
            "%(left)d attempts left before this account is locked for %(duration)s.",
            left,
        ) % {"left": left, "duration": lockout_duration_text()}
        return error


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials=None
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: HTTP 429, as JSON for the API and as a page otherwise."""
    status = settings.AXES_HTTP_RESPONSE_CODE
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": lockout_message()}, status=status)
    context = {"failure_limit": settings.AXES_FAILURE_LIMIT, "message": lockout_message()}
    return render(request, settings.AXES_LOCKOUT_TEMPLATE, context, status=status)


def flag_drf_lockout(sender, request=None, **kwargs) -> None:
    """Receiver of axes' `user_locked_out`: for the token endpoint axes flags DRF's Request
    wrapper, which AxesMiddleware never sees; copy the flag to the wrapped HttpRequest so the
    middleware answers with the lockout response (429) instead of DRF's 400."""
    inner = getattr(request, "_request", None)
    if inner is not None:
        inner.axes_locked_out = True
        inner.axes_credentials = getattr(request, "axes_credentials", None)
