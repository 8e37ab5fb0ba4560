from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("retrieval", "0003_job_queue"),
    ]

    operations = [
        migrations.AddField(
            model_name="modelversion",
            name="index_info",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
