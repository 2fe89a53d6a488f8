"""Registry of providers by slug (healthchecks keeps its transports in one mapping like this)."""

from syncing.providers.base import PermanentError, Provider
from syncing.providers.demo import DemoProvider
from syncing.providers.google import GoogleProvider
from syncing.providers.meta import MetaProvider

PROVIDERS: dict[str, Provider] = {
    "demo": DemoProvider(),
    "google": GoogleProvider(),
    "meta": MetaProvider(),
}


def provider_for(slug: str) -> Provider:
    try:
        return PROVIDERS[slug]
    except KeyError:
        raise PermanentError(f"Syncing {slug!r} accounts is not available in this installation") from None
