"""Time one upload through the REST API of a running server: upload, first results, all CAMs.

Run README command 1 (`make run`: one worker, embedded broker), then for example

    python benchmarks/api_upload_timing.py PATH/TO/A0001/series-2-5mm

It logs in with a token (demo clinician by default), uploads every file of the folder in one
request, then polls the study's results until they exist ("first results") and until every
similar case has both CAM overlays ("all CAMs"), printing seconds since the upload started.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of one DICOM series")
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    parser.add_argument("--username", default="clinician")
    parser.add_argument("--password", default="ildreview-demo")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    token = requests.post(
        f"{args.base}/api/auth/token/",
        data={"username": args.username, "password": args.password},
        timeout=30,
    ).json()["token"]
    headers = {"Authorization": f"Token {token}"}
    files = [
        ("files", (p.name, p.read_bytes(), "application/dicom"))
        for p in sorted(args.folder.iterdir())
        if p.is_file()
    ]
    start = time.monotonic()
    response = requests.post(f"{args.base}/api/studies/", files=files, headers=headers, timeout=300)
    print(f"upload: HTTP {response.status_code} after {time.monotonic() - start:.1f} s")
    if response.status_code != 201:
        print(response.text[:500])
        return 1
    study_id = response.json()["studies"][0]["id"]
    first = None
    while time.monotonic() - start < args.timeout:
        answer = requests.get(
            f"{args.base}/api/studies/{study_id}/results/", headers=headers, timeout=30
        )
        if answer.status_code == 200:
            cases = answer.json()["similar_cases"]
            if first is None:
                first = time.monotonic() - start
                print(f"first results: {first:.1f} s ({len(cases)} similar cases)")
            if all(c.get("query_cam_url") and c.get("reference_cam_url") for c in cases):
                print(f"all CAMs: {time.monotonic() - start:.1f} s")
                return 0
        time.sleep(0.2)
    print("timed out")
    return 1


if __name__ == "__main__":
    sys.exit(main())
