"""Every model change has its migration: a change without one would pass the tests (they build
the schema from the models' migrations) and fail on a real database later."""

from io import StringIO

import pytest
from django.core.management import call_command


@pytest.mark.django_db
@pytest.mark.embedded
def test_no_model_change_is_missing_its_migration():
    out = StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exit_:
        pytest.fail(f"makemigrations would write a migration (exit {exit_.code}):\n{out.getvalue()}")
