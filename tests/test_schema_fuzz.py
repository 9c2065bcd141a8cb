"""schemathesis against the receiver's own OpenAPI document, over a real connection:
no 5xx, and every answer conforms to what the document says."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from pkrelay.redis_server import free_port
from tests.harness import Deployment
from tests.servers import ThreadedServer


def test_every_route_conforms_to_the_openapi_document(deployment: Deployment) -> None:
    port = free_port()
    server = ThreadedServer(deployment.app(), port)
    server.start()
    try:
        base = f"http://127.0.0.1:{port}"
        schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()

            @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def check(case: schemathesis.Case) -> None:
                # The document cannot say that `data` must fit the type, nor which token is
                # right: a schema-valid body is routinely a 400 or 401, by design.
                case.call_and_validate(base_url=base, excluded_checks=[positive_data_acceptance])

            check()
    finally:
        server.stop()
