from django.apps import AppConfig


class RetrievalConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "retrieval"
    verbose_name = "Retrieval"

    def ready(self) -> None:
        from cases import signals
        from retrieval import receivers, tasks  # noqa: F401 (tasks: registered, sent by name)

        signals.study_imported.connect(
            receivers.study_imported_enqueue, dispatch_uid="retrieval.study_imported_enqueue"
        )
        signals.reference_library_changed.connect(
            receivers.reference_library_changed_sync,
            dispatch_uid="retrieval.reference_library_changed_sync",
        )
