# The "backfill" trigger (issue 13, point 4): a connection's job may be a chunk of a backfill.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('connections', '0009_cancel'),
    ]

    operations = [
        migrations.AlterField(
            model_name='connection',
            name='queued_trigger',
            field=models.CharField(blank=True, choices=[('manual', 'Manual'), ('scheduled', 'Scheduled'), ('backfill', 'Backfill')], default='', max_length=16),
        ),
    ]
