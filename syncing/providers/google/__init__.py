"""Google Ads: the google-ads SDK, GAQL search_stream over campaign, by day, and connecting
accounts through Google's OAuth consent screen.

One GAQL query is one operation of Google's quota, which belongs to the app's OAuth client and
is shared by every customer of the installation; it is budgeted for the installation and per
customer (syncing/budget.py), and Google's own quota errors defer the connection.

The parts, by role: sdk (the SDK's clients and gRPC channel, once per process, and the OAuth
access tokens), errors (what the SDK raises, as provider errors), customers (the accounts a user
can connect), oauth (the consent screen, the code exchange and the account listing of the
connect flow), provider (the provider itself: budgets, fetch, and the connect methods the
registry exposes). This package re-exports what the tests import from it.
"""

from syncing.providers.google.customers import GoogleCustomer, customer_id_format, google_customers_accessible
from syncing.providers.google.errors import RECONNECT_MESSAGE, google_error
from syncing.providers.google.provider import GoogleProvider, customer_budget
from syncing.providers.google.sdk import (
    ADWORDS_SCOPE,
    access_tokens,
    app_budget,
    customer_id_normalize,
    google_ads_sdk,
)

__all__ = [
    "ADWORDS_SCOPE",
    "RECONNECT_MESSAGE",
    "GoogleCustomer",
    "GoogleProvider",
    "access_tokens",
    "app_budget",
    "customer_budget",
    "customer_id_format",
    "customer_id_normalize",
    "google_ads_sdk",
    "google_customers_accessible",
    "google_error",
]
