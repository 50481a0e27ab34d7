"""Every Firestore collection this backend uses, named once (docs/ARCHITECTURE.md, "Data model").

Modules import the names they use from here; firestore.rules and the tests spell the same strings.
"""

USERS = "users"
LEDGER = "credit_transactions"
GENERATIONS = "generations"
PROJECTS = "projects"
VERSIONS = "versions"  # under projects/{projectId}
PAYMENTS = "payments"
PROBLEMS = "stripe_event_problems"
EVENTS = "analytics_events"
CHECKOUT_LIMITS = "checkout_limits"
# Per-user fixed windows of other actions (export, credits, consent): `{action}_{uid}`.
RATE_LIMITS = "rate_limits"
SUBSCRIPTIONS = "subscriptions"
CATALOG = "catalog"
INVOICES = "invoices"
OPERATIONS = "operations"  # the last sweep and settlement runs: `sweep`, `settlement`
