#!/usr/bin/env bash
# Smoke test of the whole cluster path (`make smoke`): a kind cluster with Argo Workflows v4, the
# esgd image (CPU flavour of torch) built and loaded, the chart installed with its development MinIO,
# a 2-generation CPU run submitted from a compiled launcher with `argo submit --wait`, and the
# parents manifest checked in MinIO.
#
# Needs docker (with a running daemon), kind, kubectl, helm, argo and timeout (GNU coreutils; on
# macOS `brew install coreutils`) on PATH, and the network to pull images and Argo's install
# manifest. It cannot run on the project's CI machines (no Docker there); run it on a workstation.
#
#   scripts/kind-smoke.sh                      # creates the cluster esgd-smoke, deletes it at the end
#   KEEP_CLUSTER=1 scripts/kind-smoke.sh       # keeps the cluster to look around (kubectl, argo list)
#   SMOKE_TIMEOUT=45m scripts/kind-smoke.sh    # a slower machine or network
#
# Every invocation runs under a run id of its own (smoke-<epoch seconds>-<random>), so on a kept
# cluster it starts a new run instead of finding the finished one of an earlier invocation.
# The whole test, cluster to check, must finish within SMOKE_TIMEOUT (default 30m; seconds, or a
# number with s, m or h). On any failure, the timeout included, it prints the pods and Workflows of
# the cluster, `kubectl describe` of every pod that did not succeed, and the logs of every pod of
# the esgd and argo namespaces, before it deletes the cluster.
#
# Settings (environment): CLUSTER, NAMESPACE, IMAGE, ARGO_VERSION, ARGO_INSTALL_URL, SMOKE_TIMEOUT,
# KEEP_CLUSTER (KEEP is still read), SMOKE_RUN_ID (to resume a run on a kept cluster on purpose).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-esgd-smoke}
NAMESPACE=${NAMESPACE:-esgd}
IMAGE=${IMAGE:-esgd:smoke}
ARGO_VERSION=${ARGO_VERSION:-v4.1.2}
ARGO_INSTALL_URL=${ARGO_INSTALL_URL:-https://github.com/argoproj/argo-workflows/releases/download/${ARGO_VERSION}/install.yaml}
KEEP_CLUSTER=${KEEP_CLUSTER:-${KEEP:-0}}
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-30m}
RELEASE=esgd
STORE=s3://esgd/smoke  # the bucket `esgd` of the chart's development MinIO (ci/smoke-values.yaml)
MU=4

missing=()
for tool in docker kind kubectl helm argo timeout; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "kind-smoke: not on PATH: ${missing[*]}" >&2
  echo "kind-smoke: it needs docker, kind, kubectl, helm, argo (the Argo Workflows ${ARGO_VERSION} CLI) and timeout (GNU coreutils)." >&2
  echo "kind-smoke: it cannot run on the project's CI machines, which have no Docker." >&2
  exit 2
fi
if [[ ! $SMOKE_TIMEOUT =~ ^([0-9]+)([smh]?)$ ]] || ((10#${BASH_REMATCH[1]} == 0)); then
  echo "kind-smoke: SMOKE_TIMEOUT must be seconds or a number with s, m or h (1800, 30m, 1h), not '$SMOKE_TIMEOUT'" >&2
  exit 2
fi
case "${BASH_REMATCH[2]}" in
  h) timeout_s=$((10#${BASH_REMATCH[1]} * 3600)) ;;
  m) timeout_s=$((10#${BASH_REMATCH[1]} * 60)) ;;
  *) timeout_s=$((10#${BASH_REMATCH[1]})) ;;
esac
if ! docker info >/dev/null 2>&1; then
  echo "kind-smoke: docker is installed but its daemon does not answer (is it running, may this user use it?)" >&2
  exit 2
fi

# A run of its own for every invocation: a kept cluster's MinIO still holds the earlier runs, and
# the controller would resume a finished one (and "pass") under the same id.
RUN_ID=${SMOKE_RUN_ID:-smoke-$(date +%s)-$RANDOM}
DEADLINE=$((SECONDS + timeout_s))
CONTEXT="kind-$CLUSTER"

# Runs "$@" with what is left of SMOKE_TIMEOUT as its time limit (exit 124 when it runs out).
bounded() {
  local left=$((DEADLINE - SECONDS))
  if ((left <= 0)); then
    echo "kind-smoke: SMOKE_TIMEOUT ($SMOKE_TIMEOUT) has passed" >&2
    return 124
  fi
  local status=0
  timeout --foreground --kill-after=30 "$left" "$@" || status=$?
  if ((status == 124 || status == 137)); then
    echo "kind-smoke: SMOKE_TIMEOUT ($SMOKE_TIMEOUT) passed during: $*" >&2
  elif ((status != 0)); then
    echo "kind-smoke: exit status $status from: $*" >&2
  fi
  return "$status"
}

# What a failure leaves to look at, printed before the cluster goes: pods and Workflows everywhere,
# `kubectl describe` of every pod in the esgd and argo namespaces that did not succeed, and the
# logs of every pod there (all containers: Argo's init and wait containers too).
dump_cluster() {
  local k=(kubectl --context "$CONTEXT" --request-timeout=30s) ns pod previous
  echo "kind-smoke: ===== pods and Workflows" >&2
  "${k[@]}" get pods,workflows -A -o wide >&2 || "${k[@]}" get pods -A -o wide >&2 || true
  for ns in "$NAMESPACE" argo; do
    echo "kind-smoke: ===== events in $ns" >&2
    "${k[@]}" get events -n "$ns" --sort-by=.lastTimestamp >&2 || true
    for pod in $("${k[@]}" get pods -n "$ns" --field-selector=status.phase!=Succeeded -o name 2>/dev/null); do
      echo "kind-smoke: ===== kubectl describe -n $ns $pod" >&2
      "${k[@]}" describe -n "$ns" "$pod" >&2 || true
    done
    for pod in $("${k[@]}" get pods -n "$ns" -o name 2>/dev/null); do
      echo "kind-smoke: ===== logs -n $ns $pod" >&2
      "${k[@]}" logs -n "$ns" "$pod" --all-containers --prefix --tail=2000 >&2 || true
      if previous=$("${k[@]}" logs -n "$ns" "$pod" --all-containers --prefix --tail=2000 --previous 2>/dev/null) \
        && [ -n "$previous" ]; then
        printf 'kind-smoke: ===== logs -n %s %s --previous (containers that restarted)\n%s\n' "$ns" "$pod" "$previous" >&2
      fi
    done
  done
}

work=$(mktemp -d)
cleanup() {
  local status=$?
  trap - ERR
  set +e
  if [ "$status" -ne 0 ]; then
    echo "kind-smoke: FAILED (exit status $status) in run $RUN_ID" >&2
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
      dump_cluster
    fi
  fi
  rm -rf "$work"
  if [ "$KEEP_CLUSTER" != 1 ]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  else
    echo "kind-smoke: cluster $CLUSTER kept (kind delete cluster --name $CLUSTER); run id $RUN_ID" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
# The line that failed (a failure inside `bounded` has named its command already).
on_error() { [[ $2 == return* ]] && set -- "$1" "see above"; echo "kind-smoke: line $1 failed: $2" >&2; }
trap 'on_error "$LINENO" "$BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM
step() { printf '\n== %s (%ss left)\n' "$*" "$((DEADLINE - SECONDS))"; }

step "kind cluster $CLUSTER; run $RUN_ID, within ${timeout_s}s"
kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || bounded kind create cluster --name "$CLUSTER" --wait 180s
kubectl config use-context "$CONTEXT"

step "Argo Workflows $ARGO_VERSION"
kubectl create namespace argo --dry-run=client -o yaml | kubectl apply -f -
bounded kubectl apply --server-side -n argo -f "$ARGO_INSTALL_URL"
bounded kubectl -n argo rollout status deployment/workflow-controller --timeout=300s

step "image $IMAGE (CPU flavour of torch)"
bounded docker build --build-arg TORCH_FLAVOUR=cpu -t "$IMAGE" .
bounded kind load docker-image "$IMAGE" --name "$CLUSTER"

step "chart, with the development MinIO"
bounded helm upgrade --install "$RELEASE" charts/esgd -n "$NAMESPACE" --create-namespace \
  -f charts/esgd/ci/smoke-values.yaml --set settings.image="$IMAGE" --wait --timeout 10m
bounded helm test "$RELEASE" -n "$NAMESPACE" --logs

step "a 2-generation CPU run $RUN_ID: esgd compile --launcher, then argo submit --wait"
cat >"$work/spec.yaml" <<YAML
name: smoke
task: esgd.worker.tasks.digits:task
task_args: {hidden: 16}
generations: 2
population: {mu: $MU, offspring: 4, rho: 2, elite: 2}
finetune: {epochs: 1}
YAML
kubectl get configmap -n "$NAMESPACE" "$RELEASE-settings" -o jsonpath='{.data.settings\.yaml}' >"$work/settings.yaml"
chmod a+rwx "$work"
bounded docker run --rm -v "$work:/work" "$IMAGE" compile /work/spec.yaml --launcher \
  --settings /work/settings.yaml --store "$STORE" --run-id "$RUN_ID" -o /work/launcher.yaml
# argo submit has no time limit of its own (--request-timeout is per request): `timeout` bounds it.
bounded argo submit --wait -n "$NAMESPACE" "$work/launcher.yaml"  # exits non-zero when the run fails
argo list -n "$NAMESPACE"

step "the parents manifest of generation 2 of $RUN_ID in MinIO"
kubectl delete pod -n "$NAMESPACE" esgd-smoke-check --ignore-not-found
kubectl apply -n "$NAMESPACE" -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: esgd-smoke-check
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 10001, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: check
      image: $IMAGE
      imagePullPolicy: Never
      envFrom: [{secretRef: {name: esgd-s3}}]
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
      volumeMounts: [{name: tmp, mountPath: /tmp}]
      command: [python, -c]
      args:
        - |
          from esgd.core import keys
          from esgd.core.records import Member
          from esgd.core.tables import rows
          from esgd.store.uri import open_run
          store, run = open_run("$STORE/runs/$RUN_ID")
          parents = rows(store.get(keys.parents(run, 2)), Member)
          assert len(parents) == $MU, parents
          assert store.exists(keys.final_manifest(run)), "no final manifest"
          print("parents of generation 2:", ", ".join(m.member for m in parents))
          print("best fitness %.4f" % min(m.fitness for m in parents))
  volumes: [{name: tmp, emptyDir: {}}]
YAML
bounded kubectl wait -n "$NAMESPACE" pod/esgd-smoke-check --for=jsonpath='{.status.phase}'=Succeeded --timeout=180s
kubectl logs -n "$NAMESPACE" esgd-smoke-check
echo
echo "kind-smoke: OK (run $RUN_ID)"
