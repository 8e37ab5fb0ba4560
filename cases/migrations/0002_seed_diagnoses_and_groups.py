"""Seed the diagnosis taxonomy and the three role groups with their permissions."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

DIAGNOSES = [
    ("ass-ild", "ASS-ILD", "Anti-synthetase syndrome associated ILD"),
    ("ipf-ild", "IPF-ILD", "Idiopathic pulmonary fibrosis"),
    ("dm-rp-ild", "DM/RP-ILD (anti-MDA5)", "Dermatomyositis rapidly progressive ILD, anti-MDA5"),
    ("normal", "Normal", "No interstitial lung disease"),
    ("other", "Other", "Other finding"),
]

# Model-level permissions each group gets; object-level rules (a Clinician sees only own
# studies) are enforced by selectors and views.
GROUP_PERMS = {
    "Clinician": ["view_study", "add_study", "view_series", "view_slice", "view_diagnosis",
                  "view_referencecase", "view_patient"],
    "Expert": ["view_study", "add_study", "change_study", "view_series", "view_slice",
               "view_diagnosis", "view_patient", "view_referencecase", "add_referencecase",
               "change_referencecase", "view_expertlabel", "add_expertlabel"],
    "Admin": None,  # every permission of the cases and retrieval apps
}


def seed(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = None
    Diagnosis = apps.get_model("cases", "Diagnosis")
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for code, name, description in DIAGNOSES:
        Diagnosis.objects.get_or_create(code=code, defaults={"name": name, "description": description})
    for group_name, codenames in GROUP_PERMS.items():
        group, _ = Group.objects.get_or_create(name=group_name)
        if codenames is None:
            perms = Permission.objects.filter(content_type__app_label__in=["cases", "retrieval"])
        else:
            perms = Permission.objects.filter(
                content_type__app_label="cases", codename__in=codenames
            )
        group.permissions.add(*perms)


class Migration(migrations.Migration):
    dependencies = [
        ("cases", "0001_initial"),
        ("retrieval", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
