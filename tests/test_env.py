import pytest
from django.core.exceptions import ImproperlyConfigured

from adsync.env import envbool, envfloat, envint, envlist

pytestmark = pytest.mark.embedded


def test_envbool_reads_the_usual_spellings(monkeypatch):
    monkeypatch.setenv("FLAG", "Yes")
    assert envbool("FLAG", False) is True
    monkeypatch.setenv("FLAG", "0")
    assert envbool("FLAG", True) is False
    monkeypatch.delenv("FLAG")
    assert envbool("FLAG", True) is True


def test_envbool_rejects_anything_else(monkeypatch):
    monkeypatch.setenv("FLAG", "sure")
    with pytest.raises(ImproperlyConfigured, match="FLAG='sure' is not a boolean"):
        envbool("FLAG", False)


def test_envint_rejects_garbage_and_values_below_the_minimum(monkeypatch):
    monkeypatch.setenv("N", "12x")
    with pytest.raises(ImproperlyConfigured, match="N='12x' is not a whole number"):
        envint("N", 1)
    monkeypatch.setenv("N", "3")
    with pytest.raises(ImproperlyConfigured, match="N=3 is below the minimum of 10"):
        envint("N", 20, minimum=10)
    monkeypatch.setenv("N", "")
    assert envint("N", 20) == 20


def test_envfloat(monkeypatch):
    monkeypatch.setenv("F", "0.5")
    assert envfloat("F", 1.0) == 0.5
    monkeypatch.setenv("F", "fast")
    with pytest.raises(ImproperlyConfigured, match="F='fast' is not a number"):
        envfloat("F", 1.0)


def test_envlist(monkeypatch):
    monkeypatch.setenv("L", "a, b,,c ")
    assert envlist("L") == ["a", "b", "c"]
    monkeypatch.delenv("L")
    assert envlist("L", ["x"]) == ["x"]


def test_settings_refuse_a_visibility_timeout_shorter_than_the_task_limit():
    import os
    import subprocess
    import sys

    env = dict(os.environ, SYNC_TASK_TIME_LIMIT="120", BROKER_VISIBILITY_TIMEOUT="100")
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=dict(env, DJANGO_SETTINGS_MODULE="adsync.settings"),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "BROKER_VISIBILITY_TIMEOUT must be longer than SYNC_TASK_TIME_LIMIT" in result.stderr
