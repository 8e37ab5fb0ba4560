"""Role helpers shared by pages, services and the REST API.

Roles are the groups seeded by migration `cases/0002`: Clinician (uploads, sees own studies and
the approved reference library), Expert (sees every study, labels, proposes and approves
reference cases) and Admin (staff/superuser, or the Admin group: everything). Object-level rules
(who may see which study) live here so that every entry point applies the same ones.
"""

from __future__ import annotations

from typing import Any, Literal

CLINICIAN = "Clinician"
EXPERT = "Expert"
ADMIN = "Admin"

Role = Literal["clinician", "expert", "admin"]


def _active(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


def _in_group(user: Any, name: str) -> bool:
    # Cache the user's group names on the instance: a page asks several times per request.
    names = getattr(user, "_ildreview_group_names", None)
    if names is None:
        names = frozenset(user.groups.values_list("name", flat=True))
        user._ildreview_group_names = names
    return name in names


def is_admin(user: Any) -> bool:
    """Superusers, staff and members of the Admin group."""
    if not _active(user):
        return False
    return bool(user.is_superuser or user.is_staff or _in_group(user, ADMIN))


def is_expert(user: Any) -> bool:
    """Members of the Expert group (admins are not experts unless they are in the group: expert
    labels must come from someone whose role is to give them)."""
    return _active(user) and _in_group(user, EXPERT)


def is_clinician(user: Any) -> bool:
    """Members of the Clinician group."""
    return _active(user) and _in_group(user, CLINICIAN)


def user_role(user: Any) -> Role | None:
    """The user's highest role: "admin", "expert", "clinician", or None (no role, anonymous or
    inactive)."""
    if is_admin(user):
        return "admin"
    if is_expert(user):
        return "expert"
    if is_clinician(user):
        return "clinician"
    return None


def sees_all_studies(user: Any) -> bool:
    """Experts and admins see every study; everyone else only their own uploads."""
    return is_expert(user) or is_admin(user)


def can_upload(user: Any) -> bool:
    """Whether the user may upload studies (the `cases.add_study` permission of their group)."""
    return _active(user) and user.has_perm("cases.add_study")


def can_view_study(user: Any, study: Any) -> bool:
    """Whether `user` may see `study` (its page, slices and images).

    Experts and admins see all studies; any other logged-in user sees the studies they uploaded
    and, read-only, the studies of APPROVED reference cases (the library is open to every
    logged-in user, and its cases are opened from there).
    """
    if not _active(user):
        return False
    if sees_all_studies(user) or study.uploaded_by_id == user.pk:
        return True
    from cases.models import ReferenceCase

    return ReferenceCase.objects.filter(
        study_id=study.pk, state=ReferenceCase.State.APPROVED
    ).exists()
