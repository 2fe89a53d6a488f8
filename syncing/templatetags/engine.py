from django import template
from django.utils import timezone

from syncing.health import engine_banner

register = template.Library()


@register.inclusion_tag("engine_banner.html", takes_context=True)
def engine_status_banner(context) -> dict:
    """The "syncs are not running" banner, for pages whose views do not compute it (the admin)."""
    user = context.get("user")
    # Not on the admin's sign-in page: the engine's state is for the people who run it.
    shown = user is not None and user.is_active and user.is_staff
    return {"banner": engine_banner(now=timezone.now()) if shown else None, "user": user}
