"""The shared lib: settings, errors, Firestore, auth, consent, the ledger, generations, analytics.

Nothing in here sees a Flask request; handlers in `functions/` translate HTTP to these calls.
"""
