"""Registry of providers by slug (healthchecks keeps its transports in one mapping like this)."""

from syncing.providers.base import PermanentError, Provider
from syncing.providers.demo import DemoProvider

PROVIDERS: dict[str, Provider] = {
    "demo": DemoProvider(),
}


def provider_for(slug: str) -> Provider:
    try:
        return PROVIDERS[slug]
    except KeyError:
        raise PermanentError(f"Syncing {slug!r} accounts is not available in this installation") from None
