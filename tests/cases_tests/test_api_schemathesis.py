"""Schemathesis against the live API: no server errors, and every response matches the schema.

A real server (the WSGI application on a socket, in a thread) serves the API; schemathesis
loads the schema the server itself publishes at /api/schema/ and runs every phase (examples,
coverage, fuzzing, stateful) with every check, once per role, each with that user's token. The
data seeded below gives the GET-by-id operations something to find.
"""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import import_module
from urllib.parse import urlsplit

import pytest
import schemathesis
from django.core.files.base import ContentFile
from rest_framework.authtoken.models import Token
from schemathesis.engine import events, from_schema

from cases.models import Study
from tests.factories import (
    ExpertLabelFactory,
    ReferenceCaseFactory,
    SeriesFactory,
    SliceFactory,
    StudyFactory,
    UserFactory,
    diagnosis,
)
from tests.wsgi_server import site_server

pytestmark = pytest.mark.slow

# Per operation and phase; keeps the whole run (three roles) to a couple of minutes on 2 cores.
MAX_EXAMPLES = 6
SEED = 20240607


@dataclass
class RunReport:
    operations: set[str] = field(default_factory=set)
    cases: int = 0
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Operation label -> response status -> count.
    statuses: dict[str, Counter] = field(default_factory=dict)


def migration_data_ensure() -> None:
    """What the data migration seeds (diagnoses, role groups and their permissions), created
    again when a transactional test's flush removed it."""
    from django.contrib.auth.models import Group, Permission

    from cases.models import Diagnosis

    seeded = import_module("cases.migrations.0002_seed_diagnoses_and_groups")
    for code, name, description in seeded.DIAGNOSES:
        Diagnosis.objects.get_or_create(
            code=code, defaults={"name": name, "description": description}
        )
    for group_name, codenames in seeded.GROUP_PERMS.items():
        group, _ = Group.objects.get_or_create(name=group_name)
        perms = Permission.objects.filter(content_type__app_label__in=["cases", "retrieval"])
        if codenames is not None:
            perms = perms.filter(content_type__app_label="cases", codename__in=codenames)
        group.permissions.add(*perms)


@pytest.fixture
def migration_data_kept(django_db_blocker):
    """A live server needs a transactional database, whose teardown flushes every table,
    data-migration rows included. Set up before `transactional_db`, this is torn down after
    that flush and puts those rows back for the tests that follow."""
    yield
    with django_db_blocker.unblock():
        migration_data_ensure()


@pytest.fixture
def api_server(migration_data_kept, transactional_db) -> str:
    """The site's WSGI application behind a real socket in a thread; its base URL."""
    with site_server() as port:
        yield f"http://127.0.0.1:{port}"


def seed_data():
    """Users of each role with tokens, studies in several states, a result, labels and
    reference cases in every state, so that id-based operations have objects to hit."""
    from retrieval.models import ModelVersion, SimilarCase, StudyResult

    clinician = UserFactory(username="st-clinician", role="Clinician")
    expert = UserFactory(username="st-expert", role="Expert")
    second_expert = UserFactory(username="st-expert2", role="Expert")
    admin = UserFactory(username="st-admin", role="Admin")

    ready = StudyFactory(uploaded_by=clinician, status=Study.Status.READY_FOR_REVIEW)
    StudyFactory(uploaded_by=clinician, status=Study.Status.PROCESSING, progress_stage="embed")
    StudyFactory(uploaded_by=clinician, status=Study.Status.FAILED, status_message="no slices")
    query_slices = SliceFactory.create_batch(2, series=SeriesFactory(study=ready))
    ExpertLabelFactory(study=ready, expert=expert, diagnosis=diagnosis("IPF-ILD"))
    references = [
        ReferenceCaseFactory(state=state, proposed_by=expert, diagnosis=diagnosis(name))
        for state, name in (
            ("approved", "IPF-ILD"),
            ("proposed", "Normal"),
            ("rejected", "Normal"),
            ("retired", "IPF-ILD"),
        )
    ]
    ref_slice = SliceFactory(series=SeriesFactory(study=references[0].study))
    version = ModelVersion.objects.create(
        name="v-schemathesis",
        artefact_dir="/nonexistent",
        backbone="efficientnet_lite0",
        is_active=True,
    )
    result = StudyResult.objects.create(
        study=ready,
        model_version=version,
        suggested_diagnosis=diagnosis("IPF-ILD"),
        votes={"ipf-ild": 1.0},
        key_slice=query_slices[0],
        query_slice_count=2,
    )
    case = SimilarCase(
        result=result,
        rank=1,
        reference_case=references[0],
        score=0.9,
        n_hits=2,
        query_slice=query_slices[0],
        reference_slice=ref_slice,
    )
    case.query_cam.save("q.png", ContentFile(b"\x89PNG cam"), save=False)
    case.save()
    return {
        "clinician": clinician,
        "expert": expert,
        "admin": admin,
        "second_expert": second_expert,
    }


# Operations that refuse some schema-valid requests with 400 for reasons no schema can state:
# the upload needs files a DICOM reader accepts, the token endpoint right credentials, and the
# review writes the workflow's state (a case proposed once, approved by a second expert...).
REFUSED_BY_CONTENT_OR_STATE = [
    "POST /api/studies/",
    "POST /api/auth/token/",
    "POST /api/studies/{id}/labels/",
    "POST /api/reference-cases/",
    "POST /api/reference-cases/{id}/approve/",
    "POST /api/reference-cases/{id}/reject/",
    "POST /api/reference-cases/{id}/retire/",
]


def run_schemathesis(base_url: str, token: str) -> RunReport:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": base_url,
            "workers": 1,
            # Nothing cached between runs (nor written into the checkout).
            "cache": {"enabled": False},
            "auth": {"openapi": {"tokenAuth": {"api_key": f"Token {token}"}}},
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "database": "none",
                # DRF refuses NUL in every text field (400); OpenAPI has no way to say so
                # short of a pattern on every string.
                "allow-x00": False,
            },
            # Every check, with its default expectations but for the operations above.
            "checks": {"enabled": True},
            "operations": [
                {
                    "include-name": REFUSED_BY_CONTENT_OR_STATE,
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "3xx", "400", "403", "404", "409", "429"]
                        }
                    },
                }
            ],
            "phases": {"stateful": {"max-steps": 12}},
        }
    )
    schema = schemathesis.openapi.from_url(
        f"{base_url}/api/schema/?format=json",
        config=config,
        headers={"Authorization": f"Token {token}"},
    )
    report = RunReport()
    seen_failures = set()
    started = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.is_test_scenario:
            recorder = event.recorder
            report.cases += len(recorder.cases)
            for case_id, node in recorder.cases.items():
                label = node.value.operation.label
                report.operations.add(label)
                interaction = recorder.interactions.get(case_id)
                if interaction is not None and interaction.response is not None:
                    code = interaction.response.status_code
                    report.statuses.setdefault(label, Counter())[code] += 1
            for checks in recorder.checks.values():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    key = (failure.operation, check.name, failure.title, failure.message)
                    if key in seen_failures:
                        continue
                    seen_failures.add(key)
                    report.failures.append(
                        f"{failure.operation} [{check.name}] {failure.title}: "
                        f"{failure.message}\n{check.failure_info.code_sample}"
                    )
        elif isinstance(event, events.NonFatalError):
            report.errors.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            report.failures.extend(str(f) for f in event.failures)
    report.seconds = time.monotonic() - started
    return report


def post_over_socket(base_url: str, path: str, body: bytes) -> tuple[int, bytes]:
    host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_api_conforms_to_its_schema_for_every_role(api_server, capsys):
    # An earlier transactional test may have flushed the data migration's rows.
    migration_data_ensure()
    # The anonymous token endpoint, over the socket: 100,000 nested arrays are a 400, not the
    # RecursionError (500) they were.
    status, body = post_over_socket(api_server, "/api/auth/token/", b"[" * 100_000)
    assert (status, json.loads(body)) == (
        400,
        {"detail": "JSON parse error - nested deeper than 64 levels."},
    )
    users = seed_data()
    totals = RunReport()
    for role in ("clinician", "expert", "admin"):
        token = Token.objects.create(user=users[role]).key
        report = run_schemathesis(api_server, token)
        totals.operations |= report.operations
        totals.cases += report.cases
        totals.failures += [f"as {role}: {f}" for f in report.failures]
        totals.errors += [f"as {role}: {e}" for e in report.errors]
        totals.seconds += report.seconds
        for label, counts in report.statuses.items():
            totals.statuses.setdefault(label, Counter()).update(counts)
        with capsys.disabled():
            print(
                f"\nschemathesis as {role}: {len(report.operations)} operations, "
                f"{report.cases} cases, {len(report.failures)} failures, "
                f"{report.seconds:.0f} s"
            )
    with capsys.disabled():
        for label in sorted(totals.statuses):
            print(f"  {label}: {dict(sorted(totals.statuses[label].items()))}")
        print(
            f"schemathesis total: {len(totals.operations)} operations, {totals.cases} cases, "
            f"{len(totals.failures)} failures, {totals.seconds:.0f} s"
        )
    # Guards against a run that silently tests nothing, or only ever hits 404s.
    assert len(totals.operations) >= 17
    assert totals.cases >= 300
    by_id = [label for label in totals.operations if label.startswith("GET") and "{id}" in label]
    assert len(by_id) >= 7
    missed = [
        label
        for label in by_id
        if not any(200 <= code < 300 for code in totals.statuses.get(label, {}))
    ]
    assert missed == []
    assert totals.errors == []
    assert totals.failures == [], "\n\n".join(totals.failures)
