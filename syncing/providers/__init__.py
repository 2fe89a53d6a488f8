"""Registry of providers by slug (healthchecks keeps its transports in one mapping like this).

Each platform is one package (meta/, google/) holding everything about it; the rest of AdSync,
the connect flow included, reaches a platform only through these mappings.
"""

from syncing.providers.base import OAuthProvider, PermanentError, Provider
from syncing.providers.demo import DemoProvider
from syncing.providers.google import GoogleProvider
from syncing.providers.meta import MetaProvider

# The providers whose accounts are connected through the platform's OAuth sign-in
# (connections/connect.py and connect_urls.py).
OAUTH_PROVIDERS: dict[str, OAuthProvider] = {
    "google": GoogleProvider(),
    "meta": MetaProvider(),
}
PROVIDERS: dict[str, Provider] = {
    "demo": DemoProvider(),
    **OAUTH_PROVIDERS,
}


def provider_for(slug: str) -> Provider:
    try:
        return PROVIDERS[slug]
    except KeyError:
        raise PermanentError(f"Syncing {slug!r} accounts is not available in this installation") from None
