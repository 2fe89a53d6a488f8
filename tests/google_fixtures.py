"""What the Google Ads tests share: the loopback fakes (tests/fakes/google_ads.py), started once
per test module, and reset for each test.

Imported by the modules that use it as `google_servers_fixture as google_servers_fixture` (pytest
finds a fixture among a module's names; see tests/meta_provider_fixtures.py).
"""

from __future__ import annotations

import pytest

from syncing.providers.google import access_tokens
from tests.fakes.google_ads import google_fakes_running


@pytest.fixture(scope="module", name="google_servers")
def google_servers_fixture(tmp_path_factory):
    with google_fakes_running(tmp_path_factory.mktemp("google")) as fakes:
        yield fakes


def google_reset(servers, settings):
    """The fakes as new, the settings pointing the real SDK at them; returns them."""
    servers.reset()
    servers.configure(settings)
    # Access tokens cached by an earlier test were issued by the fake before its reset.
    access_tokens.clear()
    return servers
