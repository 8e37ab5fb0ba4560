"""Template tags of the expert review workflow.

`{% load review_tags %}{% expert_actions study %}` renders the expert-actions panel
(`cases/_expert_actions.html`) for a study with everything it needs; pages that already have
that context may `{% include "cases/_expert_actions.html" %}` instead.
"""

from __future__ import annotations

from django import template

from cases.selectors import expert_actions_context

register = template.Library()


@register.inclusion_tag("cases/_expert_actions.html", takes_context=True)
def expert_actions(context, study):
    request = context.get("request")
    user = getattr(request, "user", None) or context.get("user")
    data = expert_actions_context(study=study, user=user)
    data["request"] = request
    data["next_url"] = request.get_full_path() if request is not None else ""
    return data
