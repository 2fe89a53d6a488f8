from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from connections.models import Connection, Provider, SyncFrequency

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def test_seed_demo_creates_user_workspace_and_connections():
    out = StringIO()

    call_command("seed_demo", stdout=out)

    user = get_user_model().objects.get(username="demo")
    assert user.check_password("demo")
    conns = Connection.objects.filter(workspace__memberships__user=user)
    assert conns.count() == 6
    assert set(conns.values_list("provider", flat=True)) == {Provider.DEMO}
    assert set(conns.values_list("sync_frequency", flat=True)) == set(SyncFrequency.values)
    # Scheduled ones are due at once, manual ones never.
    assert conns.filter(sync_frequency="manual", next_sync_at__isnull=False).count() == 0
    assert conns.exclude(sync_frequency="manual").filter(next_sync_at__isnull=True).count() == 0
    assert "6 connection(s) created" in out.getvalue()


def test_seed_demo_is_idempotent():
    call_command("seed_demo", stdout=StringIO())
    out = StringIO()

    call_command("seed_demo", stdout=out)

    assert Connection.objects.count() == 6
    assert get_user_model().objects.filter(username="demo").count() == 1
    assert "0 connection(s) created, 6 already there" in out.getvalue()
