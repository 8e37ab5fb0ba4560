"""The embedded broker: kombu's filesystem transport, every folder of it under one folder.

Settings name the folders (`filesystem_transport_options`); nothing creates them at settings
import. `ildreview/celery.py` calls `filesystem_folders_create` when a worker starts and before
each message is published (the web process publishes too), so a fresh var folder just works.
No Django here: settings import this module.
"""

from __future__ import annotations

from pathlib import Path

POLLING_INTERVAL_S = 0.1

# The transport's folder options; without `control_folder` kombu writes its exchange tables
# into `./control` of the working directory.
FOLDER_OPTIONS = ("data_folder_in", "data_folder_out", "processed_folder", "control_folder")


def filesystem_transport_options(*, folder: Path) -> dict:
    """Options of kombu's filesystem transport under `folder`: messages are written to and read
    from `in/` (publisher and workers share one machine), `processed/` and the exchange tables
    in `control/`."""
    return {
        "data_folder_in": str(folder / "in"),
        "data_folder_out": str(folder / "in"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
        # How long an idle worker sleeps before looking for a new message file (kombu's default
        # is 1 s). Every stage of a study and every CAM is one message, so the default added
        # about a second per hop to the time until results; listing one local folder ten times
        # a second costs nothing measurable.
        "polling_interval": POLLING_INTERVAL_S,
    }


def filesystem_folders_create(*, transport_options: dict) -> None:
    """Create the folders named in `transport_options` (kombu does not create them)."""
    for option in FOLDER_OPTIONS:
        if transport_options.get(option):
            Path(transport_options[option]).mkdir(parents=True, exist_ok=True)
