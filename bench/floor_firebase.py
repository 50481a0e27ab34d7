"""The firebase-functions floor: `floor_txn`'s work (one Firestore transaction with one read and two
writes) declared with `https_fn.on_request`, served like the real entry points
(`functions-framework --target floor_ff_txn --source bench/floor_firebase.py`).

Against `floor_txn` it shows what the firebase-functions import and decorator cost; against it,
each entry point shows what its own code costs. Imports nothing from `functions/`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import floor_main  # type: ignore[import-not-found]  # bench/, on sys.path when functions-framework loads this file
from firebase_functions import https_fn

if TYPE_CHECKING:
    import flask


@https_fn.on_request()
def floor_ff_txn(request: flask.Request) -> flask.Response:
    """floor_txn, as a firebase-functions HTTPS function."""
    import flask

    return flask.jsonify(floor_main.floor_txn(request))
