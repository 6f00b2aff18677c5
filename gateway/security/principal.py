"""Roles, permissions and the authenticated principal handed to routes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Role(StrEnum):
    admin = "admin"
    clinician = "clinician"


class Permission(StrEnum):
    patient_search = "patient:search"
    patient_read = "patient:read"
    patient_write = "patient:write"
    letter_read = "letter:read"
    letter_write = "letter:write"
    break_glass = "patient:break-glass"
    user_admin = "user:admin"
    settings_admin = "settings:admin"
    audit_read = "audit:read"
    care_team_admin = "care-team:admin"


#: What each role may do. Administrators manage accounts and settings; they do not read PHI
#: unless they also hold the clinician role.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.clinician: frozenset(
        {
            Permission.patient_search,
            Permission.patient_read,
            Permission.patient_write,
            Permission.letter_read,
            Permission.letter_write,
            Permission.break_glass,
        }
    ),
    Role.admin: frozenset(
        {
            Permission.user_admin,
            Permission.settings_admin,
            Permission.audit_read,
            Permission.care_team_admin,
        }
    ),
}


def permissions_for(roles: frozenset[Role] | set[Role]) -> frozenset[Permission]:
    """The union of the permissions of ``roles``."""
    result: set[Permission] = set()
    for role in roles:
        result |= ROLE_PERMISSIONS[role]
    return frozenset(result)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted, as the audit trail records it: a user id and username (both may be unknown, e.g. a
    failed login). Defined here, beside :class:`Principal`, so that this module stays free of heavy
    imports; :mod:`gateway.audit` re-exports it."""

    user_id: uuid.UUID | None
    username: str | None


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated user of a request."""

    user_id: uuid.UUID
    username: str
    display_name: str
    roles: frozenset[Role]
    session_id: uuid.UUID | None
    auth_method: Literal["bearer", "cookie"]
    #: The account must change its password before it may do anything but that (and ``/auth/me``).
    must_change_password: bool = False
    #: ``require_2fa_for_admins`` is on and this admin has not enrolled TOTP yet.
    totp_enrolment_required: bool = False

    @property
    def actor(self) -> Actor:
        """This user as the actor of an audit record."""
        return Actor(self.user_id, self.username)

    @property
    def permissions(self) -> frozenset[Permission]:
        return permissions_for(self.roles)

    def has(self, permission: Permission) -> bool:
        return permission in self.permissions
