"""Webhook test helpers: a fixed test secret, and verification with the ``standardwebhooks``
package (the reference implementation receivers use), never with the service's own code."""

from __future__ import annotations

import base64
import json
from typing import Any

from standardwebhooks.webhooks import Webhook

from tests.support.faultserver import Recorded

TEST_WEBHOOK_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def verified(request: Recorded, secret: str = TEST_WEBHOOK_SECRET) -> dict[str, Any]:
    """The job object a webhook request carried, after its signature checked out."""
    headers = {k: v for k, v in request.headers.items() if k.startswith("webhook-")}
    payload = Webhook(secret).verify(request.body, headers)
    assert payload == json.loads(request.body)
    return dict(payload)
