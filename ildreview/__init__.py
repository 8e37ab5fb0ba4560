"""ildreview: collaborative review of lung CT in interstitial lung disease."""

from .celery import app as celery_app

__all__ = ("celery_app",)
