"""What the management commands share: naming connections on the command line."""

from __future__ import annotations

import uuid

from django.core.management.base import CommandError

from connections.models import Connection

LIST_HINT = 'Run "manage.py sync_status" to list connections and their ids.'


def connections_for_arguments(*, ids: list[str], all_connections: bool, default_all: bool = False) -> list[Connection]:
    """The connections named on the command line (public UUIDs, in the order given), or all.

    Every id is checked before anything is returned, so a command that changes connections
    changes none of them when one id is wrong. Commands are operator tools: they see every
    workspace, unlike the Settings page and the API.
    """
    if ids and all_connections:
        raise CommandError("Give connection ids or --all, not both.")
    queryset = Connection.objects.select_related("workspace")
    if all_connections or (default_all and not ids):
        return list(queryset)
    if not ids:
        raise CommandError(f"Give one or more connection ids, or --all. {LIST_HINT}")
    parsed: dict[str, uuid.UUID | None] = {}
    for raw in ids:
        try:
            parsed[raw] = uuid.UUID(raw)
        except ValueError:
            parsed[raw] = None
    found = {c.public_id: c for c in queryset.filter(public_id__in=[p for p in parsed.values() if p is not None])}
    unknown = [
        f"{raw!r} (not a UUID)" if public_id is None else repr(raw)
        for raw, public_id in parsed.items()
        if public_id not in found
    ]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise CommandError(f"No connection with id{plural} {', '.join(unknown)}. {LIST_HINT}")
    # Every id names a connection by now. The same connection given twice (say, with and
    # without dashes) is handled once.
    known = {raw: public_id for raw, public_id in parsed.items() if public_id is not None}
    return list({known[raw]: found[known[raw]] for raw in ids}.values())


def connection_label(connection: Connection) -> str:
    """How the commands name a connection in their output: the name people know, and the id they type."""
    return f"{connection.name} ({connection.public_id})"
