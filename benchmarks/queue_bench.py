"""Order and waiting times of 10 + 1 studies with one worker: the fair queue against plain FIFO.

    python benchmarks/queue_bench.py [--batch 10] [--json OUT]

User A uploads a batch of `--batch` studies, then user B uploads one. The real queue code
(`retrieval.pipeline.enqueue`: admission, `study_finish` and its hook; `progress`: stage times,
position and estimate) runs on a fresh SQLite database; the broker and the worker are
simulated in this process so that the run takes seconds: the broker is a FIFO list, and one
worker at concurrency 1 takes its messages in order, each stage counting (on a simulated clock)
the time measured for the 64-slice A0001 series (prepare 9.9, embed 12.1, retrieve 2.2,
explain 6.4 s; only the stages of a run's chain, `enqueue.STAGES`, count). As with a Celery
chain, a stage's end puts the next stage's message at the back of the queue. Three warm-up
runs with those stage times give the estimate its history.

Printed per mode (fair: ILDREVIEW_QUEUE_PER_USER=1; fifo: no per-user cap, as before): the
order the runs started in, what B's and A's last study showed when uploaded (position,
estimate) against when they actually started, and when B's study and A's first and last
studies were done (simulated seconds after the uploads).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE_S = {"prepare": 9.9, "embed": 12.1, "retrieve": 2.2, "explain": 6.4}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=10, help="studies of user A")
    parser.add_argument("--json", type=Path, help="write the figures here")
    return parser.parse_args(argv)


def setup(tmp: Path) -> None:
    os.environ.update(
        {
            "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
            "MEDIA_ROOT": str(tmp / "media"),
            "ILDREVIEW_VAR_DIR": str(tmp / "var"),
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "DEBUG": "true",
            "LOG_LEVEL": "ERROR",
        }
    )
    os.environ["DJANGO_SETTINGS_MODULE"] = "ildreview.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


class Simulation:
    """A FIFO broker and one worker over the real job rows."""

    def __init__(self):
        from retrieval.pipeline import enqueue

        self.broker: list[tuple[int, str, int]] = []  # (study id, run id, stage index)
        self.clock = 0.0  # simulated seconds
        self.started: dict[int, float] = {}
        self.done_at: dict[int, float] = {}
        enqueue.run_publish = self.publish  # the on-commit callbacks look it up by name

    def publish(self, *, study_id: int, run_id: str) -> None:
        self.broker.append((study_id, run_id, 0))

    def enqueue(self, study) -> None:
        from retrieval.pipeline.enqueue import study_enqueue_processing

        study_enqueue_processing(study=study)  # autocommit: the publish runs at once

    def run_all(self) -> None:
        from retrieval.models import StudyJob
        from retrieval.pipeline import progress
        from retrieval.pipeline.enqueue import STAGES, study_finish

        while self.broker:
            study_id, run_id, index = self.broker.pop(0)
            stage = STAGES[index]
            job = StudyJob.objects.get(study_id=study_id)
            if index == 0:
                self.started[study_id] = self.clock
            progress.stage_start(job=job, stage=stage)
            self.clock += STAGE_S[stage]
            if index + 1 < len(STAGES):
                progress.stage_done(study_id=study_id, run_id=run_id)
                self.broker.append((study_id, run_id, index + 1))
            else:
                study_finish(study_id=study_id, run_id=run_id)
                self.done_at[study_id] = self.clock


def run_mode(*, mode: str, batch: int) -> dict:
    from django.conf import settings

    from cases.models import Study
    from retrieval.models import StudyJob
    from retrieval.pipeline.enqueue import STAGES
    from retrieval.pipeline.progress import study_queue_get
    from retrieval.pipeline.synthetic import synthetic_study_create
    from tests.factories import UserFactory

    Study.objects.all().delete()
    settings.ILDREVIEW_QUEUE_PER_USER = 1 if mode == "fair" else 10_000
    sim = Simulation()
    warm = UserFactory(username=f"warm-{mode}", role="Clinician")
    for _ in range(3):
        sim.enqueue(synthetic_study_create(uploaded_by=warm, slices=1, size=16))
    sim.run_all()
    # The measured stage times as their history, not this simulation's database time.
    StudyJob.objects.update(stage_seconds={stage: STAGE_S[stage] for stage in STAGES})

    a_user = UserFactory(username=f"a-{mode}", role="Clinician")
    b_user = UserFactory(username=f"b-{mode}", role="Clinician")
    sim.started.clear()
    sim.clock = 0.0
    a = []
    for _ in range(batch):
        a.append(synthetic_study_create(uploaded_by=a_user, slices=1, size=16))
        sim.enqueue(a[-1])
    b = synthetic_study_create(uploaded_by=b_user, slices=1, size=16)
    sim.enqueue(b)
    seen = {s.pk: study_queue_get(study_id=s.pk) for s in (b, a[-1])}
    sim.run_all()
    names = {s.pk: f"A{n + 1}" for n, s in enumerate(a)} | {b.pk: "B1"}
    return {
        "mode": mode,
        "start_order": [names[pk] for pk in sorted(sim.started, key=sim.started.get)],
        "at_upload": {
            names[pk]: {
                "shown": state.text if state else "running",
                "started_after_s": round(sim.started[pk], 1),
            }
            for pk, state in seen.items()
        },
        "b_done_s": round(sim.done_at[b.pk], 1),
        "a_first_done_s": round(sim.done_at[a[0].pk], 1),
        "a_last_done_s": round(max(sim.done_at[s.pk] for s in a), 1),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ildreview-queue-"))
    try:
        setup(tmp)
        results = [run_mode(mode=m, batch=args.batch) for m in ("fair", "fifo")]
    finally:
        from django.db import connections

        connections.close_all()
        shutil.rmtree(tmp, ignore_errors=True)
    from retrieval.pipeline.enqueue import STAGES

    total = sum(STAGE_S[stage] for stage in STAGES)
    print(
        f"{args.batch} studies of user A, then 1 of user B; one worker, concurrency 1; "
        f"stages {'+'.join(STAGES)} = {total:.1f} s per study (simulated clock)"
    )
    for r in results:
        print(f"\n[{r['mode']}] runs started in order: {' '.join(r['start_order'])}")
        for name, seen in r["at_upload"].items():
            print(
                f"  {name} at upload showed: {seen['shown']}; "
                f"started after {seen['started_after_s']} s"
            )
        print(
            f"  B done after {r['b_done_s']} s; A's first after {r['a_first_done_s']} s, "
            f"A's last after {r['a_last_done_s']} s"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
