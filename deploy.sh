#!/usr/bin/env bash
# Deploy with the Firebase CLI: every function declared in main.py (firebase-functions decorators),
# Firestore rules and indexes, each function's own service account and roles, per-secret access,
# and the nightly Cloud Scheduler job for the private sweep. Idempotent: run it again to update.
#
#   ./deploy.sh PROJECT_ID [REGION] [--dry-run]
#
# --dry-run checks everything, prints the plan (from the manifest the CLI discovers) and every
# command it would run, and calls no cloud tool.
# Config: `.env.PROJECT_ID` in this folder (the Firebase convention; see .env.example), or, when that
# file is absent, the same variables from the environment (written to .env.PROJECT_ID for the deploy
# and removed after). ALLOWED_ORIGINS and TERMS_VERSION are required. SWEEP_SCHEDULE (default
# '0 3 * * *', UTC) sets the sweep's job. Secrets live in Secret Manager: the functions declare which.
# Alerts (tools/alerts.py) go to ALERT_EMAIL (an email channel, created once) or ALERT_CHANNEL (an
# existing channel, projects/P/notificationChannels/ID), from the environment: one is required.
set -euo pipefail
cd "$(dirname "$0")"

DRY_RUN=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "deploy: unknown option $arg" >&2; exit 2 ;;
    *) ARGS+=("$arg") ;;
  esac
done
PROJECT_ID="${ARGS[0]:-}"
REGION="${ARGS[1]:-us-central1}"
fail() { echo "deploy: $*" >&2; exit 1; }

[ -n "$PROJECT_ID" ] || fail "usage: ./deploy.sh PROJECT_ID [REGION] [--dry-run]"
[[ "$PROJECT_ID" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || fail "PROJECT_ID '$PROJECT_ID' is not a valid Google Cloud project id"
[[ "$PROJECT_ID" != demo-* ]] || fail "PROJECT_ID '$PROJECT_ID' is a local demo- id; deploy to a real project"
[[ "$REGION" =~ ^[a-z]+-[a-z]+[0-9]$ ]] || fail "REGION '$REGION' is not a region like us-central1"

# Prerequisites and config, checked before anything runs (dry run included).
command -v gcloud >/dev/null 2>&1 || fail "gcloud is not installed (install the google-cloud-cli)"
FIREBASE="tools/firebase/node_modules/.bin/firebase"
[ -x "$FIREBASE" ] || FIREBASE="$(command -v firebase || true)"
[ -n "$FIREBASE" ] || fail "firebase-tools is not installed (run scripts/setup, or npm install -g firebase-tools)"
PYTHON=".venv/bin/python"
[ -x "$PYTHON" ] || fail ".venv is missing (run scripts/setup)"
[ -e venv ] || fail "venv is missing (run scripts/setup: the Firebase CLI looks for the functions' virtualenv there)"
for var in FIRESTORE_EMULATOR_HOST FIREBASE_AUTH_EMULATOR_HOST CLOUD_TASKS_EMULATOR_HOST; do
  [ -z "${!var:-}" ] || fail "$var is set: unset emulator variables before deploying"
done

[ -n "${ALERT_EMAIL:-}${ALERT_CHANNEL:-}" ] || fail "ALERT_EMAIL (or ALERT_CHANNEL) is not set: the address the alert policies notify (tools/alerts.py)"
if [ -n "${ALERT_CHANNEL:-}" ]; then ALERT_TARGET=(--channel "$ALERT_CHANNEL"); else ALERT_TARGET=(--email "$ALERT_EMAIL"); fi

ENV_FILE=".env.$PROJECT_ID"
CONFIG_VARS=(TERMS_VERSION ALLOWED_ORIGINS GENERATOR GEMINI_MODEL RETENTION_DAYS STALE_CHARGE_AFTER_S SWEEP_BUDGET_S
             SWEEP_INLINE_PROJECTS CREDIT_PACKS GENERATION_TIMEOUT_S ANALYTICS_RETENTION_DAYS STRIPE_MODE)
# The files the Firebase CLI loads for this deploy, in its order (a later one wins): `.env`, then
# `.env.PROJECT_ID`. They are read with the CLI's own grammar (tools/dotenv.py: `export KEY=`,
# indented keys, quotes, comments), and a line it cannot read stops the deploy, naming the line.
LOADED=()
[ ! -f .env ] || LOADED+=(.env)
[ ! -f "$ENV_FILE" ] || LOADED+=("$ENV_FILE")
config_value() { "$PYTHON" -m tools.dotenv get "$1" "${LOADED[@]}"; }
if [ "${#LOADED[@]}" -gt 0 ]; then
  KEYS="$("$PYTHON" -m tools.dotenv keys "${LOADED[@]}")" || fail "${LOADED[*]}: the Firebase CLI would refuse or misread the lines named above"
  for reserved in GOOGLE_CLOUD_PROJECT GCLOUD_PROJECT K_SERVICE FIREBASE_AUTH_EMULATOR_HOST FIRESTORE_EMULATOR_HOST \
                  CLOUD_TASKS_EMULATOR_HOST PURGE_TASK_URL STRIPE_API_BASE GEMINI_BASE_URL STRIPE_SECRET_KEY STRIPE_WEBHOOK_SECRET GEMINI_API_KEY; do
    ! grep -qx "$reserved" <<<"$KEYS" || fail "${LOADED[*]} sets $reserved: remove it (secrets come from Secret Manager; the rest is local-only, set by the platform or by deploy.sh)"
  done
fi
if [ -f "$ENV_FILE" ]; then
  CONFIG_SOURCE="${LOADED[*]}"
  for var in ALLOWED_ORIGINS TERMS_VERSION; do
    [ -n "$(config_value "$var")" ] || fail "$var is not set in $ENV_FILE"
  done
  # The sweep enqueues its purge tasks in the functions' own region, which it reads from here.
  [ "$(config_value FUNCTIONS_REGION)" = "$REGION" ] || fail "FUNCTIONS_REGION=$REGION is not set in $ENV_FILE (the region deployed to)"
else
  CONFIG_SOURCE="the environment${LOADED[*]:+ and ${LOADED[*]}}"
  [ -n "${ALLOWED_ORIGINS:-}" ] || fail "ALLOWED_ORIGINS is not set (comma-separated web app origins, e.g. https://app.example.com), nor is there a $ENV_FILE"
  [ -n "${TERMS_VERSION:-}" ] || fail "TERMS_VERSION is not set (the terms version users must accept), nor is there a $ENV_FILE"
  GENERATED="$(mktemp)"
  trap 'rm -f "$GENERATED"' EXIT
  for var in "${CONFIG_VARS[@]}"; do
    [ -z "${!var:-}" ] || printf '%s=%s\n' "$var" "${!var}" >> "$GENERATED"
  done
  printf 'FUNCTIONS_REGION=%s\n' "$REGION" >> "$GENERATED"
  for var in "${CONFIG_VARS[@]}"; do
    [ -z "${!var:-}" ] || [ "$("$PYTHON" -m tools.dotenv get "$var" "$GENERATED")" = "${!var}" ] \
      || fail "$var's value would reach the functions changed (the Firebase CLI reads a # or a quote in it as .env syntax): write $ENV_FILE with it quoted instead"
  done
fi

export FUNCTIONS_REGION="$REGION"
G=(--project="$PROJECT_ID" --quiet)
show() { printf '+'; printf ' %q' "$@"; printf '\n'; }
run() {
  show "$@"
  [ "$DRY_RUN" = 1 ] || "$@"
}
# Output of a read-only command; a placeholder in a dry run.
capture() {
  local placeholder="$1"; shift
  if [ "$DRY_RUN" = 1 ]; then show "$@" >&2; echo "$placeholder"; else "$@"; fi
}
sa_email() { echo "$1@${PROJECT_ID}.iam.gserviceaccount.com"; }

echo "== deploying to project $PROJECT_ID, region $REGION$([ "$DRY_RUN" = 1 ] && echo ' (dry run: nothing is called)')"
echo "== functions, as firebase deploy will create them (discovered from main.py):"
PLAN="$("$PYTHON" -m tools.deploy_plan "$PROJECT_ID" "$REGION")" || fail "could not discover the functions in main.py"
echo "$PLAN"
IAM="$("$PYTHON" -m tools.deploy_plan "$PROJECT_ID" "$REGION" --iam)" || fail "could not discover the functions in main.py"
echo "== config for every function, from $CONFIG_SOURCE:"
for file in "${LOADED[@]}" ${GENERATED:+"$GENERATED"}; do sed 's/^/   /' "$file"; done

run gcloud services enable cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com artifactregistry.googleapis.com \
  cloudscheduler.googleapis.com cloudtasks.googleapis.com secretmanager.googleapis.com firestore.googleapis.com eventarc.googleapis.com \
  iam.googleapis.com identitytoolkit.googleapis.com logging.googleapis.com monitoring.googleapis.com "${G[@]}"

# The database's location is chosen once and for good; firebase deploy would create (default) in nam5.
echo "== Firestore database (default) must exist: its location cannot change later"
DESCRIBE=(gcloud firestore databases describe --database='(default)' "${G[@]}")
show "${DESCRIBE[@]}"
if [ "$DRY_RUN" = 0 ] && ! found="$("${DESCRIBE[@]}" 2>&1)"; then
  case "$found" in
    *NOT_FOUND*|*"does not exist"*)
      fail "project $PROJECT_ID has no Firestore database: create it once, choosing its location: gcloud firestore databases create --location=LOCATION --delete-protection --project=$PROJECT_ID" ;;
    *) fail "could not check project $PROJECT_ID's Firestore database: $found" ;;
  esac
fi

SECRETS=($(echo "$IAM" | sed -n 's/^secret [^ ]* //p' | sort -u))
echo "== secrets required in Secret Manager: ${SECRETS[*]:-none}"
for secret in "${SECRETS[@]}"; do
  if [ "$DRY_RUN" = 0 ] && ! gcloud secrets describe "$secret" "${G[@]}" >/dev/null 2>&1; then
    fail "secret $secret is missing in Secret Manager: printf %s \"\$VALUE\" | gcloud secrets create $secret --data-file=- --project=$PROJECT_ID"
  fi
done

echo "== one service account per function, each with only its roles; each secret readable by its function only"
INVOKERS=()
ENQUEUERS=()
while read -r kind account what; do
  case "$kind" in
    account)
      if [ "$DRY_RUN" = 1 ] || ! gcloud iam service-accounts describe "$(sa_email "$account")" "${G[@]}" >/dev/null 2>&1; then
        run gcloud iam service-accounts create "$account" --display-name="credits: $account" "${G[@]}"
      fi ;;
    role) run gcloud projects add-iam-policy-binding "$PROJECT_ID" --member="serviceAccount:$(sa_email "$account")" --role="$what" --condition=None --quiet ;;
    secret) run gcloud secrets add-iam-policy-binding "$what" --member="serviceAccount:$(sa_email "$account")" --role=roles/secretmanager.secretAccessor "${G[@]}" ;;
    actas) run gcloud iam service-accounts add-iam-policy-binding "$(sa_email "$what")" --member="serviceAccount:$(sa_email "$account")" --role=roles/iam.serviceAccountUser "${G[@]}" ;;
    invoker) INVOKERS+=("$account $what") ;;
    enqueuer) ENQUEUERS+=("$account $what") ;;
  esac
done <<<"$IAM"

if [ -n "${GENERATED:-}" ]; then
  echo "== writing $ENV_FILE for the deploy (removed afterwards)"
  if [ "$DRY_RUN" = 0 ]; then cp "$GENERATED" "$ENV_FILE"; trap 'rm -f "$GENERATED" "$ENV_FILE"' EXIT; fi
elif [ "$DRY_RUN" = 0 ]; then
  # deploy.sh adds PURGE_TASK_URL to the project's own file for the deploy: it is put back after.
  ORIGINAL="$(mktemp)"
  cp "$ENV_FILE" "$ORIGINAL"
  trap 'cp "$ORIGINAL" "$ENV_FILE"; rm -f "$ORIGINAL"' EXIT
fi
# The purge tasks name the purgeProject function's URL (PURGE_TASK_URL): Cloud Tasks signs their OIDC
# token for it, and Cloud Run accepts only its own URLs. Known once the function exists; a first
# deploy reads it afterwards and redeploys the sweep with it.
describe_purge_url() {
  local cmd=(gcloud functions describe purgeProject --gen2 --region="$REGION" --format='value(serviceConfig.uri)' --project="$PROJECT_ID")
  if [ "$DRY_RUN" = 1 ]; then capture "https://purgeproject-HASH-${REGION}.a.run.app" "${cmd[@]}"; else "${cmd[@]}" 2>/dev/null || true; fi
}
set_purge_url() {
  echo "== PURGE_TASK_URL=$1 (in $ENV_FILE for the deploy)"
  [ "$DRY_RUN" = 1 ] || printf '\nPURGE_TASK_URL=%s\n' "$1" >> "$ENV_FILE"
}
PURGE_URL="$(describe_purge_url)"
[ -z "$PURGE_URL" ] || set_purge_url "$PURGE_URL"
# Rules and indexes first: new composite indexes build in the background, and the queries that need
# them fail until they are READY, so the functions go out only once they are.
run "$FIREBASE" deploy --only firestore:rules,firestore:indexes --project "$PROJECT_ID" --non-interactive
echo "== waiting for Firestore's composite indexes to be READY"
run tools/wait_for_indexes.sh "$PROJECT_ID"
# firebase.json's predeploy compiles the functions' bytecode first, so it ships (tools/bytecode.py).
# --force: a non-interactive deploy otherwise stops with an error after deploying, asking for a
# cleanup policy for the functions' container images (this sets the CLI's default), and it lets the
# deploy delete a function that main.py no longer declares.
run "$FIREBASE" deploy --only functions --project "$PROJECT_ID" --non-interactive --force
if [ -z "$PURGE_URL" ]; then
  PURGE_URL="$(describe_purge_url)"
  [ -n "$PURGE_URL" ] || fail "could not read purgeProject's URL after the deploy: the sweep would not fan out"
  set_purge_url "$PURGE_URL"
  run "$FIREBASE" deploy --only functions:retention_sweep --project "$PROJECT_ID" --non-interactive --force
fi

# The task queue function cannot declare who may call it or add to its queue (the HTTPS functions'
# invokers are in their declarations): only the sweep's account may, on this queue alone.
for pair in "${INVOKERS[@]}"; do
  read -r account function <<<"$pair"
  run gcloud functions add-invoker-policy-binding "$function" --region="$REGION" --member="serviceAccount:$(sa_email "$account")" "${G[@]}"
done
for pair in "${ENQUEUERS[@]}"; do
  read -r account queue <<<"$pair"
  run gcloud tasks queues add-iam-policy-binding "$queue" --location="$REGION" --member="serviceAccount:$(sa_email "$account")" --role=roles/cloudtasks.enqueuer "${G[@]}"
done
SWEEP_URL="$(capture "https://retention-sweep-HASH-${REGION}.a.run.app" gcloud functions describe retention_sweep --gen2 --region="$REGION" --format='value(serviceConfig.uri)' --project="$PROJECT_ID")"
run "$PYTHON" -m functions.admin schedule --project "$PROJECT_ID" --region "$REGION" --url "$SWEEP_URL" \
  --service-account "$(sa_email sweep-scheduler)" --schedule "${SWEEP_SCHEDULE:-0 3 * * *}"

echo "== log-based metrics and alert policies (tools/alerts.py), notifying ${ALERT_CHANNEL:-$ALERT_EMAIL}"
"$PYTHON" -m tools.alerts "$PROJECT_ID" "${ALERT_TARGET[@]}" $([ "$DRY_RUN" = 1 ] && echo --dry-run) || fail "the alerts were not all created or updated (see above)"

WEBHOOK_URL="$(capture "https://stripe-webhook-HASH-${REGION}.a.run.app" gcloud functions describe stripe_webhook --gen2 --region="$REGION" --format='value(serviceConfig.uri)' --project="$PROJECT_ID")"
echo
echo "Stripe webhook URL (Dashboard > Developers > Webhooks; events: checkout.session.completed,"
echo "checkout.session.async_payment_succeeded, charge.refunded, refund.created, refund.updated, refund.failed,"
echo "charge.refund.updated, charge.dispute.created, charge.dispute.closed, customer.subscription.created,"
echo "customer.subscription.updated, customer.subscription.deleted, invoice.paid, invoice.payment_failed,"
echo "invoice_payment.paid; API version 2025-03-31.basil or later):"
echo "  $WEBHOOK_URL"
