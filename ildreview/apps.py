"""The project package as an app, so that its signal receivers are connected at start-up."""

from django.apps import AppConfig


class IldreviewConfig(AppConfig):
    name = "ildreview"
    verbose_name = "ildreview"

    def ready(self) -> None:
        from axes.signals import user_locked_out

        from ildreview.auth import flag_drf_lockout

        user_locked_out.connect(flag_drf_lockout, dispatch_uid="ildreview-flag-drf-lockout")
