"""Reads of connections, always scoped to what the user may see."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet
from django.http import Http404

from connections.models import Connection


def connections_for_user(*, user: User | AnonymousUser) -> QuerySet[Connection]:
    if not user.is_authenticated:
        return Connection.objects.none()
    # Credentials are decrypted only where a provider needs them, not on every page and poll.
    return Connection.objects.filter(workspace__memberships__user=user).select_related("workspace").defer("credentials")


def connection_get_for_user(*, user: User | AnonymousUser, public_id: uuid.UUID | str) -> Connection:
    """The connection, or Http404 whether it does not exist or belongs to another workspace."""
    try:
        public_id = uuid.UUID(str(public_id))
        return connections_for_user(user=user).get(public_id=public_id)
    except (Connection.DoesNotExist, ValueError):
        # A malformed id is just another id that names nothing you may see.
        raise Http404("No connection with that id") from None
