"""The Helm chart, rendered and linted by a real Helm engine (helm-python-sdk: Helm v4's Go SDK),
for every scenario under charts/esgd/ci/; every rendered object validated with kubernetes-validate
(strict: unknown fields are errors)."""

import json
import os
import re
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from esgd.cli.main import parser as esgd_parser
from esgd.core.spec import load_spec
from esgd.workflows.settings import ClusterSettings, drop_none, json_schema, parse_settings

CHART = Path(__file__).resolve().parents[1] / "charts" / "esgd"
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


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_settings_configmap_is_the_settings_values(chart, scenario):
    """The ConfigMap the controller reads is exactly the chart's `settings` values."""
    values = values_of(scenario)
    (cm,) = [o for o in objects(chart, values, "ConfigMap") if o["metadata"]["name"] == "esgd-settings"]
    from_chart = parse_settings(yaml.safe_load(cm["data"]["settings.yaml"]))
    merged = chart.merge_values(values)["settings"]
    assert from_chart == parse_settings(merged)
    if not values.get("settings"):
        assert from_chart == ClusterSettings()


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
        "esgd-controller": [
            {
                "apiGroups": ["argoproj.io"],
                "resources": ["workflows"],
                "verbs": ["create", "get", "list", "watch", "delete"],
            },
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
    assert objects(chart, {"tests": {"enabled": False}}, "Pod") == []


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
    # A new spec is a new Job (Jobs are immutable), the same spec the same Job.
    other = dict(values, run=dict(values["run"], spec=dict(values["run"]["spec"], generations=4)))
    names = {o["metadata"]["name"] for o in render(chart, other) if o["kind"] == "Job"}
    assert job["metadata"]["name"] not in names


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


def test_notes_render(chart):
    notes = chart.render(values_of(CHART / "ci/run-values.yaml"), name="esgd", namespace=NAMESPACE)[
        "esgd/templates/NOTES.txt"
    ]
    assert "helm test esgd -n ml" in notes and "argo submit --wait -n ml launcher.yaml" in notes
    assert "kubectl logs -n ml -f job/esgd-run-" in notes
