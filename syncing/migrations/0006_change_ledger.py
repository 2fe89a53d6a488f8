# The change ledger (issue 13): sync_changes, and a public id for each run to name it in URLs.

import uuid

import django.db.models.deletion
from django.db import migrations, models


def runs_give_public_ids(apps, schema_editor):
    # AddField with default=uuid4 would give every existing run the same value (Django calls the
    # default once), which the unique constraint then refuses; one UPDATE gives each its own.
    # SQLite stores a UUIDField as 32 hex digits, as syncing.services.NewJobId writes them.
    postgresql = schema_editor.connection.vendor == "postgresql"
    random_uuid = "gen_random_uuid()" if postgresql else "lower(hex(randomblob(16)))"
    schema_editor.execute(f"UPDATE sync_runs SET public_id = {random_uuid} WHERE public_id IS NULL")


class Migration(migrations.Migration):

    dependencies = [
        ('syncing', '0005_platform_scopes'),
    ]

    operations = [
        migrations.AddField(
            model_name='syncrun',
            name='public_id',
            field=models.UUIDField(editable=False, null=True),
        ),
        migrations.RunPython(runs_give_public_ids, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='syncrun',
            name='public_id',
            field=models.UUIDField(default=uuid.uuid4, editable=False),
        ),
        migrations.AddConstraint(
            model_name='syncrun',
            constraint=models.UniqueConstraint(fields=('public_id',), name='syncing_syncrun_unique_public_id'),
        ),
        migrations.CreateModel(
            name='SyncChange',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('run', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='changes', to='syncing.syncrun')),
                ('level', models.CharField(choices=[('campaign', 'Campaign'), ('adset', 'Ad set'), ('ad', 'Ad')], max_length=16)),
                ('entity_id', models.CharField(max_length=64)),
                ('entity_name', models.CharField(blank=True, default='', max_length=400)),
                ('date', models.DateField()),
                ('added', models.BooleanField()),
                ('restated', models.BooleanField()),
                ('diff', models.JSONField()),
            ],
            options={
                'db_table': 'sync_changes',
                'constraints': [models.UniqueConstraint(fields=('run', 'date', 'level', 'entity_id'), name='syncing_syncchange_unique_row')],
            },
        ),
    ]
