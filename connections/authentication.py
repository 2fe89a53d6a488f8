"""API authentication: `Authorization: Token <key>`, `Authorization: Bearer <key>`, and the
`access_token` cookie that the spec's curl examples send (`--cookie "access_token=..."`).

A cookie travels with every request a browser makes, including a form posted from another
site, so cookie-authenticated unsafe requests must come from our own origin: a request that
says it is cross-site (Origin or Sec-Fetch-Site) is refused. curl sends neither header, so the
spec's examples work as written.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from connections.models import ApiToken
from connections.services import token_hash

TOKEN_KEYWORDS = ("token", "bearer")
COOKIE_NAME = "access_token"
# last_used_at is for people auditing tokens; writing it on every request would cost a write
# per API call, so it is refreshed at most this often.
LAST_USED_RESOLUTION = timedelta(minutes=5)


def _authenticate_key(key: str):
    token = ApiToken.objects.select_related("user").filter(key_hash=token_hash(key)).first()
    if token is None or token.revoked_at is not None or not token.user.is_active:
        raise exceptions.AuthenticationFailed("Invalid or revoked API token.")
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user, token


class TokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Token <key>` or `Authorization: Bearer <key>`."""

    def authenticate(self, request: Request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower().decode(errors="replace") not in TOKEN_KEYWORDS:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header; expected 'Token <key>'.")
        try:
            key = header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Malformed API token.") from None
        return _authenticate_key(key)

    def authenticate_header(self, request: Request) -> str:
        # Makes unauthenticated requests 401 (with this challenge) rather than 403.
        return 'Token realm="api"'


class CookieTokenAuthentication(authentication.BaseAuthentication):
    """The `access_token` cookie, for unsafe methods only from our own origin."""

    def authenticate(self, request: Request):
        key = request.COOKIES.get(COOKIE_NAME)
        if not key:
            return None
        user, token = _authenticate_key(key)
        if request.method not in ("GET", "HEAD", "OPTIONS") and _is_cross_site(request):
            raise exceptions.PermissionDenied(
                "Cross-site request refused: a cookie-authenticated change must come from this site "
                "or use the Authorization header."
            )
        return user, token


def _is_cross_site(request: Request) -> bool:
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        # Browsers send Origin with every cross-origin POST/PATCH; no Origin means a
        # non-browser client (curl, scripts) or an old same-origin form.
        return False
    if origin == "null":
        return True
    trusted = {f"{request.scheme}://{request.get_host()}", *settings.CSRF_TRUSTED_ORIGINS}
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" not in trusted
