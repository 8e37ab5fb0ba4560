"""Peak memory of reading hostile DICOM files (issue 7: decompression bombs).

    python benchmarks/hostile_dicom_memory.py [--limit-mb 300] [--unprotected]

Each file is read by `cases.dicom.reading.ct_instance_read` with the default resource limits
(`ReadLimits()`, the same defaults as the ILDREVIEW_MAX_DICOM_FILE_BYTES and
ILDREVIEW_MAX_IMAGE_BYTES settings) in a fresh Python process, which then reports its own peak
resident set (VmHWM from /proc/self/status): interpreter, numpy, pydicom and the decoders
included, so the figure is what one upload worker would reach. "imports only" is that floor.

Files: the two from the issue (an RLE Lossless frame of 8192 x 8192 in 2 MiB; a deflated DICOM
of 0.5 MiB inflating to 512 MiB), a JPEG 2000 frame whose codestream declares 60000 x 60000,
a native file whose header claims 8192 x 8192, and for comparison the largest image the
defaults accept (2048 x 2048 x 16 bits), native and RLE. With --unprotected the hostile files
are also read with the limits lifted, to show what they cost without them (uses ~1 GB).

Exit status 1 when a file's peak is over --limit-mb.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys
from pathlib import Path
from cases.dicom import DicomInputError
from cases.dicom.reading import ReadLimits, ct_instance_read

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

path, unprotected = sys.argv[1], sys.argv[2] == "1"
limits = ReadLimits(max_file_bytes=2**40, max_image_bytes=2**40) if unprotected else ReadLimits()
outcome = "imports only"
if path != "-":
    try:
        inst = ct_instance_read(path=Path(path), limits=limits)
        outcome = f"accepted ({inst.rows}x{inst.columns})"
    except DicomInputError as exc:
        outcome = "refused: " + exc.reason
print(json.dumps({"outcome": outcome, "peak_mb": peak_mb()}))
"""


def _files(folder: Path) -> list[tuple[str, Path, bool]]:
    from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

    from tests.dicomgen import (
        chest_phantom,
        ct_dataset,
        dataset_bytes,
        deflate_bomb_bytes,
        rle_bomb_bytes,
    )

    def write(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    def ct(size: int, **kwargs):
        return ct_dataset(
            hu=chest_phantom(size=size),
            study_uid=generate_uid(),
            series_uid=generate_uid(),
            **kwargs,
        )

    j2k = ct(64, transfer_syntax=JPEG2000Lossless)
    from pydicom.encaps import encapsulate, generate_frames

    frame = bytearray(next(generate_frames(j2k.PixelData, number_of_frames=1)))
    siz = frame.find(b"\xff\x4f\xff\x51")
    frame[siz + 8 : siz + 16] = (60000).to_bytes(4, "big") * 2
    j2k.PixelData = encapsulate([bytes(frame)])
    native_claim = ct(16)
    native_claim.Rows = native_claim.Columns = 8192
    return [
        ("rle 8192x8192 (issue)", write("rle.dcm", rle_bomb_bytes(size=8192)), True),
        (
            "deflate to 512 MiB (issue)",
            write("deflate.dcm", deflate_bomb_bytes(inflated=512 * 1024 * 1024)),
            True,
        ),
        ("j2k declaring 60000x60000", write("j2k.dcm", dataset_bytes(j2k)), True),
        ("native header 8192x8192", write("claim.dcm", dataset_bytes(native_claim)), True),
        ("largest accepted, native 2048x2048", write("n2048.dcm", dataset_bytes(ct(2048))), False),
        (
            "largest accepted, RLE 2048x2048",
            write("r2048.dcm", dataset_bytes(ct(2048, transfer_syntax=RLELossless))),
            False,
        ),
    ]


def _measure(path: Path | str, unprotected: bool) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), "1" if unprotected else "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        return {"outcome": f"crashed ({proc.returncode}): {proc.stderr[-200:]}", "peak_mb": -1}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-mb", type=float, default=300.0)
    parser.add_argument("--unprotected", action="store_true")
    args = parser.parse_args()
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        files = _files(Path(tmp))
        rows = [("imports only", "-", 0, _measure("-", False))]
        for label, path, hostile in files:
            rows.append((label, path, path.stat().st_size, _measure(path, False)))
            if args.unprotected and hostile:
                rows.append(
                    (label + " [no limits]", path, path.stat().st_size, _measure(path, True))
                )
    print(f"{'file':40} {'on disk':>10} {'peak RSS':>9}  outcome")
    for label, _path, size, result in rows:
        print(f"{label:40} {size / 2**20:8.2f}MB {result['peak_mb']:7.0f}MB  {result['outcome']}")
        if "[no limits]" not in label:
            worst = max(worst, result["peak_mb"])
    print(f"worst peak with limits: {worst:.0f} MB (limit {args.limit_mb:.0f} MB)")
    return 0 if worst <= args.limit_mb else 1


if __name__ == "__main__":
    sys.exit(main())
