from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from connections.services import api_token_issue


class Command(BaseCommand):
    help = "Issue an API token for a user. The key is printed once and never stored; revoke it in the admin."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label to tell tokens apart, e.g. 'reporting script'.")

    def handle(self, *args, username: str, name: str, **options):
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: username})
        except User.DoesNotExist:
            raise CommandError(f"No user named {username!r}.") from None
        token, key = api_token_issue(user=user, name=name)
        self.stderr.write(
            f"Token {token.prefix}… issued for {username}. Keep the key below secret; it is not shown again."
        )
        # The key alone on stdout, so `KEY=$(manage.py create_api_token alice)` works.
        self.stdout.write(key)
