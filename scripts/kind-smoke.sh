#!/usr/bin/env bash
# Smoke test of the whole cluster path (`make smoke`): a kind cluster with Argo Workflows v4, the
# esgd image (CPU variant) built and loaded, the chart installed with its development MinIO, a
# 2-generation CPU run submitted from a compiled launcher with `argo submit --wait`, and the
# parents manifest checked in MinIO.
#
# Needs docker (with a running daemon), kind, kubectl, helm and argo on PATH, and the network to
# pull images and Argo's install manifest. It cannot run on the project's CI machines (no Docker
# there); run it on a workstation.
#
#   scripts/kind-smoke.sh                 # creates the cluster esgd-smoke, deletes it at the end
#   KEEP=1 scripts/kind-smoke.sh          # keeps the cluster to look around (kubectl, argo list)
#
# Settings (environment): CLUSTER, NAMESPACE, IMAGE, ARGO_VERSION, ARGO_INSTALL_URL, KEEP.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-esgd-smoke}
NAMESPACE=${NAMESPACE:-esgd}
IMAGE=${IMAGE:-esgd:smoke}
ARGO_VERSION=${ARGO_VERSION:-v4.1.2}
ARGO_INSTALL_URL=${ARGO_INSTALL_URL:-https://github.com/argoproj/argo-workflows/releases/download/${ARGO_VERSION}/install.yaml}
KEEP=${KEEP:-0}
RELEASE=esgd
RUN_ID=smoke
STORE=s3://esgd/smoke  # the bucket `esgd` of the chart's development MinIO (ci/smoke-values.yaml)
MU=4

missing=()
for tool in docker kind kubectl helm argo; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "kind-smoke: not on PATH: ${missing[*]}" >&2
  echo "kind-smoke: it needs docker, kind, kubectl, helm and argo (the Argo Workflows ${ARGO_VERSION} CLI)." >&2
  echo "kind-smoke: it cannot run on the project's CI machines, which have no Docker." >&2
  exit 2
fi
if ! docker info >/dev/null 2>&1; then
  echo "kind-smoke: docker is installed but its daemon does not answer (is it running, may this user use it?)" >&2
  exit 2
fi

work=$(mktemp -d)
cleanup() {
  local status=$?
  if [ "$status" -ne 0 ] && kubectl config current-context 2>/dev/null | grep -qx "kind-$CLUSTER"; then
    echo "kind-smoke: FAILED; Workflows and pods in $NAMESPACE:" >&2
    argo list -n "$NAMESPACE" >&2 || true
    kubectl get pods -n "$NAMESPACE" >&2 || true
  fi
  rm -rf "$work"
  if [ "$KEEP" != 1 ]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  else
    echo "kind-smoke: cluster $CLUSTER kept (kind delete cluster --name $CLUSTER)"
  fi
  exit "$status"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "kind cluster $CLUSTER"
kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 180s
kubectl config use-context "kind-$CLUSTER"

step "Argo Workflows $ARGO_VERSION"
kubectl create namespace argo --dry-run=client -o yaml | kubectl apply -f -
kubectl apply --server-side -n argo -f "$ARGO_INSTALL_URL"
kubectl -n argo rollout status deployment/workflow-controller --timeout=300s

step "image $IMAGE (CPU variant)"
docker build --build-arg VARIANT=cpu -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "chart, with the development MinIO"
helm upgrade --install "$RELEASE" charts/esgd -n "$NAMESPACE" --create-namespace \
  -f charts/esgd/ci/smoke-values.yaml --set settings.image="$IMAGE" --wait --timeout 10m
helm test "$RELEASE" -n "$NAMESPACE" --logs

step "a 2-generation CPU run: esgd compile --launcher, then argo submit --wait"
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
docker run --rm -v "$work:/work" "$IMAGE" compile /work/spec.yaml --launcher \
  --settings /work/settings.yaml --store "$STORE" --run-id "$RUN_ID" -o /work/launcher.yaml
argo submit --wait -n "$NAMESPACE" "$work/launcher.yaml"  # exits non-zero when the run fails
argo list -n "$NAMESPACE"

step "the parents manifest of generation 2 in MinIO"
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
kubectl wait -n "$NAMESPACE" pod/esgd-smoke-check --for=jsonpath='{.status.phase}'=Succeeded --timeout=180s \
  || { kubectl logs -n "$NAMESPACE" esgd-smoke-check >&2 || true; exit 1; }
kubectl logs -n "$NAMESPACE" esgd-smoke-check
echo
echo "kind-smoke: OK"
