"""The shared lib: settings, errors, Firestore, auth, terms, the ledger, generations, payments,
settlement, retention, a user's data, analytics.

Nothing in here sees a Flask request; `functions/handlers/` translate HTTP to these calls.
"""
