"""Who each deployed function runs as, which secrets it reads, which roles its account holds.

One table, read by main.py's declarations (`runs_as`, so the Firebase CLI's manifest carries each
function's secrets and service account) and by deploy.sh (`tools/deploy_plan.py` creates the
accounts, grants the roles and the per-secret access from it), and by the startup check that a
deployed function has its secrets (`config.refuse_unsafe_environment`).

Least privilege, per function (docs/ARCHITECTURE.md, "Deployment"): every function has its own
service account; a secret is readable only by the account of the function that uses it; only the
scheduler's account may invoke the private sweep. Firestore has no per-collection IAM, so every
account that writes data holds `roles/datastore.user` on the project (the public catalog, which only
reads, `roles/datastore.viewer`); nothing holds more.

Importing this module is cheap (no third-party imports): main.py imports it on every cold start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DATASTORE_USER = "roles/datastore.user"
# verify_id_token(check_revoked=True) and the disabled-account check read the user record.
AUTH_VIEWER = "roles/firebaseauth.viewer"
# Reads Firestore and writes nothing: the public catalog.
DATASTORE_VIEWER = "roles/datastore.viewer"
# Erasure deletes the Firebase Auth account.
AUTH_ADMIN = "roles/firebaseauth.admin"

# The task queue function of the sweep's fan-out. Its name is its queue's id, and queue ids take
# only letters, digits and hyphens (an underscore is refused).
PURGE_FUNCTION = "purgeProject"
SWEEP_FUNCTION = "retention_sweep"
# Cloud Scheduler's caller of the sweep: may invoke the sweep and nothing else.
SCHEDULER_ACCOUNT = "sweep-scheduler"


@dataclass(frozen=True)
class Deployed:
    """A function's identity when deployed: its own service account and what that account may do."""

    account: str  # service account id (the part before @PROJECT.iam.gserviceaccount.com)
    secrets: tuple[str, ...] = ()  # Secret Manager secrets, bound as environment variables of the same name
    roles: tuple[str, ...] = ()  # project-level roles of the account
    invokes: tuple[str, ...] = ()  # private functions the account may invoke (roles/run.invoker on each)
    # task queues the account may add tasks to (roles/cloudtasks.enqueuer on each queue, not the project)
    enqueues: tuple[str, ...] = ()
    # Enqueues Cloud Tasks whose OIDC token names this same account: iam.serviceAccountUser on itself.
    acts_as_itself: bool = False


FUNCTIONS: dict[str, Deployed] = {
    "generate": Deployed("fn-generate", ("GEMINI_API_KEY",), (DATASTORE_USER, AUTH_VIEWER)),
    "consent": Deployed("fn-consent", (), (DATASTORE_USER,)),
    "credits": Deployed("fn-credits", (), (DATASTORE_USER,)),
    "checkout": Deployed("fn-checkout", ("STRIPE_SECRET_KEY",), (DATASTORE_USER, AUTH_VIEWER)),
    "billing_portal": Deployed("fn-billing-portal", ("STRIPE_SECRET_KEY",), (DATASTORE_USER, AUTH_VIEWER)),
    "catalog": Deployed("fn-catalog", (), (DATASTORE_VIEWER,)),
    "stripe_webhook": Deployed("fn-stripe-webhook", ("STRIPE_WEBHOOK_SECRET",), (DATASTORE_USER,)),
    # Enqueues purge tasks with an OIDC token of its own account, which the task function accepts.
    SWEEP_FUNCTION: Deployed(
        "fn-retention-sweep",
        roles=(DATASTORE_USER,),
        invokes=(PURGE_FUNCTION,),
        enqueues=(PURGE_FUNCTION,),
        acts_as_itself=True,
    ),
    "settle_charges": Deployed("fn-settle-charges", (), (DATASTORE_USER,)),
    PURGE_FUNCTION: Deployed("fn-purge-project", (), (DATASTORE_USER,)),
    # Erasure cancels the user's subscriptions in Stripe first.
    "account": Deployed("fn-account", ("STRIPE_SECRET_KEY",), (DATASTORE_USER, AUTH_ADMIN)),
}
SCHEDULER = Deployed(SCHEDULER_ACCOUNT, invokes=(SWEEP_FUNCTION,))


def service_account(account: str, project: str) -> str:
    """`account`'s email in `project` (the CLI's `account@` shorthand when no project is known).

    The Firebase CLI expands the shorthand for the account a function runs as and for invokers, but
    not where it grants the function's secrets or writes a scheduled function's job (firebase-tools
    15: deploy/functions/ensure.js, gcp/cloudscheduler.js): those would name `fn-x@` verbatim. It sets
    GCLOUD_PROJECT while it discovers the functions, so the manifest can carry the full email.
    """
    return f"{account}@{project}.iam.gserviceaccount.com" if project else f"{account}@"


def runs_as(name: str, project: str) -> dict[str, Any]:
    """The decorator options of `name`'s identity: its service account and exactly its secrets."""
    spec = FUNCTIONS[name]
    return {"service_account": service_account(spec.account, project), "secrets": list(spec.secrets)}


def invokers_of(name: str, project: str) -> list[str]:
    """The accounts that may invoke the private HTTPS function `name`, for its `invoker=` option.

    Declared on the function, the Firebase CLI sets exactly these as its invokers on every deploy
    ("private" would make each deploy clear the binding, and the nightly job get 403 until it is
    granted again). A task queue function cannot declare its invokers (firebase-functions leaves
    them out of the manifest): deploy.sh grants those with gcloud.
    """
    callers = [spec.account for spec in (*FUNCTIONS.values(), SCHEDULER) if name in spec.invokes]
    return [service_account(account, project) for account in callers]


def required_secrets(name: str) -> tuple[str, ...]:
    """The secrets function `name` cannot start without when deployed (none for unknown names)."""
    spec = FUNCTIONS.get(name)
    return spec.secrets if spec else ()
