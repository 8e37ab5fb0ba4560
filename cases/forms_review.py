"""Forms of the expert review actions (validation of input only; writes are in services)."""

from __future__ import annotations

from django import forms

from cases.selectors import diagnosis_list


class ExpertLabelForm(forms.Form):
    """Confirm the suggestion (`action=confirm`) or set / correct a study's diagnosis.

    The diagnosis is always required (the page's list starts blank, so that no label is
    recorded by accident). A correction of a suggestion (`action=correct`, `suggested` = the
    suggested diagnosis) must choose a different diagnosis: confirming is its own button.
    """

    diagnosis = forms.ModelChoiceField(
        queryset=diagnosis_list(),
        empty_label="Choose a diagnosis…",
        error_messages={"required": "Choose a diagnosis."},
    )
    comment = forms.CharField(required=False, max_length=2000, widget=forms.Textarea)
    action = forms.ChoiceField(
        required=False, choices=[("", ""), ("confirm", "confirm"), ("correct", "correct")]
    )
    suggested = forms.ModelChoiceField(queryset=diagnosis_list(), required=False)

    def clean(self):
        data = super().clean()
        chosen, suggested = data.get("diagnosis"), data.get("suggested")
        if data.get("action") == "correct" and chosen is not None and chosen == suggested:
            raise forms.ValidationError(
                "Choose a diagnosis different from the suggestion to correct it, or use "
                "“Confirm suggestion”."
            )
        return data


class ReferenceProposeForm(forms.Form):
    """Propose a study as a reference case (default diagnosis: the current label)."""

    diagnosis = forms.ModelChoiceField(queryset=diagnosis_list(), required=False)
    comment = forms.CharField(required=False, max_length=2000, widget=forms.Textarea)


class ReferenceDecisionForm(forms.Form):
    """Approve (comment optional) or reject (reason required, checked by the service).

    `confirm_unopened`: the approver ticked "approve without opening the review" (required by
    the view when they have not opened the case's review page)."""

    comment = forms.CharField(required=False, max_length=2000, widget=forms.Textarea)
    confirm_unopened = forms.BooleanField(required=False)
