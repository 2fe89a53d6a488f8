"""The user of a request to a page behind login_required, typed as the user it is."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest


def signed_in_user(request: HttpRequest) -> User:
    """request.user in a view decorated with login_required: never AnonymousUser there, since the
    decorator sends anonymous requests to the login page before the view runs."""
    user = request.user
    if isinstance(user, AnonymousUser):  # only a view without login_required gets here
        raise PermissionDenied("Sign in first.")
    return user
