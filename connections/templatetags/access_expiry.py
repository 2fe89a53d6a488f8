"""{{ connection.credentials_expires_at|access_expiry }} -> "access expires in 5 days"."""

from django import template
from django.utils import timezone

from connections.meta_connect import access_expiry_text

register = template.Library()


@register.filter
def access_expiry(expires_at):
    return access_expiry_text(expires_at, timezone.now())
