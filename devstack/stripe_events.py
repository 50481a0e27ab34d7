"""Stripe webhook deliveries as Stripe sends them: event envelopes around full API objects, signed
with the real scheme (`Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "t.body")>`).

Used by the tests, the local run (buying credits through a signed delivery) and the Stripe double.
Typical use:

    event = checkout_completed("cs_test_1", uid, "starter", "pi_test_1")
    body, headers = delivery(event, "whsec_...")
    POST body with headers to the stripe_webhook function
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any

API_VERSION = "2025-09-30.clover"
DEFAULT_AMOUNT = 1000  # cents


def buyer_address() -> dict[str, Any]:
    """The buyer's address as Stripe sends it in a Session's customer details and a Charge's billing
    details: personal data that a stored problem event must not keep."""
    return {
        "city": None,
        "country": "US",
        "line1": None,
        "line2": None,
        "postal_code": "94103",
        "state": None,
    }


def new_id(prefix: str) -> str:
    """A Stripe-shaped test-mode id: `new_id("cs_test")` -> `cs_test_a1b2...`."""
    return f"{prefix}_{secrets.token_hex(12)}"


def checkout_session(
    session_id: str,
    uid: str | None,
    pack_id: str | None,
    *,
    payment_intent: str | None = None,
    status: str = "complete",
    payment_status: str = "paid",
    amount_total: int = DEFAULT_AMOUNT,
    success_url: str = "http://localhost:5173/credits?paid=1",
    cancel_url: str = "http://localhost:5173/credits",
    url: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """A Checkout Session object in payment mode, with the metadata `checkout` sets (None leaves a key out)."""
    created = created or int(time.time())
    metadata = {k: v for k, v in (("userId", uid), ("packageId", pack_id)) if v is not None}
    paid_by = {
        "address": buyer_address(),
        "email": "buyer@example.com",
        "name": "Test Buyer",
        "phone": None,
        "tax_exempt": "none",
        "tax_ids": [],
    }
    return {
        "id": session_id,
        "object": "checkout.session",
        "adaptive_pricing": {"enabled": False},
        "after_expiration": None,
        "allow_promotion_codes": None,
        "amount_subtotal": amount_total,
        "amount_total": amount_total,
        "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
        "billing_address_collection": None,
        "cancel_url": cancel_url,
        "client_reference_id": uid,
        "client_secret": None,
        "collected_information": {"shipping_details": None},
        "consent": None,
        "consent_collection": None,
        "created": created,
        "currency": "usd",
        "currency_conversion": None,
        "custom_fields": [],
        "custom_text": {
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        "customer": None,
        "customer_creation": "if_required",
        "customer_details": paid_by if status == "complete" else None,
        "customer_email": None,
        "discounts": [],
        "expires_at": created + 86400,
        "invoice": None,
        "invoice_creation": {
            "enabled": False,
            "invoice_data": {
                "account_tax_ids": None,
                "custom_fields": None,
                "description": None,
                "footer": None,
                "issuer": None,
                "metadata": {},
                "rendering_options": None,
            },
        },
        "livemode": False,
        "locale": None,
        "metadata": metadata,
        "mode": "payment",
        "payment_intent": payment_intent,
        "payment_link": None,
        "payment_method_collection": "if_required",
        "payment_method_configuration_details": None,
        "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
        "payment_method_types": ["card"],
        "payment_status": payment_status,
        "permissions": None,
        "phone_number_collection": {"enabled": False},
        "recovered_from": None,
        "saved_payment_method_options": None,
        "setup_intent": None,
        "shipping_address_collection": None,
        "shipping_cost": None,
        "shipping_options": [],
        "status": status,
        "submit_type": None,
        "subscription": None,
        "success_url": success_url,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted",
        "url": url,
        "wallet_options": None,
    }


def charge(
    charge_id: str, payment_intent: str, amount: int = DEFAULT_AMOUNT, amount_refunded: int = 0
) -> dict[str, Any]:
    """A card Charge object of a Checkout payment; `amount_refunded` is cumulative, as Stripe reports it."""
    created = int(time.time())
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": new_id("txn"),
        "billing_details": {
            "address": buyer_address(),
            "email": "buyer@example.com",
            "name": "Test Buyer",
            "phone": None,
            "tax_id": None,
        },
        "calculated_statement_descriptor": "CREDITS",
        "captured": True,
        "created": created,
        "currency": "usd",
        "customer": None,
        "description": None,
        "destination": None,
        "dispute": None,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None,
        "failure_message": None,
        "fraud_details": {},
        "livemode": False,
        "metadata": {},
        "on_behalf_of": None,
        "outcome": {
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "risk_score": 32,
            "seller_message": "Payment complete.",
            "type": "authorized",
        },
        "paid": True,
        "payment_intent": payment_intent,
        "payment_method": new_id("pm"),
        "payment_method_details": {
            "card": {
                "brand": "visa",
                "country": "US",
                "exp_month": 12,
                "exp_year": 2030,
                "funding": "credit",
                "last4": "4242",
                "network": "visa",
                "three_d_secure": None,
                "wallet": None,
            },
            "type": "card",
        },
        "receipt_email": None,
        "receipt_number": None,
        "receipt_url": f"https://pay.stripe.com/receipts/payment/{charge_id}",
        "refunded": amount_refunded == amount,
        "review": None,
        "shipping": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded",
        "transfer_data": None,
        "transfer_group": None,
    }


def dispute(
    dispute_id: str,
    charge_id: str,
    payment_intent: str,
    amount: int = DEFAULT_AMOUNT,
    reason: str = "fraudulent",
) -> dict[str, Any]:
    """A Dispute object as `charge.dispute.created` carries it."""
    created = int(time.time())
    evidence_fields = (
        "access_activity_log",
        "billing_address",
        "cancellation_policy",
        "cancellation_policy_disclosure",
        "cancellation_rebuttal",
        "customer_communication",
        "customer_email_address",
        "customer_name",
        "customer_purchase_ip",
        "customer_signature",
        "duplicate_charge_documentation",
        "duplicate_charge_explanation",
        "duplicate_charge_id",
        "product_description",
        "receipt",
        "refund_policy",
        "refund_policy_disclosure",
        "refund_refusal_explanation",
        "service_date",
        "service_documentation",
        "shipping_address",
        "shipping_carrier",
        "shipping_date",
        "shipping_documentation",
        "shipping_tracking_number",
        "uncategorized_file",
        "uncategorized_text",
    )
    return {
        "id": dispute_id,
        "object": "dispute",
        "amount": amount,
        "balance_transactions": [],
        "charge": charge_id,
        "created": created,
        "currency": "usd",
        "enhanced_eligibility_types": [],
        "evidence": dict.fromkeys(evidence_fields),
        "evidence_details": {
            "due_by": created + 7 * 86400,
            "enhanced_eligibility": {},
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": payment_intent,
        "payment_method_details": {
            "card": {"brand": "visa", "case_type": "chargeback", "network_reason_code": "10.4"},
            "type": "card",
        },
        "reason": reason,
        "status": "needs_response",
    }


def refund(
    refund_id: str, charge_id: str, payment_intent: str, amount: int, status: str = "succeeded"
) -> dict[str, Any]:
    """A Refund object as `refund.created` / `refund.updated` / `refund.failed` carry it."""
    failed = status == "failed"
    return {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "balance_transaction": new_id("txn"),
        "charge": charge_id,
        "created": int(time.time()),
        "currency": "usd",
        "destination_details": {
            "card": {
                "reference_status": "pending",
                "reference_type": "acquirer_reference_number",
                "type": "refund",
            },
            "type": "card",
        },
        "failure_balance_transaction": new_id("txn") if failed else None,
        "failure_reason": "expired_or_canceled_card" if failed else None,
        "metadata": {},
        "payment_intent": payment_intent,
        "reason": "requested_by_customer",
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": status,
        "transfer_reversal": None,
    }


def refund_event(
    type: str,
    refund_id: str,
    charge_id: str,
    payment_intent: str,
    amount: int,
    status: str = "succeeded",
    **kw: Any,
) -> dict[str, Any]:
    """`refund.created`, `refund.updated` or `refund.failed` (sent for every refund since API 2024-10-28)."""
    return event(type, refund(refund_id, charge_id, payment_intent, amount, status), **kw)


def dispute_closed(
    dispute_id: str,
    charge_id: str,
    payment_intent: str,
    status: str,
    amount: int = DEFAULT_AMOUNT,
    *,
    event_id: str | None = None,
) -> dict[str, Any]:
    """`charge.dispute.closed` with its final status: `won`, `lost` or `warning_closed`."""
    return event(
        "charge.dispute.closed",
        {**dispute(dispute_id, charge_id, payment_intent, amount), "status": status},
        event_id=event_id,
    )


def event(
    type: str,
    obj: dict[str, Any],
    *,
    event_id: str | None = None,
    created: int | None = None,
    livemode: bool = False,
) -> dict[str, Any]:
    """The envelope Stripe posts to a webhook endpoint (a snapshot event)."""
    return {
        "id": event_id or new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": created or int(time.time()),
        "data": {"object": obj},
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
    }


def checkout_completed(
    session_id: str,
    uid: str | None,
    pack_id: str | None,
    payment_intent: str,
    paid: bool = True,
    *,
    event_id: str | None = None,
) -> dict[str, Any]:
    """`checkout.session.completed`; `paid=False` is a delayed payment method still in flight."""
    session = checkout_session(
        session_id, uid, pack_id, payment_intent=payment_intent, payment_status="paid" if paid else "unpaid"
    )
    return event("checkout.session.completed", session, event_id=event_id)


def async_payment_succeeded(
    session_id: str, uid: str | None, pack_id: str | None, payment_intent: str, *, event_id: str | None = None
) -> dict[str, Any]:
    """`checkout.session.async_payment_succeeded`: the delayed payment of a completed session cleared."""
    session = checkout_session(session_id, uid, pack_id, payment_intent=payment_intent, payment_status="paid")
    return event("checkout.session.async_payment_succeeded", session, event_id=event_id)


def charge_refunded(
    charge_id: str, payment_intent: str, amount: int, amount_refunded: int, *, event_id: str | None = None
) -> dict[str, Any]:
    """`charge.refunded` after a (partial) refund; `amount_refunded` is the total refunded so far."""
    return event(
        "charge.refunded", charge(charge_id, payment_intent, amount, amount_refunded), event_id=event_id
    )


def dispute_created(
    dispute_id: str,
    charge_id: str,
    payment_intent: str,
    amount: int = DEFAULT_AMOUNT,
    *,
    event_id: str | None = None,
) -> dict[str, Any]:
    """`charge.dispute.created`: the buyer's bank opened a chargeback."""
    return event(
        "charge.dispute.created", dispute(dispute_id, charge_id, payment_intent, amount), event_id=event_id
    )


def encode(evt: dict[str, Any]) -> bytes:
    """The body bytes as Stripe sends them (pretty-printed JSON)."""
    return json.dumps(evt, indent=2).encode()


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header for `payload`: `t=<timestamp>,v1=<HMAC-SHA256(secret, "t.payload")>`."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def delivery(evt: dict[str, Any], secret: str, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one signed webhook delivery of `evt`."""
    body = encode(evt)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "Stripe-Signature": sign(body, secret, timestamp),
    }
    return body, headers


# Stripe Billing: subscriptions, invoices and invoice payments ----------------------------------

BASIL = "2025-03-31.basil"
PRE_BASIL = "2025-02-24.acacia"
DAY = 86400


def subscription(
    sub_id: str,
    uid: str | None,
    plan_id: str | None,
    price: str,
    *,
    customer: str = "cus_test_1",
    status: str = "active",
    period_start: int | None = None,
    period_end: int | None = None,
    cancel_at_period_end: bool = False,
    latest_invoice: str | None = None,
    basil: bool = True,
) -> dict[str, Any]:
    """A Subscription object with the metadata `checkout` sets through `subscription_data.metadata`
    (None leaves a key out). From basil on the current period sits on its items, before on it."""
    start = period_start or int(time.time())
    end = period_end or start + 30 * DAY
    metadata = {k: v for k, v in (("userId", uid), ("planId", plan_id)) if v is not None}
    item: dict[str, Any] = {
        "id": new_id("si"),
        "object": "subscription_item",
        "created": start,
        "metadata": {},
        "price": {"id": price, "object": "price", "recurring": {"interval": "month", "interval_count": 1}},
        "quantity": 1,
        "subscription": sub_id,
    }
    sub: dict[str, Any] = {
        "id": sub_id,
        "object": "subscription",
        "billing_cycle_anchor": start,
        "cancel_at": end if cancel_at_period_end else None,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": None,
        "collection_method": "charge_automatically",
        "created": start,
        "currency": "usd",
        "customer": customer,
        "ended_at": None,
        "items": {"object": "list", "data": [item], "has_more": False},
        "latest_invoice": latest_invoice,
        "livemode": False,
        "metadata": metadata,
        "start_date": start,
        "status": status,
        "trial_end": None,
        "trial_start": None,
    }
    if basil:
        item |= {"current_period_start": start, "current_period_end": end}
    else:
        sub |= {"current_period_start": start, "current_period_end": end}
    return sub


def invoice_line(
    price: str, amount: int, start: int, end: int, *, proration: bool = False, basil: bool = True
) -> dict[str, Any]:
    """A subscription line of an invoice: its service `period`, its price (under `pricing` from basil on)."""
    line: dict[str, Any] = {
        "id": new_id("il"),
        "object": "line_item",
        "amount": amount,
        "currency": "usd",
        "description": "1 × Plan" if not proration else "Remaining time on Plan",
        "period": {"start": start, "end": end},
        "quantity": 1,
    }
    if basil:
        line["parent"] = {
            "type": "subscription_item_details",
            "subscription_item_details": {"proration": proration, "subscription_item": new_id("si")},
        }
        line["pricing"] = {"type": "price_details", "price_details": {"price": price, "product": "prod_1"}}
    else:
        line |= {"type": "subscription", "proration": proration, "price": {"id": price, "object": "price"}}
    return line


def invoice(
    invoice_id: str,
    sub_id: str,
    uid: str | None,
    plan_id: str | None,
    lines: list[dict[str, Any]],
    *,
    billing_reason: str = "subscription_cycle",
    amount_paid: int | None = None,
    status: str = "paid",
    customer: str = "cus_test_1",
    payment_intent: str | None = None,
    basil: bool = True,
) -> dict[str, Any]:
    """An Invoice of a subscription. From basil on the subscription and its metadata snapshot sit
    under `parent.subscription_details` and there is no `payment_intent`; before, they are
    top-level `subscription` / `subscription_details` and `payment_intent`."""
    metadata = {k: v for k, v in (("userId", uid), ("planId", plan_id)) if v is not None}
    total = sum(line["amount"] for line in lines)
    paid = total if amount_paid is None else amount_paid
    inv: dict[str, Any] = {
        "id": invoice_id,
        "object": "invoice",
        "amount_due": total,
        "amount_paid": paid if status == "paid" else 0,
        "amount_remaining": 0 if status == "paid" else total,
        "attempt_count": 1,
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "created": int(time.time()),
        "currency": "usd",
        "customer": customer,
        "customer_email": "buyer@example.com",
        "customer_name": "Test Buyer",
        "customer_address": buyer_address(),
        "lines": {"object": "list", "data": lines, "has_more": False},
        "livemode": False,
        "period_start": lines[0]["period"]["start"] if lines else None,
        "period_end": lines[0]["period"]["start"] if lines else None,
        "status": status,
        "total": total,
    }
    if basil:
        inv["parent"] = {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": metadata, "subscription": sub_id},
        }
    else:
        inv |= {
            "subscription": sub_id,
            "subscription_details": {"metadata": metadata},
            "payment_intent": payment_intent,
            "paid": status == "paid",
        }
    return inv


def invoice_payment(invoice_id: str, payment_intent: str, amount: int) -> dict[str, Any]:
    """An InvoicePayment (basil on): which PaymentIntent paid which invoice."""
    return {
        "id": new_id("inpay"),
        "object": "invoice_payment",
        "amount_paid": amount,
        "amount_requested": amount,
        "created": int(time.time()),
        "currency": "usd",
        "invoice": invoice_id,
        "is_default": True,
        "livemode": False,
        "payment": {"type": "payment_intent", "payment_intent": payment_intent},
        "status": "paid",
        "status_transitions": {"canceled_at": None, "paid_at": int(time.time())},
    }
