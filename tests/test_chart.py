"""The Helm chart, rendered and linted by a real Helm engine (helm-python-sdk: Helm v4's Go SDK),
for every scenario under charts/esgd/ci/; every rendered object validated with kubernetes-validate
(strict: unknown fields are errors)."""

import json
import os
import re
import typing
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from esgd.cli.main import parser as esgd_parser
from esgd.core.spec import load_spec
from esgd.workflows.owner import Owner
from esgd.workflows.settings import ClusterSettings, drop_none, json_schema, parse_settings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "esgd"
SCENARIOS = sorted(CHART.glob("ci/*-values.yaml"))
KUBE_VERSION = "1.30.0"
NAMESPACE = "ml"
REGEN = os.environ.get("ESGD_REGEN_GOLDEN") == "1"


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def values_of(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def render(chart, values: dict, name: str = "esgd") -> list[dict]:
    out = []
    for template, text in sorted(chart.render(values, name=name, namespace=NAMESPACE).items()):
        if template.endswith(".yaml"):
            out += [dict(doc, _template=template) for doc in yaml.safe_load_all(text) if doc]
    return out


def objects(chart, values, kind=None) -> list[dict]:
    return [o for o in render(chart, values) if kind is None or o["kind"] == kind]


def pod_specs(obj: dict) -> list[dict]:
    if obj["kind"] == "Pod":
        return [obj["spec"]]
    if obj["kind"] in ("Job", "Deployment"):
        return [obj["spec"]["template"]["spec"]]
    return []


def test_there_are_scenarios():
    assert {p.name for p in SCENARIOS} >= {
        "default-values.yaml",
        "gpu-cluster-values.yaml",
        "smoke-values.yaml",
        "run-values.yaml",
        "irsa-values.yaml",
    }


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_scenario_lints_and_every_object_is_valid_kubernetes(chart, scenario):
    values = values_of(scenario)
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    rendered = render(chart, values)
    assert rendered
    for obj in rendered:
        template = obj.pop("_template")
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = f"{template}: {obj['kind']}/{obj['metadata']['name']}"
            pytest.fail(f"{where}: {'.'.join(map(str, error.path))}: {error.message}")
        assert obj["metadata"]["namespace"] == NAMESPACE
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "esgd"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_every_pod_meets_the_restricted_pod_security_standard(chart, scenario):
    pods = [spec for obj in render(chart, values_of(scenario)) for spec in pod_specs(obj)]
    assert pods  # at least the helm test pod
    for spec in pods:
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not any(k in spec for k in ("hostNetwork", "hostPID", "hostIPC"))
        assert not any("hostPath" in v for v in spec.get("volumes", []))
        for container in spec["containers"] + spec.get("initContainers", []):
            c = container["securityContext"]
            assert c["allowPrivilegeEscalation"] is False and c["readOnlyRootFilesystem"] is True
            assert c["capabilities"] == {"drop": ["ALL"]} and c.get("privileged") is not True
            assert "/tmp" in [m["mountPath"] for m in container.get("volumeMounts", [])]
            assert container["resources"]["limits"]["memory"]


def merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, mappings merged key by key; unlike Helm's merge, a None stays None."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def settings_configmap(chart, values: dict) -> ClusterSettings:
    (cm,) = [o for o in objects(chart, values, "ConfigMap") if o["metadata"]["name"] == "esgd-settings"]
    return parse_settings(yaml.safe_load(cm["data"]["settings.yaml"]))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_settings_configmap_is_the_settings_values(chart, scenario):
    """The ConfigMap the controller reads is exactly the chart's `settings` values, the nulls too."""
    values = values_of(scenario)
    from_chart = settings_configmap(chart, values)
    written = merge(values_of(CHART / "values.yaml")["settings"], values.get("settings") or {})
    assert from_chart == parse_settings(written)
    assert drop_none(written) == chart.merge_values(values)["settings"]  # Helm drops the nulls: the rest agrees
    if not values.get("settings"):
        assert from_chart == ClusterSettings()


NULLABLE = {  # alias -> field of the settings that may be null but default to something else
    field.alias: name
    for name, field in ClusterSettings.model_fields.items()
    if field.default is not None and field.default_factory is None and type(None) in typing.get_args(field.annotation)
}


def test_a_null_setting_stays_null_in_the_configmap(chart):
    """Helm deletes a key set to null from the merged values; without the template's explicit null
    the controller would read e.g. the Secret esgd-s3 instead of none."""
    assert {"s3Secret", "parallelism", "stepDeadlineSeconds", "launcherDeadlineSeconds"} <= set(NULLABLE)
    for key, name in NULLABLE.items():
        assert getattr(settings_configmap(chart, {"settings": {key: None}}), name) is None, key
    assert settings_configmap(chart, {}) == ClusterSettings()


def test_values_mirror_every_setting_with_its_default():
    settings = values_of(CHART / "values.yaml")["settings"]
    assert parse_settings(settings) == ClusterSettings()
    full = json.loads(ClusterSettings().model_dump_json(by_alias=True))
    assert key_paths(settings) == key_paths(full)  # every field is there, the null ones too
    assert drop_none(settings) == drop_none(full)  # with the class's defaults


def key_paths(node, prefix=""):
    """Dotted paths of every mapping key, not looking into lists."""
    if not isinstance(node, dict):
        return set()
    return {p for k, v in node.items() for p in {prefix + k} | key_paths(v, prefix + k + ".")}


def test_values_schema_settings_part_is_generated_from_the_settings_class():
    path = CHART / "values.schema.json"
    schema = json.loads(path.read_text())
    generated = json_schema()
    defs = generated.pop("$defs")
    if REGEN:
        schema["properties"]["settings"], schema["$defs"] = generated, defs
        path.write_text(json.dumps(schema, indent=2) + "\n")
    assert schema["properties"]["settings"] == generated and schema["$defs"] == defs, (
        "values.schema.json is stale: ESGD_REGEN_GOLDEN=1 pytest tests/test_chart.py"
    )


def _all_objects_closed(node) -> None:
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, node.get("title") or node.get("description")
        for value in node.values():
            _all_objects_closed(value)
    elif isinstance(node, list):
        for value in node:
            _all_objects_closed(value)


def test_values_schema_rejects_unknown_keys(chart):
    _all_objects_closed(json.loads((CHART / "values.schema.json").read_text()))
    for bad in (
        {"bogus": 1},
        {"settings": {"gpu": {"gpuz": 1}}},
        {"minio": {"enable": True}},
        {"run": {"specs": {}}},
        {"settings": {"retry": {"limit": "3"}}},
        {"settings": {"imagePullPolicy": "Sometimes"}},
    ):
        with pytest.raises(helm.HelmError):
            chart.render(bad, name="esgd", namespace=NAMESPACE)


def test_every_value_is_commented():
    """Each key in values.yaml (outside list items) has a comment line right above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    missing = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- ") or not re.match(r"^\s*[\w.-]+:", line):
            continue
        indent = len(line) - len(line.lstrip())
        previous = lines[i - 1] if i else ""
        in_list_item = any(
            lines[j].lstrip().startswith("- ") and len(lines[j]) - len(lines[j].lstrip()) < indent
            for j in range(max(0, i - 3), i)
        )
        if not previous.strip().startswith("#") and not in_list_item:
            missing.append(stripped)
    assert missing == []


def test_rbac_is_least_privilege(chart):
    roles = {o["metadata"]["name"]: o["rules"] for o in objects(chart, {}, "Role")}
    assert roles == {
        "esgd-controller": [  # no watch (the controller polls with get), no delete (owners and TTLs do)
            {"apiGroups": ["argoproj.io"], "resources": ["workflows"], "verbs": ["create", "get", "list"]},
            {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]},
        ],
        "esgd-workflow": [
            {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}
        ],
    }
    bindings = {o["metadata"]["name"]: o for o in objects(chart, {}, "RoleBinding")}
    assert bindings["esgd-controller"]["subjects"][0]["name"] == "esgd-controller"
    assert bindings["esgd-workflow"]["subjects"][0]["name"] == "esgd-workflow"
    assert {o["metadata"]["name"] for o in objects(chart, {}, "ServiceAccount")} == {"esgd-controller", "esgd-workflow"}
    assert not [o for o in render(chart, {}) if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


# The Kubernetes client's CustomObjectsApi methods, by the RBAC verb they need.
CLIENT_VERBS = {
    "create": "create",
    "get": "get",
    "list": "list",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
    "delete_collection": "deletecollection",
}
CUSTOM_OBJECT_CALL = re.compile(r"\b([a-z_]+?)_(?:namespaced|cluster)_custom_object(_status|_scale)?\b")
PACKAGE_DIRS = ("core", "store", "worker", "controller", "workflows", "analysis", "cli")  # pyproject's package-dir


def custom_object_calls(path: Path) -> set[tuple[str, str]]:
    """(verb, subresource) of every CustomObjectsApi method named in a source file; a watch
    (kubernetes.watch, or watch=True) counts as the verb watch."""
    text = path.read_text()
    calls = {(CLIENT_VERBS.get(m[1], m[1]), (m[2] or "").lstrip("_")) for m in CUSTOM_OBJECT_CALL.finditer(text)}
    if re.search(r"\bwatch\.Watch\b|\bwatch\s*=\s*True\b", text):
        calls.add(("watch", ""))
    return calls


def test_the_controller_role_grants_exactly_the_calls_the_controller_makes(chart):
    """The Role and the code cannot drift apart: every Kubernetes call on custom objects in the
    package (all of them in esgd.controller.argo: the Workflows it creates, polls and lists) is a
    granted verb on workflows, and every granted verb is called."""
    in_argo = custom_object_calls(ROOT / "controller" / "argo.py")
    assert in_argo == {("create", ""), ("get", ""), ("list", "")}
    everywhere = set().union(*(custom_object_calls(p) for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py")))
    assert everywhere == in_argo  # no other module calls the API on its own
    (role,) = [o for o in objects(chart, {}, "Role") if o["metadata"]["name"] == "esgd-controller"]
    granted = {resource: set(rule["verbs"]) for rule in role["rules"] for resource in rule["resources"]}
    assert {verb for verb, sub in in_argo} == granted["workflows"]
    assert all(not sub for verb, sub in in_argo)  # no subresource (workflows/status): none granted
    # The launcher's pod is an Argo pod: its executor writes task results like every workflow pod's.
    (workflow_role,) = [o for o in objects(chart, {}, "Role") if o["metadata"]["name"] == "esgd-workflow"]
    assert granted["workflowtaskresults"] == set(workflow_role["rules"][0]["verbs"]) == {"create", "patch"}


def test_helm_test_pod_runs_the_cluster_check(chart):
    pods = objects(chart, values_of(CHART / "ci/gpu-cluster-values.yaml"), "Pod")
    (pod,) = pods
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    args = esgd_parser().parse_args(container["args"])
    assert container["command"] == ["esgd"] and args.command == "cluster-check"
    assert args.store == "s3://ml-runs/esgd" and args.settings == "/etc/esgd/settings/settings.yaml"
    assert pod["spec"]["serviceAccountName"] == "esgd-controller"
    assert pod["spec"]["priorityClassName"] == "batch-high"
    assert container["image"] == "registry.example.com/ml/esgd:0.1.0"
    assert "envFrom" not in container  # s3Secret null: the service account's IAM role
    assert objects(chart, {"tests": {"enabled": False}}, "Pod") == []
    (default,) = objects(chart, {}, "Pod")
    assert default["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "esgd-s3"}}]


def test_run_from_values_is_a_controller_job(chart):
    values = values_of(CHART / "ci/run-values.yaml")
    rendered = render(chart, values)
    (job,) = [o for o in rendered if o["kind"] == "Job" and "helm.sh/hook" not in o["metadata"].get("annotations", {})]
    spec_cm = next(o for o in rendered if o["kind"] == "ConfigMap" and o["metadata"]["name"] == job["metadata"]["name"])
    assert load_spec(spec_cm["data"]["spec.yaml"]).population.mu == 4
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = esgd_parser().parse_args(container["args"])
    assert args.command == "controller" and args.target == "/etc/esgd/spec/spec.yaml"
    assert (args.store, args.run_id, args.settings) == (
        "s3://runs/esgd",
        "digits-from-helm",
        "/etc/esgd/settings/settings.yaml",
    )
    assert pod["serviceAccountName"] == "team-controller"
    assert not [o for o in rendered if o["kind"] in ("Role", "RoleBinding", "ServiceAccount")]
    assert job["spec"]["activeDeadlineSeconds"] == ClusterSettings().launcher_deadline_seconds
    assert container["envFrom"] == [{"secretRef": {"name": "esgd-s3"}}]
    # A new spec is a new Job (Jobs are immutable), the same spec the same Job.
    other = dict(values, run=dict(values["run"], spec=dict(values["run"]["spec"], generations=4)))
    names = {o["metadata"]["name"] for o in render(chart, other) if o["kind"] == "Job"}
    assert job["metadata"]["name"] not in names


def test_run_job_owns_the_generation_workflows(chart):
    """`--owner job/<name>/$(ESGD_OWNER_UID)`: the Job controller labels its pods with the Job's UID,
    the downward API puts it in the variable and Kubernetes expands it in the args."""
    (job,) = objects(chart, values_of(CHART / "ci/irsa-values.yaml"), "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = esgd_parser().parse_args(container["args"])
    assert args.owner == f"job/{job['metadata']['name']}/$(ESGD_OWNER_UID)"
    assert container["env"] == [
        {
            "name": "ESGD_OWNER_UID",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}},
        }
    ]
    uid = "0c4f6a1e-55b4-4b5e-9f1e-2f3a4b5c6d7e"
    expanded = [a.replace("$(ESGD_OWNER_UID)", uid) for a in container["args"]]  # what the kubelet runs
    owner = Owner.parse(esgd_parser().parse_args(expanded).owner)
    assert owner == Owner("job", job["metadata"]["name"], uid)
    assert owner.reference().api_version == job["apiVersion"] and owner.reference().kind == job["kind"]


@pytest.mark.parametrize(("deadline", "expected"), [(None, None), (3600, 3600), (14 * 86400, 14 * 86400)])
def test_run_job_deadline_is_the_launcher_deadline(chart, deadline, expected):
    values = merge(values_of(CHART / "ci/irsa-values.yaml"), {"settings": {"launcherDeadlineSeconds": deadline}})
    (job,) = objects(chart, values, "Job")
    assert job["spec"].get("activeDeadlineSeconds") == expected  # an integer, never 1.2096e+06


def test_run_needs_a_store_and_a_spec(chart):
    with pytest.raises(helm.HelmError, match="run.store"):
        chart.render({"run": {"enabled": True, "spec": {"name": "x"}}}, name="esgd", namespace=NAMESPACE)
    with pytest.raises(helm.HelmError, match="run.spec"):
        chart.render({"run": {"enabled": True, "store": "s3://b/p"}}, name="esgd", namespace=NAMESPACE)


def test_dev_minio_is_off_by_default_and_wires_the_s3_secret(chart):
    assert not [o for o in render(chart, {}) if o["kind"] in ("Secret", "Deployment")]
    rendered = render(chart, values_of(CHART / "ci/smoke-values.yaml"))
    (secret,) = [o for o in rendered if o["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "esgd-s3"
    assert secret["stringData"]["AWS_ENDPOINT_URL"] == f"http://esgd-minio.{NAMESPACE}.svc:9000"
    (hook,) = [o for o in rendered if o["kind"] == "Job"]
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"


def secret_references(node, where="") -> list[str]:
    """Paths of every reference to a Secret in a pod spec (env, envFrom, volumes, pull secrets)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretRef", "secretKeyRef", "secret", "imagePullSecrets"):
                found.append(f"{where}.{key}")
            found += secret_references(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += secret_references(value, f"{where}[{i}]")
    return found


def test_without_an_s3_secret_no_pod_references_a_secret(chart):
    """settings.s3Secret null (IRSA, workload identity): the run Job, the helm test pod and every other
    pod of the chart reference no Secret, and the settings tell the controller's Workflows the same."""
    values = values_of(CHART / "ci/irsa-values.yaml")
    assert values["settings"]["s3Secret"] is None and values["run"]["enabled"]
    rendered = render(chart, values)
    pods = {f"{o['kind']}/{o['metadata']['name']}": spec for o in rendered for spec in pod_specs(o)}
    assert set(pods) == {f"Job/{o['metadata']['name']}" for o in rendered if o["kind"] == "Job"} | {"Pod/esgd-check"}
    assert {name: secret_references(spec) for name, spec in pods.items()} == dict.fromkeys(pods, [])
    assert not [o for o in rendered if o["kind"] == "Secret"]
    assert settings_configmap(chart, values).s3_secret is None
    # The same with the default Secret: both pods take it.
    with_secret = render(chart, merge(values, {"settings": {"s3Secret": "esgd-s3"}}))
    refs = [r for o in with_secret for spec in pod_specs(o) for r in secret_references(spec)]
    assert refs == [".containers[0].envFrom[0].secretRef"] * 2


def test_dev_minio_needs_an_s3_secret(chart):
    with pytest.raises(helm.HelmError, match="minio.enabled needs settings.s3Secret"):
        chart.render({"minio": {"enabled": True}, "settings": {"s3Secret": None}}, name="esgd", namespace=NAMESPACE)


def test_service_accounts_carry_the_irsa_annotations(chart):
    accounts = {
        o["metadata"]["name"]: o for o in objects(chart, values_of(CHART / "ci/irsa-values.yaml"), "ServiceAccount")
    }
    role = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/esgd"}
    assert {name: o["metadata"]["annotations"] for name, o in accounts.items()} == {
        "esgd-controller": role,
        "esgd-workflow": role,
    }
    # Per account, over the common ones (e.g. GKE workload identity with two Google service accounts).
    gke = "iam.gke.io/gcp-service-account"
    values = {
        "settings": {"s3Secret": None},
        "serviceAccounts": {
            "annotations": {gke: "esgd@ml.iam.gserviceaccount.com", "team": "ml"},
            "controller": {"annotations": {gke: "esgd-controller@ml.iam.gserviceaccount.com"}},
        },
    }
    accounts = {o["metadata"]["name"]: o["metadata"]["annotations"] for o in objects(chart, values, "ServiceAccount")}
    assert accounts == {
        "esgd-controller": {gke: "esgd-controller@ml.iam.gserviceaccount.com", "team": "ml"},
        "esgd-workflow": {gke: "esgd@ml.iam.gserviceaccount.com", "team": "ml"},
    }
    assert all("annotations" not in o["metadata"] for o in objects(chart, {}, "ServiceAccount"))
    gpu_cluster = objects(chart, values_of(CHART / "ci/gpu-cluster-values.yaml"), "ServiceAccount")
    assert {o["metadata"]["name"]: o["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] for o in gpu_cluster} == {
        "esgd-controller": "arn:aws:iam::123456789012:role/esgd-controller",
        "esgd-workflow": "arn:aws:iam::123456789012:role/esgd-workflow",
    }
    assert objects(chart, merge(values, {"serviceAccounts": {"create": False}}), "ServiceAccount") == []


def test_notes_render(chart):
    notes = chart.render(values_of(CHART / "ci/run-values.yaml"), name="esgd", namespace=NAMESPACE)[
        "esgd/templates/NOTES.txt"
    ]
    assert "helm test esgd -n ml" in notes and "argo submit --wait -n ml launcher.yaml" in notes
    assert "kubectl logs -n ml -f job/esgd-run-" in notes
    irsa = chart.render(values_of(CHART / "ci/irsa-values.yaml"), name="esgd", namespace=NAMESPACE)[
        "esgd/templates/NOTES.txt"
    ]
    assert "no Secret (settings.s3Secret is null)" in irsa and "Secret None" not in irsa
