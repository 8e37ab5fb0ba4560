"""Forms of the expert review actions (validation of input only; writes are in services)."""

from __future__ import annotations

from django import forms

from cases.selectors import diagnosis_list


class ExpertLabelForm(forms.Form):
    """Confirm or correct a study's diagnosis."""

    diagnosis = forms.ModelChoiceField(queryset=diagnosis_list(), empty_label=None)
    comment = forms.CharField(required=False, max_length=2000, widget=forms.Textarea)


class ReferenceProposeForm(forms.Form):
    """Propose a study as a reference case (default diagnosis: the current label)."""

    diagnosis = forms.ModelChoiceField(queryset=diagnosis_list(), required=False)
    comment = forms.CharField(required=False, max_length=2000, widget=forms.Textarea)


class ReferenceDecisionForm(forms.Form):
    """Approve (comment optional) or reject (reason required, checked by the service)."""

    comment = forms.CharField(required=False, max_length=2000, widget=forms.Textarea)
