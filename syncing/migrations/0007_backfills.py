# Backfills (issue 13, point 4): re-sync a chosen date range of a connection, chunk by chunk.

import uuid

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('connections', '0010_backfill_trigger'),
        ('syncing', '0006_change_ledger'),
    ]

    operations = [
        migrations.AlterField(
            model_name='syncrun',
            name='trigger',
            field=models.CharField(choices=[('manual', 'Manual'), ('scheduled', 'Scheduled'), ('backfill', 'Backfill')], max_length=16),
        ),
        migrations.CreateModel(
            name='Backfill',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('public_id', models.UUIDField(default=uuid.uuid4, editable=False)),
                ('since', models.DateField()),
                ('until', models.DateField()),
                ('status', models.CharField(choices=[('pending', 'Pending'), ('running', 'Running'), ('done', 'Done'), ('cancelled', 'Cancelled'), ('failed', 'Failed')], default='pending', max_length=16)),
                ('cursor', models.DateField()),
                ('days_total', models.PositiveIntegerField()),
                ('days_done', models.PositiveIntegerField(default=0)),
                ('not_before', models.DateTimeField()),
                ('failures', models.PositiveSmallIntegerField(default=0)),
                ('last_error', models.TextField(blank=True, default='')),
                ('created_at', models.DateTimeField()),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('connection', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='backfills', to='connections.connection')),
            ],
            options={
                'db_table': 'backfills',
                'ordering': ['-created_at', '-id'],
                'indexes': [
                    models.Index(condition=models.Q(('status__in', ('pending', 'running'))), fields=['not_before'], name='syncing_backfill_ready_idx'),
                    models.Index(fields=['connection', '-created_at'], name='syncing_backfill_conn_idx'),
                ],
                'constraints': [
                    models.UniqueConstraint(fields=('public_id',), name='syncing_backfill_unique_public_id'),
                    models.UniqueConstraint(condition=models.Q(('status__in', ('pending', 'running'))), fields=('connection',), name='syncing_backfill_one_active_per_connection'),
                    models.CheckConstraint(condition=models.Q(('since__lte', models.F('until'))), name='syncing_backfill_since_not_after_until'),
                    models.CheckConstraint(condition=models.Q(('cursor__lte', models.F('until'))), name='syncing_backfill_cursor_within_range'),
                    models.CheckConstraint(condition=models.Q(('days_done__lte', models.F('days_total'))), name='syncing_backfill_done_within_total'),
                    models.CheckConstraint(condition=models.Q(('status__in', ['pending', 'running', 'done', 'cancelled', 'failed'])), name='syncing_backfill_status_valid'),
                    models.CheckConstraint(condition=models.Q(models.Q(('finished_at__isnull', True), ('status__in', ('pending', 'running'))), models.Q(models.Q(('status__in', ('pending', 'running')), _negated=True), ('finished_at__isnull', False)), _connector='OR'), name='syncing_backfill_finished_when_over'),
                ],
            },
        ),
    ]
