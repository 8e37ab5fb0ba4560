"""Template tags of the expert review workflow.

`{% load review_tags %}{% expert_actions study %}` renders the expert-actions panel
(`cases/_expert_actions.html`) for a study with everything it needs; the review page adds
`suggested=<Diagnosis or None> abstained=<bool>` so that the decision starts from the model's
suggestion. Pages that already have that context may `{% include "cases/_expert_actions.html" %}`.
"""

from __future__ import annotations

from django import template

from cases.selectors import expert_actions_context

register = template.Library()


@register.inclusion_tag("cases/_expert_actions.html", takes_context=True)
def expert_actions(context, study, suggested=None, abstained=False, show_history=True):
    request = context.get("request")
    user = getattr(request, "user", None) or context.get("user")
    data = expert_actions_context(study=study, user=user)
    data["request"] = request
    data["next_url"] = request.get_full_path() if request is not None else ""
    data["suggested"] = suggested
    data["abstained"] = bool(abstained)
    # The study page lists labels and reference cases itself: no second copy here.
    data["show_history"] = bool(show_history)
    data["offer_confirm"] = bool(suggested is not None and not abstained and suggested.active)
    return data
