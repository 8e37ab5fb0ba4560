"""System checks of the cases app (run by `manage.py check`; `--deploy` adds the deploy ones)."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register

# Long enough that the key cannot be guessed by trying: as for Django's SECRET_KEY check.
PSEUDONYM_KEY_MIN_LENGTH = 32


@register(Tags.security, deploy=True)
def pseudonym_key_check(app_configs, **kwargs) -> list[Error]:
    """With DEBUG off, ILDREVIEW_PSEUDONYM_KEY must be a secret of its own: with a known key a
    pseudonym is a plain hash of the MRN and can be reversed by trying MRNs."""
    if settings.DEBUG:
        return []
    key = settings.ILDREVIEW_PSEUDONYM_KEY
    if key and key != settings.ILDREVIEW_PSEUDONYM_DEV_KEY and len(key) >= PSEUDONYM_KEY_MIN_LENGTH:
        return []
    return [
        Error(
            "ILDREVIEW_PSEUDONYM_KEY is not set to a secret of its own.",
            hint=(
                "Set ILDREVIEW_PSEUDONYM_KEY to a random value of at least "
                f"{PSEUDONYM_KEY_MIN_LENGTH} characters (see .env.example) and keep it: "
                "patient and UID pseudonyms are HMACs under it."
            ),
            id="cases.E001",
        )
    ]
