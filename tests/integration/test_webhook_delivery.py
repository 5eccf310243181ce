"""Webhook delivery to a real HTTP receiver: signatures (checked with ``standardwebhooks``), the
retry policy, and the egress policy (the same target checks as uploads)."""

from __future__ import annotations

import json

import httpx
import pytest

from safegen.egress import EgressPolicy, PinnedClient, SystemResolver
from safegen.jobs.model import WebhookEvent
from safegen.jobs.signing import parse_secret
from safegen.jobs.webhooks import WebhookConfig, WebhookSender, backoff_s
from safegen.metrics import Metrics
from tests.support.faultserver import Step
from tests.support.webhooks import TEST_WEBHOOK_SECRET, verified

LOOPBACK_OK = EgressPolicy(purpose="webhook", allowed_schemes=("http",), allow_loopback=True)


class Sender:
    """A sender whose waits are recorded instead of slept (the schedule is what is tested)."""

    def __init__(self, policy: EgressPolicy, max_attempts: int = 5) -> None:
        self.waits: list[float] = []
        self.metrics = Metrics()
        client = PinnedClient(policy, SystemResolver(1, 2.0), timeout=httpx.Timeout(2.0))
        config = WebhookConfig(parse_secret(TEST_WEBHOOK_SECRET), max_attempts, 1.0, 60.0)
        self.sender = WebhookSender(client, config, self.metrics, sleep=self._sleep,
                                    rng=lambda: 0.5)

    async def _sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def count(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        assert value is not None, f"no series {name}{labels}"  # a missing series is no zero
        return value


def event(url: str) -> WebhookEvent:
    body = json.dumps({"id": "j1", "status": "succeeded"}).encode()
    return WebhookEvent("msg_j1_completed", url, body, "j1", "completed")


async def test_500_twice_then_200_is_three_attempts_with_one_id(fault_server):
    fault_server.script(Step(500), Step(503), Step(200))
    sender = Sender(LOOPBACK_OK)
    outcome = await sender.sender.deliver(event(f"{fault_server.url}/hook"))
    await sender.sender.aclose()
    assert outcome == "delivered"
    assert len(fault_server.requests) == 3
    assert {r.headers["webhook-id"] for r in fault_server.requests} == {"msg_j1_completed"}
    assert all(verified(r) == {"id": "j1", "status": "succeeded"} for r in fault_server.requests)
    assert sender.waits == [0.75, 1.5]  # 1 s then 2 s steps, equal jitter at rng = 0.5
    assert sender.count("safegen_webhook_attempts_total", status_class="5xx") == 2
    assert sender.count("safegen_webhooks_total", outcome="delivered") == 1


async def test_retry_after_is_honoured_and_410_stops(fault_server):
    fault_server.script(Step(429, headers={"Retry-After": "7"}), Step(410))
    sender = Sender(LOOPBACK_OK)
    outcome = await sender.sender.deliver(event(f"{fault_server.url}/hook"))
    await sender.sender.aclose()
    assert outcome == "gone"
    assert sender.waits == [7.0]
    assert len(fault_server.requests) == 2


async def test_other_4xx_is_not_retried_and_attempts_are_bounded(fault_server):
    fault_server.script(Step(400))
    sender = Sender(LOOPBACK_OK)
    assert await sender.sender.deliver(event(f"{fault_server.url}/a")) == "refused"
    fault_server.script(Step(502))
    assert await sender.sender.deliver(event(f"{fault_server.url}/b")) == "exhausted"
    await sender.sender.aclose()
    assert [r.target for r in fault_server.requests] == ["/a"] + ["/b"] * 5
    assert sender.waits == [0.75, 1.5, 3.0, 6.0]


async def test_connection_refused_is_retried(fault_server):
    url = f"{fault_server.url}/hook"
    fault_server.close()  # nothing listens there any more
    sender = Sender(LOOPBACK_OK, max_attempts=2)
    assert await sender.sender.deliver(event(url)) == "exhausted"
    await sender.sender.aclose()
    assert sender.count("safegen_webhook_attempts_total", status_class="error") == 2


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://[::1]:9/x",
                                 "http://169.254.169.254/latest/meta-data"])
async def test_default_policy_refuses_loopback_and_metadata(url):
    sender = Sender(EgressPolicy(purpose="webhook", allowed_schemes=("http", "https")))
    assert await sender.sender.deliver(event(url)) == "rejected"
    await sender.sender.aclose()
    assert sender.count("safegen_webhook_attempts_total", status_class="error") == 1


def test_backoff_grows_with_jitter_and_is_capped():
    low = [backoff_s(n, 1.0, 10.0, lambda: 0.0) for n in range(1, 6)]
    high = [backoff_s(n, 1.0, 10.0, lambda: 1.0) for n in range(1, 6)]
    assert low == [0.5, 1.0, 2.0, 4.0, 5.0]
    assert high == [1.0, 2.0, 4.0, 8.0, 10.0]


