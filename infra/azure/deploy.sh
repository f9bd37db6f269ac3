#!/usr/bin/env bash
# Blue/green deployment of one environment (.github/workflows/deploy.yml runs it; so can a person
# with `az login`):
#   deploy.sh deploy <weight>   deploy main.bicep; the new API revision takes <weight> % (0: dark)
#   deploy.sh shift <weight>    give the new revision <weight> %, the serving one the rest
#   deploy.sh rollback          all traffic back to the revision that was serving; new one deactivated
# Needs RESOURCE_GROUP, PARAMS (a .bicepparam file) and IMAGE_TAG, plus what the parameter file reads
# (RECSYS_API_KEYS, RECSYS_POSTGRES_ADMIN_PASSWORD, RECSYS_REGISTRY_NAME, ...). `deploy` records the
# revision names in $GITHUB_ENV (or infra/azure/.deploy-state) for the later commands.
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${RESOURCE_GROUP:?set RESOURCE_GROUP}"
STATE_FILE="${GITHUB_ENV:-infra/azure/.deploy-state}"
# shellcheck disable=SC1090,SC1091
[ -f infra/azure/.deploy-state ] && [ -z "${GITHUB_ENV:-}" ] && source infra/azure/.deploy-state

remember() {
  echo "$1=$2" >>"$STATE_FILE"
  export "$1=$2"
}

api_app() {
  az containerapp list -g "$RESOURCE_GROUP" --query "[?ends_with(name, '-api')].name | [0]" -o tsv
}

set_traffic() {
  local new_weight=$1
  if [ -n "${STABLE_REVISION:-}" ] && [ "$STABLE_REVISION" != "$NEW_REVISION" ]; then
    az containerapp ingress traffic set -n "$API_APP" -g "$RESOURCE_GROUP" \
      --revision-weight "$NEW_REVISION=$new_weight" "$STABLE_REVISION=$((100 - new_weight))" -o none
  else
    az containerapp ingress traffic set -n "$API_APP" -g "$RESOURCE_GROUP" \
      --revision-weight "$NEW_REVISION=100" -o none
  fi
  echo "traffic: $NEW_REVISION $new_weight %, ${STABLE_REVISION:-no previous revision} the rest"
}

cmd=${1:?usage: deploy.sh deploy|shift|rollback [weight]}
case "$cmd" in
  deploy)
    weight=${2:?weight of the new revision}
    : "${PARAMS:?set PARAMS}" "${IMAGE_TAG:?set IMAGE_TAG}"
    app=$(api_app || true)
    stable=""
    if [ -n "$app" ]; then
      # the revision with the most traffic is the one serving now
      stable=$(az containerapp ingress traffic show -n "$app" -g "$RESOURCE_GROUP" \
        --query "max_by([?weight > \`0\`], &weight).revisionName" -o tsv)
      # keep only that one active beside the new revision (each active revision runs its replicas)
      az containerapp revision list -n "$app" -g "$RESOURCE_GROUP" \
        --query "[?properties.active && name != '$stable'].name" -o tsv |
        while read -r old; do
          az containerapp revision deactivate -n "$app" -g "$RESOURCE_GROUP" --revision "$old" -o none
        done
    fi
    export RECSYS_IMAGE_TAG="$IMAGE_TAG"
    export RECSYS_API_REVISION_SUFFIX="r${GITHUB_RUN_NUMBER:-$(date +%s)}-${IMAGE_TAG:0:7}"
    export RECSYS_API_STABLE_REVISION="$stable"
    export RECSYS_API_NEW_REVISION_WEIGHT="$weight"
    export RECSYS_REGISTRY_NAME="${RECSYS_REGISTRY_NAME:-${REGISTRY_NAME:?set REGISTRY_NAME}}"
    export RECSYS_REGISTRY_RESOURCE_GROUP="${RECSYS_REGISTRY_RESOURCE_GROUP:-${REGISTRY_RESOURCE_GROUP:?set REGISTRY_RESOURCE_GROUP}}"
    outputs=$(az deployment group create -g "$RESOURCE_GROUP" -n recsys \
      -f infra/azure/main.bicep -p "$PARAMS" --query properties.outputs -o json)
    value() { python3 -c "import json, sys; print(json.load(sys.stdin)['$1']['value'])" <<<"$outputs"; }
    api_name=$(value apiName)
    domain=$(value environmentDomain)
    remember API_APP "$api_name"
    remember NEW_REVISION "$(value apiNewRevision)"
    remember STABLE_REVISION "$stable"
    if [ -n "${GITHUB_OUTPUT:-}" ]; then
      echo "api_host=$(value apiFqdn)" >>"$GITHUB_OUTPUT"
      echo "candidate_host=$api_name---candidate.$domain" >>"$GITHUB_OUTPUT"
    fi
    echo "deployed $NEW_REVISION at $weight % (serving before: ${stable:-none})"
    ;;
  shift)
    set_traffic "${2:?weight of the new revision}"
    ;;
  rollback)
    if [ -z "${STABLE_REVISION:-}" ] || [ "$STABLE_REVISION" = "$NEW_REVISION" ]; then
      echo "no previous revision to return to: $NEW_REVISION keeps its traffic" >&2
      exit 1
    fi
    az containerapp ingress traffic set -n "$API_APP" -g "$RESOURCE_GROUP" \
      --revision-weight "$STABLE_REVISION=100" "$NEW_REVISION=0" -o none
    az containerapp revision deactivate -n "$API_APP" -g "$RESOURCE_GROUP" --revision "$NEW_REVISION" -o none
    echo "rolled back: $STABLE_REVISION 100 %, $NEW_REVISION deactivated"
    ;;
  *)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
