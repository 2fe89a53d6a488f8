"""Meta (Facebook/Instagram) ads: campaign-level daily insights through the facebook-business SDK,
and connecting ad accounts through Meta's OAuth dialog.

Meta reports days in the ad account's own time zone; the connection stores that zone, and the
sync window (today and yesterday, or the lookback on a restatement) is computed in it.

The parts, by role: client (the SDK's session and API object for one sync, metered), errors
(what Meta and the SDK raise, as provider errors), usage (Meta's usage headers: how close to
throttling, and for how long), rows (one insights row as a MetricRow), oauth (the dialog, the
token exchanges and the account listing of the connect flow), provider (the provider itself:
budgets, fetch, and the connect methods the registry exposes).
"""

from syncing.providers.meta.errors import RECONNECT_MESSAGE
from syncing.providers.meta.provider import MetaProvider

__all__ = ["RECONNECT_MESSAGE", "MetaProvider"]
