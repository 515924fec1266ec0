"""Schema-based fuzzing of the whole HTTP API: Schemathesis generates valid and invalid requests
from the service's own OpenAPI document for every operation (chat included) and sends them to
the real uvicorn service; none may be answered with a 5xx.

Bounded and reproducible: ``EXAMPLES`` requests per operation (Hypothesis, derandomized), about
200 in all. DELETE is left out because the service is shared with the other collection tests
(deletion is covered by the store's own tests). Schemathesis's pytest plugin does not run under
pytest 9 yet, so the operations are parametrized here and each runs its own Hypothesis loop.
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from rlhf_persona.api import create_app

EXAMPLES = 12
SPEC = create_app().openapi()  # the app is built, not started: no database, no model
OPERATIONS = {
    result.ok().label: result.ok()
    for result in schemathesis.openapi.from_dict(SPEC).get_all_operations()
    if result.ok().method.upper() != "DELETE"
}


@pytest.fixture(scope="module")
def fuzz_headers(chat_service) -> dict[str, str]:
    """An admin key (every operation is allowed) and a chat token of a user of its own."""
    admin = {"X-API-Key": chat_service.keys["admin"]}
    base = chat_service.base_url
    served = httpx.get(f"{base}/openapi.json").json()
    assert served["paths"] == SPEC["paths"]  # fuzzing the document the service serves
    assert httpx.post(f"{base}/v1/users", json={"user_id": "fuzz"}, headers=admin).is_success
    token = httpx.post(f"{base}/v1/chat/tokens", json={"user_id": "fuzz"}, headers=admin)
    return {**admin, "Authorization": "Bearer " + token.json()["token"]}


def _strategy(operation):
    """Valid requests and requests that break the schema (wrong types, missing fields...)."""
    return st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_api_never_answers_5xx(label, chat_service, fuzz_headers):
    operation = OPERATIONS[label]
    answers: Counter = Counter()

    @given(case=_strategy(operation))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def fuzz(case):
        resp = case.call(base_url=chat_service.base_url, headers=fuzz_headers, timeout=120)
        answers[resp.status_code] += 1
        assert resp.status_code < 500, (
            f"{label} answered {resp.status_code}: {resp.text[:300]}\n{case.as_curl_command()}"
        )

    fuzz()
    assert sum(answers.values()) >= 1, answers
