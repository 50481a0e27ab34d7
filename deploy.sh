#!/usr/bin/env bash
# Deploy every function (Cloud Functions 2nd gen), Firestore rules and indexes, and the nightly
# Cloud Scheduler job, to one Google Cloud project. Idempotent: run it again to update.
#
#   ./deploy.sh PROJECT_ID [REGION] [--dry-run]
#
# --dry-run prints every command it would run and calls no cloud tool.
# Config from the environment (see README): ALLOWED_ORIGINS and TERMS_VERSION are required;
# GENERATOR, GEMINI_MODEL, RETENTION_DAYS, STALE_CHARGE_AFTER_S, SWEEP_BUDGET_S, CREDIT_PACKS,
# GENERATION_TIMEOUT_S, ANALYTICS_RETENTION_DAYS and SWEEP_SCHEDULE are passed on when set.
# Secrets live in Secret Manager: STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, GEMINI_API_KEY.
set -euo pipefail
cd "$(dirname "$0")"

DRY_RUN=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
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
FIREBASE="node_modules/.bin/firebase"
[ -x "$FIREBASE" ] || FIREBASE="$(command -v firebase || true)"
[ -n "$FIREBASE" ] || fail "firebase-tools is not installed (run scripts/setup, or npm install -g firebase-tools)"
PYTHON=".venv/bin/python"
[ -x "$PYTHON" ] || fail ".venv is missing (run scripts/setup)"
[ -n "${ALLOWED_ORIGINS:-}" ] || fail "ALLOWED_ORIGINS is not set (comma-separated web app origins, e.g. https://app.example.com)"
[ -n "${TERMS_VERSION:-}" ] || fail "TERMS_VERSION is not set (the terms version users must accept)"
for var in FIRESTORE_EMULATOR_HOST FIREBASE_AUTH_EMULATOR_HOST; do
  [ -z "${!var:-}" ] || fail "$var is set: unset emulator variables before deploying"
done
GENERATOR="${GENERATOR:-gemini}"
SECRETS=(STRIPE_SECRET_KEY STRIPE_WEBHOOK_SECRET)
GENERATE_SECRETS=""
if [ "$GENERATOR" = gemini ]; then SECRETS+=(GEMINI_API_KEY); GENERATE_SECRETS=GEMINI_API_KEY; fi

RUNTIME_SA="credits-functions@${PROJECT_ID}.iam.gserviceaccount.com"
SCHEDULER_SA="credits-scheduler@${PROJECT_ID}.iam.gserviceaccount.com"
G=(--project="$PROJECT_ID" --quiet)

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$DRY_RUN" = 1 ] || "$@"
}
# Output of a read-only command; a placeholder in a dry run.
capture() {
  local placeholder="$1"; shift
  if [ "$DRY_RUN" = 1 ]; then { printf '+'; printf ' %q' "$@"; printf '\n'; } >&2; echo "$placeholder"; else "$@"; fi
}
ensure_sa() {
  local email="$1" name="${1%%@*}"
  if [ "$DRY_RUN" = 1 ] || ! gcloud iam service-accounts describe "$email" "${G[@]}" >/dev/null 2>&1; then
    run gcloud iam service-accounts create "$name" --display-name="$2" "${G[@]}"
  fi
}

echo "== deploying to project $PROJECT_ID, region $REGION$([ "$DRY_RUN" = 1 ] && echo ' (dry run: nothing is called)')"
run gcloud services enable cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com \
  artifactregistry.googleapis.com cloudscheduler.googleapis.com secretmanager.googleapis.com firestore.googleapis.com "${G[@]}"

echo "== secrets required in Secret Manager: ${SECRETS[*]}"
for secret in "${SECRETS[@]}"; do
  if [ "$DRY_RUN" = 0 ] && ! gcloud secrets describe "$secret" "${G[@]}" >/dev/null 2>&1; then
    fail "secret $secret is missing in Secret Manager: printf %s \"\$VALUE\" | gcloud secrets create $secret --data-file=- --project=$PROJECT_ID"
  fi
done

ensure_sa "$RUNTIME_SA" "credits functions runtime"
ensure_sa "$SCHEDULER_SA" "credits nightly sweep caller"
run gcloud projects add-iam-policy-binding "$PROJECT_ID" --member="serviceAccount:$RUNTIME_SA" --role=roles/datastore.user --condition=None --quiet
for secret in "${SECRETS[@]}"; do
  run gcloud secrets add-iam-policy-binding "$secret" --member="serviceAccount:$RUNTIME_SA" --role=roles/secretmanager.secretAccessor "${G[@]}"
done

ENV_FILE="$(mktemp)"
trap 'rm -f "$ENV_FILE"' EXIT
{
  echo "GOOGLE_CLOUD_PROJECT: '$PROJECT_ID'"
  for var in TERMS_VERSION ALLOWED_ORIGINS GENERATOR GEMINI_MODEL RETENTION_DAYS STALE_CHARGE_AFTER_S SWEEP_BUDGET_S \
             CREDIT_PACKS GENERATION_TIMEOUT_S ANALYTICS_RETENTION_DAYS; do
    if [ -n "${!var:-}" ] || [ "$var" = GENERATOR ]; then
      value="${!var:-$GENERATOR}"
      printf "%s: '%s'\n" "$var" "${value//\'/\'\'}"
    fi
  done
} > "$ENV_FILE"
echo "== environment for every function ($ENV_FILE):"
sed 's/^/   /' "$ENV_FILE"

# name | memory | timeout | concurrency | max instances | public | secrets
FUNCTIONS=(
  "generate|512Mi|120s|20|100|public|$GENERATE_SECRETS"
  "consent|256Mi|30s|80|50|public|"
  "credits|256Mi|30s|80|50|public|"
  "checkout|256Mi|60s|40|50|public|STRIPE_SECRET_KEY"
  "stripe_webhook|256Mi|60s|40|50|public|STRIPE_WEBHOOK_SECRET"
  "retention_sweep|512Mi|540s|1|1|private|"
)
for spec in "${FUNCTIONS[@]}"; do
  IFS='|' read -r name memory timeout concurrency max_instances access secrets <<<"$spec"
  flags=(--gen2 --runtime=python311 --region="$REGION" --source=. --entry-point="$name" --trigger-http
         --memory="$memory" --cpu=1 --timeout="$timeout" --concurrency="$concurrency" --max-instances="$max_instances"
         --service-account="$RUNTIME_SA" --env-vars-file="$ENV_FILE")
  if [ "$access" = public ]; then flags+=(--allow-unauthenticated); else flags+=(--no-allow-unauthenticated); fi
  if [ -n "$secrets" ]; then
    binding=""
    for s in ${secrets//,/ }; do binding+="${binding:+,}$s=$s:latest"; done
    flags+=(--set-secrets="$binding")
  fi
  run gcloud functions deploy "$name" "${flags[@]}" "${G[@]}"
done

# Only the scheduler's service account may invoke the sweep.
run gcloud functions add-invoker-policy-binding retention_sweep --region="$REGION" --member="serviceAccount:$SCHEDULER_SA" "${G[@]}"
SWEEP_URL="$(capture "https://retention-sweep-HASH-${REGION}.a.run.app" gcloud functions describe retention_sweep --gen2 --region="$REGION" --format='value(serviceConfig.uri)' --project="$PROJECT_ID")"
run "$PYTHON" -m functions.admin schedule --project "$PROJECT_ID" --region "$REGION" --url "$SWEEP_URL" \
  --service-account "$SCHEDULER_SA" --schedule "${SWEEP_SCHEDULE:-0 3 * * *}"

run "$FIREBASE" deploy --only firestore:rules,firestore:indexes --project "$PROJECT_ID" --non-interactive

WEBHOOK_URL="$(capture "https://stripe-webhook-HASH-${REGION}.a.run.app" gcloud functions describe stripe_webhook --gen2 --region="$REGION" --format='value(serviceConfig.uri)' --project="$PROJECT_ID")"
echo
echo "Stripe webhook URL (Dashboard > Developers > Webhooks; events: checkout.session.completed,"
echo "checkout.session.async_payment_succeeded, charge.refunded, charge.dispute.created):"
echo "  $WEBHOOK_URL"
