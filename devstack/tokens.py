"""ID tokens in the Firebase Auth emulator's format (unsigned, `alg: none`).

firebase-admin accepts these only while FIREBASE_AUTH_EMULATOR_HOST is set; tests use them to
prove both that and the 401 without it. The local run gets real ones from the Auth emulator.
"""

from __future__ import annotations

import base64
import json
import time


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def emulator_id_token(
    uid: str,
    project: str,
    *,
    email: str | None = None,
    issued_at: int | None = None,
    email_verified: bool = False,
    provider: str = "password",
) -> str:
    now = int(time.time()) if issued_at is None else issued_at
    claims = {
        "iss": f"https://securetoken.google.com/{project}",
        "aud": project,
        "auth_time": now,
        "user_id": uid,
        "sub": uid,
        "iat": now,
        "exp": now + 3600,
        "email": email or f"{uid}@example.com",
        "email_verified": email_verified,
        "firebase": {"identities": {}, "sign_in_provider": provider},
    }
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
