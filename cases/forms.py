"""Forms of the cases pages: the upload form and the list filters."""

from __future__ import annotations

from django import forms

from cases.imaging import WINDOW_PRESETS
from cases.models import Diagnosis, Study


class MultipleFileInput(forms.ClearableFileInput):
    """A file input that accepts several files (and, in the browser, a whole folder's files)."""

    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """A file field whose cleaned value is the list of uploaded files."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput(attrs={"multiple": True}))
        # Empty files reach the ingestion service, whose error names the file.
        kwargs.setdefault("allow_empty_file", True)
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        single = super().clean
        if isinstance(data, list | tuple):
            if not data:
                return single(None, initial)  # the "required" error, or None when optional
            return [single(item, initial) for item in data]
        return [single(data, initial)] if data else single(data, initial)


class UploadForm(forms.Form):
    """DICOM files (with or without the .dcm ending) and/or zip archives of them."""

    files = MultipleFileField(
        label="DICOM files or zip archives",
        error_messages={"required": "Choose at least one DICOM file or zip archive."},
    )


def _diagnosis_choices() -> list[tuple[str, str]]:
    return [("", "Any diagnosis")] + [
        (d.code, d.name) for d in Diagnosis.objects.filter(active=True).order_by("name")
    ]


class WorklistFilterForm(forms.Form):
    """GET filters of the worklist; invalid values are ignored rather than failing the page."""

    q = forms.CharField(required=False, max_length=100, label="Search")
    status = forms.ChoiceField(
        required=False, choices=[("", "Any status"), *Study.Status.choices], label="Status"
    )
    diagnosis = forms.ChoiceField(required=False, label="Diagnosis")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["diagnosis"].choices = _diagnosis_choices()

    def filters(self) -> dict[str, str | None]:
        """Keyword arguments for `study_list_visible` (empty when the form is invalid)."""
        if not self.is_valid():
            return {}
        data = self.cleaned_data
        return {
            "q": data["q"] or None,
            "status": data["status"] or None,
            "diagnosis": data["diagnosis"] or None,
        }


class LibraryFilterForm(forms.Form):
    """GET filter of the reference library."""

    diagnosis = forms.ChoiceField(required=False, label="Diagnosis")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["diagnosis"].choices = _diagnosis_choices()

    def diagnosis_code(self) -> str | None:
        return (self.cleaned_data["diagnosis"] or None) if self.is_valid() else None


class WindowForm(forms.Form):
    """Display window of the slice PNG endpoint: a preset, or an explicit level and width."""

    preset = forms.ChoiceField(required=False, choices=[(k, k) for k in WINDOW_PRESETS])
    level = forms.FloatField(required=False, min_value=-2000, max_value=4000)
    width = forms.FloatField(required=False, min_value=1, max_value=8000)
    size = forms.IntegerField(required=False, min_value=16, max_value=2048)
