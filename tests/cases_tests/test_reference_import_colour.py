"""The reference import shows the decoder's warning when a colour image is turned grey."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from django.core.management import call_command
from PIL import Image

from cases.models import ReferenceCase

pytestmark = pytest.mark.django_db


def test_import_reference_notes_a_colour_image_converted_to_grey_and_not_a_grey_one(
    tmp_path, capsys, admin_user
):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    colour = np.stack([grey, grey, np.zeros_like(grey)], axis=-1)  # a colour overlay
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "grey-as-rgb.png")
    Image.fromarray(colour).save(tmp_path / "overlay.png")
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient_id"])
        writer.writerow(["grey-as-rgb.png", "Normal", "p1"])
        writer.writerow(["overlay.png", "Normal", "p2"])
    call_command("import_reference", str(tmp_path / "manifest.csv"), verbosity=0)
    out = capsys.readouterr().out
    assert "overlay.png" in out and "converted to grey" in out
    assert "grey-as-rgb.png" not in out
    assert ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED).count() == 2
