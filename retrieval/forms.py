"""Forms of the retrieval app's pages."""

from __future__ import annotations

from django import forms

from retrieval.selectors.review import K_MAX

SEARCH_MODE_CHOICES = (("similar", "Similar cases"), ("hierarchical", "Class first"))


class ReviewFilterForm(forms.Form):
    """k, the diagnosis filter and the search mode of the similar-case list (invalid values
    fall back). `mode`: "similar" (default: the most similar cases of any class) or
    "hierarchical" (class first: predict the class from the class centroids, then the most
    similar cases of that class only; GET parameter `mode=hierarchical`)."""

    k = forms.IntegerField(required=False, min_value=1, max_value=K_MAX)
    diagnosis = forms.ChoiceField(required=False)
    mode = forms.ChoiceField(required=False, choices=SEARCH_MODE_CHOICES)
    sel = forms.IntegerField(required=False, min_value=1)

    def __init__(self, *args, diagnoses=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["diagnosis"].choices = [("", "All diagnoses")] + [
            (d.code, d.name) for d in diagnoses
        ]

    def value(self, name: str, default=None):
        """The cleaned value of one field; `default` when absent or invalid (one bad
        parameter does not discard the others)."""
        if not self.is_bound:
            return default
        self.is_valid()
        return self.cleaned_data.get(name) or default
