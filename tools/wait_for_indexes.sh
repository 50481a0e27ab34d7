#!/usr/bin/env bash
# Wait until every composite index of the project's Firestore database is READY.
#
#   tools/wait_for_indexes.sh PROJECT_ID [TIMEOUT_S] [POLL_S]
#
# `firebase deploy --only firestore:indexes` returns while new composite indexes are still being
# built, and a query that needs one fails until it is READY (`credits`' statement and the settlement
# of crashed charges need theirs). deploy.sh runs this between the indexes and the functions, so a
# first deploy never serves a function whose queries cannot run yet. Exit 1 on an index that needs
# repair, a listing that fails, or TIMEOUT_S (default 1800) passing first.
set -euo pipefail
PROJECT_ID="${1:?usage: tools/wait_for_indexes.sh PROJECT_ID [TIMEOUT_S] [POLL_S]}"
TIMEOUT_S="${2:-1800}"
POLL_S="${3:-20}"
deadline=$((SECONDS + TIMEOUT_S))
while :; do
  states="$(gcloud firestore indexes composite list --format='value(state)' --project="$PROJECT_ID" --quiet)" \
    || { echo "wait_for_indexes: could not list the composite indexes of $PROJECT_ID" >&2; exit 1; }
  [ -n "$states" ] || { echo "   composite indexes: none"; exit 0; }
  total=$(grep -c . <<<"$states" || true)
  ready=$(grep -cx READY <<<"$states" || true)
  if grep -qvx -e READY -e CREATING <<<"$states"; then
    echo "wait_for_indexes: an index is $(grep -vx -e READY -e CREATING <<<"$states" | head -n 1): see gcloud firestore indexes composite list --project=$PROJECT_ID" >&2
    exit 1
  fi
  if [ "$ready" = "$total" ]; then
    echo "   composite indexes: $ready of $total READY"
    exit 0
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "wait_for_indexes: $((total - ready)) of $total composite indexes still building after ${TIMEOUT_S}s; run deploy.sh again later" >&2
    exit 1
  fi
  echo "   composite indexes: $ready of $total READY, $((total - ready)) building; checking again in ${POLL_S}s"
  sleep "$POLL_S"
done
