"""Create the demo user, workspace and demo connections. Safe to run any number of times."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from connections.models import Connection, Provider, SyncFrequency, Workspace
from connections.services import connection_create, workspace_create

DEMO_WORKSPACE = "Demo Agency"
DEMO_CONNECTIONS = [
    # (account id, name, currency, time zone, frequency)
    ("demo-1001", "Acme Shoes (Demo)", "USD", "America/New_York", SyncFrequency.REALTIME),
    ("demo-1002", "Bluebird Coffee (Demo)", "EUR", "Europe/Berlin", SyncFrequency.REALTIME),
    ("demo-1003", "Cedar Home Goods (Demo)", "USD", "America/Los_Angeles", SyncFrequency.EVERY_30_MIN),
    ("demo-1004", "Dune Outdoor (Demo)", "GBP", "Europe/London", SyncFrequency.HOURLY),
    ("demo-1005", "Echo Fitness (Demo)", "AUD", "Australia/Sydney", SyncFrequency.DAILY),
    ("demo-1006", "Fjord Travel (Demo)", "NOK", "Europe/Oslo", SyncFrequency.MANUAL),
]


class Command(BaseCommand):
    help = "Create the demo user (demo / demo), the 'Demo Agency' workspace and six demo connections."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo")

    def handle(self, *args, username: str, password: str, **options):
        User = get_user_model()
        with transaction.atomic():
            user, created_user = User.objects.get_or_create(username=username, defaults={"is_staff": True})
            if created_user:
                user.set_password(password)
                # Staff, so the demo login can open the admin too.
                user.save(update_fields=["password"])
            # The user's own demo workspace: found through their membership, or created with it.
            workspace = Workspace.objects.filter(name=DEMO_WORKSPACE, memberships__user=user).first()
            if workspace is None:
                workspace = workspace_create(name=DEMO_WORKSPACE, owner=user)
            created = 0
            for account_id, name, currency, tz, frequency in DEMO_CONNECTIONS:
                exists = Connection.objects.filter(
                    workspace=workspace, provider=Provider.DEMO, external_account_id=account_id
                ).exists()
                if not exists:
                    connection_create(
                        workspace=workspace,
                        provider=Provider.DEMO,
                        external_account_id=account_id,
                        name=name,
                        currency=currency,
                        timezone_name=tz,
                        sync_frequency=frequency,
                    )
                    created += 1
        if created_user:
            # The admin only lets staff in; the demo user may look at everything in it.
            User.objects.filter(pk=user.pk).update(is_superuser=True)
        self.stdout.write(
            f"Demo data ready: user {username!r}, workspace {DEMO_WORKSPACE!r}, "
            f"{created} connection(s) created, {len(DEMO_CONNECTIONS) - created} already there."
        )
