"""factory_boy factories shared by the tests."""

from __future__ import annotations

import io

import factory
import numpy as np
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile

from cases.models import Diagnosis, ExpertLabel, Patient, ReferenceCase, Series, Slice, Study


class UserFactory(factory.django.DjangoModelFactory):
    """A user; pass `role="Clinician"|"Expert"|"Admin"` to put it in that group."""

    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", "pw-for-tests-123")

    @factory.post_generation
    def role(self, create, extracted, **kwargs):
        if extracted:
            self.groups.add(Group.objects.get(name=extracted))
            if extracted == "Admin":
                self.is_staff = True
                self.is_superuser = True
        if create:
            self.save()


class PatientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Patient

    pseudonym = factory.Sequence(lambda n: f"{n:064x}")
    display_id = factory.Sequence(lambda n: f"P{n:06d}")
    sex = "F"


class StudyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Study

    patient = factory.SubFactory(PatientFactory)
    study_instance_uid = factory.Sequence(lambda n: f"1.2.826.0.1.3680043.10.1.{n}")
    description = "CT chest"
    uploaded_by = factory.SubFactory(UserFactory, role="Clinician")


class SeriesFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Series

    study = factory.SubFactory(StudyFactory)
    series_instance_uid = factory.Sequence(lambda n: f"1.2.826.0.1.3680043.10.2.{n}")
    series_number = 1
    description = "Lung 1.0 B70f"
    rows = 64
    columns = 64


def hu_npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array.astype(np.int16), allow_pickle=False)
    return buf.getvalue()


class SliceFactory(factory.django.DjangoModelFactory):
    """A slice whose pixels are a small HU array saved as .npy (default: uniform air)."""

    class Meta:
        model = Slice

    series = factory.SubFactory(SeriesFactory)
    sop_instance_uid = factory.Sequence(lambda n: f"1.2.826.0.1.3680043.10.3.{n}")
    index = factory.Sequence(lambda n: n)
    z_position = factory.LazyAttribute(lambda o: float(o.index) * 5.0)
    pixels = factory.LazyFunction(
        lambda: ContentFile(hu_npy_bytes(np.full((64, 64), -1000)), name="slice.npy")
    )
    hu_min = -1000.0
    hu_max = -1000.0


def diagnosis(name: str) -> Diagnosis:
    """A seeded diagnosis by name (the data migration creates them)."""
    return Diagnosis.objects.get(name=name)


class ExpertLabelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ExpertLabel

    study = factory.SubFactory(StudyFactory)
    diagnosis = factory.LazyFunction(lambda: diagnosis("Normal"))
    expert = factory.SubFactory(UserFactory, role="Expert")


class ReferenceCaseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ReferenceCase

    study = factory.SubFactory(StudyFactory)
    diagnosis = factory.LazyFunction(lambda: diagnosis("Normal"))
    proposed_by = factory.SubFactory(UserFactory, role="Expert")
