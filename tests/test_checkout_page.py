"""The Stripe double's hosted checkout page (local only): "Pay" delivers a signed
`checkout.session.completed` for the session to the webhook, then sends the buyer to the success URL;
a webhook that refuses leaves the session open and the buyer on an error page."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from devstack.doubles import Received, _Double
from devstack.stripe_double import StripeDouble

SECRET = "whsec_page_test"
SUCCESS = "http://127.0.0.1:5999/?checkout=success&session={CHECKOUT_SESSION_ID}"


class WebhookRecorder(_Double):
    """Stands in for stripe_webhook: records deliveries, answers `status`."""

    status = 200

    def answer(self, req: Received) -> tuple[int, dict[str, Any]]:
        return self.status, {"received": True} if self.status == 200 else {
            "error": "invalid_signature",
            "message": "no",
        }


@pytest.fixture
def doubles() -> Iterator[tuple[StripeDouble, WebhookRecorder]]:
    webhook = WebhookRecorder()
    webhook.start()
    stripe = StripeDouble(hosted=True, webhook_secret=SECRET)
    stripe.start()
    stripe.webhook_url = webhook.url + "/"
    yield stripe, webhook
    stripe.stop()
    webhook.stop()


def send(
    url: str, method: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """One request, redirects not followed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=10)
    conn.request(method, parts.path, body=body, headers=headers or {})
    res = conn.getresponse()
    answer = res.status, dict(res.getheaders()), res.read().decode()
    conn.close()
    return answer


def create_session(stripe: StripeDouble) -> tuple[str, str]:
    form = {
        "mode": "payment",
        "line_items[0][price]": "price_creator_500",
        "line_items[0][quantity]": "1",
        "metadata[userId]": "uma",
        "metadata[packageId]": "creator",
        "success_url": SUCCESS,
        "cancel_url": "http://127.0.0.1:5999/?checkout=cancelled",
    }
    status, _, body = send(stripe.url + "/v1/checkout/sessions", "POST", urlencode(form).encode())
    assert status == 200
    session = json.loads(body)
    return session["id"], session["url"]


@pytest.mark.no_emulator
def test_pay_delivers_a_signed_completed_event_then_returns_to_the_success_url(
    doubles: tuple[StripeDouble, WebhookRecorder],
) -> None:
    from functions.lib.stripe_api import construct_event

    stripe, webhook = doubles
    session_id, url = create_session(stripe)

    page_status, _, page = send(url, "GET")
    paid_status, headers, _ = send(url, "POST")

    assert url == f"{stripe.url}/c/pay/{session_id}"
    assert page_status == 200 and 'id="pay"' in page and "creator" in page
    assert paid_status == 303 and headers["Location"] == SUCCESS.replace("{CHECKOUT_SESSION_ID}", session_id)
    [delivery] = webhook.received
    event = construct_event(delivery.body, delivery.headers["Stripe-Signature"], SECRET)
    session = event["data"]["object"]
    assert event["type"] == "checkout.session.completed"
    assert (session["id"], session["payment_status"]) == (session_id, "paid")
    assert session["metadata"] == {"userId": "uma", "packageId": "creator"}


@pytest.mark.no_emulator
def test_a_refused_delivery_shows_an_error_and_paying_again_delivers_again(
    doubles: tuple[StripeDouble, WebhookRecorder],
) -> None:
    stripe, webhook = doubles
    _, url = create_session(stripe)
    webhook.status = 400

    refused, _, page = send(url, "POST")
    webhook.status = 200
    paid, _, _ = send(url, "POST")
    again, _, _ = send(url, "POST")

    assert refused == 502 and "stripe_webhook answered 400" in page
    assert paid == 303 and again == 303
    assert len(webhook.received) == 2, "a paid session is not delivered again"


@pytest.mark.no_emulator
def test_an_unknown_session_is_not_found(doubles: tuple[StripeDouble, WebhookRecorder]) -> None:
    stripe, webhook = doubles

    status, _, _ = send(stripe.url + "/c/pay/cs_test_nope", "POST")

    assert status == 404 and not webhook.received
