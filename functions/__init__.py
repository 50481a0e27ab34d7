"""The backend's code, deployed with main.py.

- `handlers/`: one module per entry point, named after it (main.py imports each lazily);
- `edge.py`: the HTTP edge every HTTPS handler goes through (CORS, limits, JSON, auth, errors);
- `lib/`: the shared lib (settings, Firestore, the ledger, payments, generations, retention...);
  it never sees a request;
- `admin/`: the operator command line, over the same lib.

docs/ARCHITECTURE.md says where each entry point, ledger type and Stripe event is handled.
"""
