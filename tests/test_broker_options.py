"""The embedded broker's options: every folder under the given one, and a short poll."""

from __future__ import annotations

from pathlib import Path

from ildreview.broker import FOLDER_OPTIONS, filesystem_transport_options


def test_embedded_broker_polls_for_new_messages_well_under_kombus_one_second_default(tmp_path):
    options = filesystem_transport_options(folder=tmp_path)
    assert 0 < options["polling_interval"] < 1.0


def test_embedded_broker_keeps_every_folder_under_the_given_one(tmp_path):
    options = filesystem_transport_options(folder=tmp_path)
    for key in FOLDER_OPTIONS:
        assert Path(options[key]).is_relative_to(tmp_path)
