"""Schemathesis against the app's own OpenAPI schema (the real app over ASGI, toy model).

Every operation is driven three ways, each with and without the admin token:
- schemathesis' coverage phase: deterministic boundary and mutation cases (positive and negative,
  unexpected methods included) derived from the schema;
- hypothesis fuzzing of valid requests (positive mode);
- hypothesis fuzzing of invalid requests (negative mode), where the schema has anything to break.

Each answer must pass schemathesis' checks: no 5xx, a status the operation declares, the
declared content type and body schema and headers, invalid data rejected with 4xx. On top of
those: every error body is the envelope, and the admin routes answer 401 without the token and
never 401 with it. The test counts the cases it sent (at least MIN_CASES), prints the counts per
operation, and records the total as a junit property (`fuzz_cases`).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from app_support import wait_ready
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.settings import load_settings
from tests.front_end_support import make_app

TOKEN = "fuzz-admin-token-0123456789"
AUTHS: dict[str, dict[str, str]] = {"token": {"Authorization": f"Bearer {TOKEN}"}, "none": {}}
MIN_CASES = 500
FUZZ_EXAMPLES = 25  # hypothesis examples per (operation, mode, auth)
# The routes that reach the model get more: that is where batching, padding and graphs are.
FUZZ_EXAMPLES_INFERENCE = 80
INFERENCE_PATHS = {"/infer", "/v1/embeddings"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
OPERATIONS = {
    "POST /infer",
    "POST /v1/embeddings",
    "POST /admin/prewarm",
    "GET /admin/graphs",
    "DELETE /admin/graphs",
    "GET /admin/hot-shapes",
    "GET /admin/stats",
    "GET /v1/models",
    "GET /v1/models/{model}",
}


@pytest.fixture(scope="module")
def api_schema() -> Iterator[Any]:
    # Small limits so generated payloads stay cheap; the limits are in the schema itself.
    settings = load_settings(
        model_path="toy",
        admin_token=TOKEN,
        max_batch_size=8,
        max_inputs_per_request=8,
        max_text_chars=256,
        max_queue=256,
        max_cached_graphs=8,
        capture_threshold=2,
        prewarm_ladder=False,
    )
    app: Any = make_app(settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the lifespan
    client = asgi.get_client(app)
    wait_ready(client)
    yield schema
    asgi.shutdown_lifespans()  # drains the engine and stops its worker thread


def call_and_validate(case: Any, headers: dict[str, str]) -> Any:
    """Send the case and run CHECKS; failures as one AssertionError (schemathesis raises a
    FailureGroup, a BaseExceptionGroup: neither hypothesis nor `except Exception` see it as a
    test failure)."""
    try:
        return case.call_and_validate(headers=headers, checks=CHECKS)
    except FailureGroup as group:
        raise AssertionError(str(group)) from None


def _own_checks(case: Any, response: Any, auth: str) -> None:
    """What schemathesis cannot know: the envelope and the admin auth rules."""
    status = response.status_code
    if status >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message"}, body
        assert body["error"]["code"] and body["error"]["message"], body
        assert TOKEN not in response.text
    path = case.operation.path
    if path.startswith("/admin") and case.method.upper() == case.operation.method.upper():
        if auth == "none":
            assert status in (401, 413), (status, response.text)  # 413: the size limit is first
        else:
            assert status != 401, response.text


def _operations(schema: Any) -> list[Any]:
    ops = [result.ok() for result in schema.get_all_operations()]
    return sorted(ops, key=lambda op: op.label)


def test_fuzz_the_openapi_schema(api_schema: Any, record_property: Callable[..., None]) -> None:
    ops = _operations(api_schema)
    labels = {op.label for op in ops}
    assert OPERATIONS <= labels, f"operations missing from the schema: {OPERATIONS - labels}"
    counts: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    def send(case: Any, auth: str, kind: str) -> None:
        counts[f"{case.operation.label} [{kind}, {auth}]"] += 1
        response = call_and_validate(case, AUTHS[auth])
        statuses[response.status_code] += 1
        _own_checks(case, response, auth)

    for op in ops:
        auths = ["token", "none"] if op.path.startswith("/admin") else ["token"]
        for auth in auths:
            # 1. Deterministic coverage cases (boundaries, missing/extra fields, wrong methods).
            config = api_schema.config.generation_for(operation=op, phase="coverage")
            cases = api_schema.iter_coverage_cases(
                op,
                generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                generation_config=config,
            )
            for case in cases:
                try:
                    send(case, auth, "coverage")
                except Exception as exc:  # report every operation's failures, not the first
                    failures.append(f"{op.label} coverage/{auth}: {exc}")
            # 2. Property-based fuzzing, valid and invalid data (shrunk on failure).
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if mode is GenerationMode.NEGATIVE and not _can_be_invalid(op):
                    continue  # nothing to make invalid: no body, no constrained parameter

                try:
                    _fuzz(op, mode, functools.partial(send, auth=auth, kind=mode.value))
                except Exception as exc:
                    failures.append(f"{op.label} {mode.value}/{auth}: {exc}")

    total = sum(counts.values())
    record_property("fuzz_cases", total)
    print(f"\nschemathesis: {total} cases over {len(ops)} operations; statuses {dict(statuses)}")
    for key, n in sorted(counts.items()):
        print(f"  {n:5d}  {key}")
    assert not failures, "\n\n".join(failures[:10])
    assert total >= MIN_CASES, f"only {total} cases generated"
    # The fuzzing reached the model and the admin API, not only the validation layer.
    assert statuses[200] >= 50 and statuses[422] >= 50 and statuses[401] >= 20, statuses


def _fuzz(op: Any, mode: GenerationMode, send: Callable[[Any], None]) -> None:
    @hypothesis.settings(
        max_examples=FUZZ_EXAMPLES_INFERENCE if op.path in INFERENCE_PATHS else FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        send(case)

    fuzz()


def _can_be_invalid(op: Any) -> bool:
    """A body, or a parameter other than a free string (any string is a valid model id)."""
    definition = op.definition.raw
    free_string = {"type": "string"}
    return bool(definition.get("requestBody")) or any(
        {k: v for k, v in p.get("schema", {}).items() if k != "title"} != free_string
        for p in definition.get("parameters", [])
    )


def test_the_checks_catch_a_bad_answer() -> None:
    """The harness itself: a route answering 500 or off-schema must fail these checks."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel

    class Out(BaseModel):
        n: int

    bad = FastAPI()

    @bad.get("/broken", response_model=Out)
    async def broken(mode: str = "crash") -> Any:
        if mode == "crash":
            return JSONResponse({"detail": "boom"}, status_code=500)
        return {"n": 1}

    @bad.get("/off-schema", response_model=None, responses={200: {"model": Out}})
    async def off_schema() -> Any:
        return {"n": "not an int"}

    schema = schemathesis.openapi.from_asgi("/openapi.json", bad)
    ops = {op.label: op for op in _operations(schema)}
    for label in ("GET /broken", "GET /off-schema"):
        case = ops[label].Case(query={"mode": "crash"} if label == "GET /broken" else {})
        with pytest.raises(AssertionError) as excinfo:
            call_and_validate(case, {})
        text = str(excinfo.value)
        expected = "Server error" if label == "GET /broken" else "Response violates schema"
        assert expected in text, text
