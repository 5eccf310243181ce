"""Schema fuzzing with schemathesis: every route of the service's own OpenAPI document, in-process.

The app runs behind schemathesis's ASGI transport (its lifespan starts on the first call and ends
at the test's teardown, through schemathesis's pytest plugin) with the tiny classifier and the
tiny diffusers generator. Every answer must be non-5xx and declared by the OpenAPI document:
status code, content type, headers and body schema; schema-invalid requests must be refused.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from safegen.app import create_app
from tests.fuzz import DERANDOMIZE, examples
from tests.support.app_client import AUTH, settings_for

CHECKS = [
    not_a_server_error, status_code_conformance, content_type_conformance,
    response_headers_conformance, response_schema_conformance,
]
FUZZ = settings(
    deadline=None, database=None, derandomize=DERANDOMIZE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
# Header names the API accepts, with any text as value: this reaches the uploader's request.
SIGNED_HEADERS = st.none() | st.dictionaries(
    st.sampled_from(["x-amz-acl", "Content-Type", "cache-control"])
    | st.text(max_size=8).map(lambda suffix: f"x-amz-meta-{suffix}"),
    st.text(max_size=20), max_size=2,
)


@pytest.fixture
def api_schema(tiny_vit_dir, tiny_sd_dir) -> Any:
    # Sides of 64 or 128 pixels and 1-2 steps: a schema-valid body that passes the limits
    # generates an image in tens of milliseconds.
    app = create_app(settings_for(
        tiny_vit_dir, generator_model=str(tiny_sd_dir), min_image_side=64, max_image_side=128,
        image_side_multiple=64, max_inference_steps=2, upscaler="none", rate_limit="",
        max_request_bytes=2_000_000, max_image_bytes=1_000_000, max_files_per_request=4,
        upload_allowed_schemes=["http", "https"], upload_allow_loopback=True,
        upload_backoff_s=[0.01],
    ))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.slow
def test_every_route_positive_and_negative(api_schema):
    seen: Counter[tuple[str, int]] = Counter()
    strategy = st.one_of(
        api_schema.as_strategy(GenerationMode.POSITIVE),
        api_schema.as_strategy(GenerationMode.NEGATIVE),
    )

    @settings(FUZZ, max_examples=examples(300))
    @given(case=strategy)
    def run(case: Any) -> None:
        negative = case.meta is not None and case.meta.generation.mode == GenerationMode.NEGATIVE
        checks = CHECKS + [negative_data_rejection] if negative else CHECKS
        response = case.call_and_validate(headers=AUTH, checks=checks)
        seen[(f"{case.method} {case.path}", response.status_code)] += 1

    run()
    print("every route:", dict(sorted(seen.items())))
    routes = {route for route, _ in seen}
    assert {"POST /v1/classify", "POST /generate", "GET /readyz", "GET /metrics"} <= routes


def test_generate_with_valid_sizes_really_generates(api_schema, fault_server):
    """Schema-valid bodies forced into the cheap size range, so the pipeline, the classifier and
    the upload run with fuzzed prompts, seeds, guidance, flags and upload headers."""
    seen: Counter[int] = Counter()
    operation = api_schema["/generate"]["POST"]
    target = f"{fault_server.url}/bucket/000/1.png?X-Amz-Signature=s3cr3t"

    @settings(FUZZ, max_examples=examples(40))
    @given(case=operation.as_strategy(GenerationMode.POSITIVE), side=st.sampled_from([64, 128]),
           inline=st.booleans(), headers=SIGNED_HEADERS)
    def run(case: Any, side: int, inline: bool, headers: dict[str, str] | None) -> None:
        body = {**case.body, "width": side, "height": 64, "num_inference_steps": 1}
        body.pop("s3_post_fields", None)
        if body.get("upload_mode") == "post":
            body["upload_mode"] = "rename"
        if headers is not None:
            body["upload_headers"] = headers
        if inline:
            body["response_format"] = "b64_json"
        else:
            body.update(response_format="s3", s3_prefix=target)
        case.body = body
        response = case.call_and_validate(headers=AUTH, checks=CHECKS)
        seen[response.status_code] += 1
        # The signature belongs in s3_url (the spec's contract) and nowhere else in the answer.
        payload = response.json()
        payload.get("data", {}).pop("s3_url", None)
        assert "s3cr3t" not in json.dumps(payload)

    run()
    print("generate:", dict(seen))
    assert seen[200] >= 10  # most examples really generated (and uploaded or inlined)
