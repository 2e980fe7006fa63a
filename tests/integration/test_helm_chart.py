"""The Helm chart (deploy/helm/portwatch): `helm lint`, then assertions on what `helm template`
renders with the default values and with overrides; every reference in a render resolves;
every object decodes strictly with the Kubernetes API's own types (``kubecheck``).

Owns: checks of the chart's rendered Kubernetes objects. Needs the helm and kubecheck
binaries, which ``deploy/helm/install-helm.sh`` and ``install-kubecheck.sh`` build from the Go
module proxy into ``.cache/bin`` (``make helm``); without them the tests skip, except under
``CI=true`` where a missing binary is a broken pipeline and fails.
Must not touch: any cluster (``helm template`` and ``helm lint`` render offline).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from portwatch.settings import Settings
from producers.targets import SCOPE_ALLOW_ENV, read_inventory

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "portwatch"
LOCAL_HELM = REPO / ".cache" / "bin" / "helm"
RELEASE = "pw"
BASE = f"{RELEASE}-portwatch"
NAMESPACE = "scans"
SETTINGS_ENVS = {env for _name, env, _default, _why in Settings.describe()}
# Settings the chart sets from its own values (addresses; the engine is tied to discover.netRaw).
FROM_VALUES = {"PORTWATCH_KAFKA", "PORTWATCH_STORE", "PORTWATCH_ENGINE", "PORTWATCH_RATE",
               "PORTWATCH_SCOPE_ALLOW", "PORTWATCH_ALERTS"}

Objects = dict[tuple[str, str], dict[str, Any]]


def _is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


@pytest.fixture(scope="module")
def helm() -> str:
    found = str(LOCAL_HELM) if os.access(LOCAL_HELM, os.X_OK) else shutil.which("helm")
    if found is None:
        reason = "helm not found at .cache/bin/helm or on PATH: run deploy/helm/install-helm.sh"
        if _is_ci():
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return found


LOCAL_KUBECHECK = REPO / ".cache" / "bin" / "kubecheck"


@pytest.fixture(scope="module")
def kubecheck() -> str:
    """deploy/helm/kubecheck: decodes objects strictly with the Kubernetes API's types."""
    if not os.access(LOCAL_KUBECHECK, os.X_OK):
        reason = "kubecheck not found at .cache/bin: run deploy/helm/install-kubecheck.sh"
        if _is_ci():
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return str(LOCAL_KUBECHECK)


def _run(helm: str, *args: str, tmp_path: Path, values: dict[str, Any] | None = None
         ) -> subprocess.CompletedProcess[str]:
    extra: list[str] = []
    if values is not None:
        values_file = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
        values_file.write_text(yaml.safe_dump(values), encoding="utf-8")
        extra = ["--values", str(values_file)]
    # HELM_* homes in tmp_path: helm must not read or write the user's helm configuration.
    env = {**os.environ, "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
           "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
           "HELM_DATA_HOME": str(tmp_path / "helm-data")}
    return subprocess.run([helm, *args, *extra], capture_output=True, text=True, timeout=120,
                          env=env, check=False)


def render(helm: str, tmp_path: Path, values: dict[str, Any] | None = None) -> Objects:
    """`helm template`, parsed: (kind, name) -> object."""
    proc = _run(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                tmp_path=tmp_path, values=values)
    assert proc.returncode == 0, proc.stderr
    objects: Objects = {}
    for doc in yaml.safe_load_all(proc.stdout):
        if doc:
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"rendered twice: {key}"
            objects[key] = doc
    return objects


def render_error(helm: str, tmp_path: Path, values: dict[str, Any]) -> str:
    proc = _run(helm, "template", RELEASE, str(CHART), tmp_path=tmp_path, values=values)
    assert proc.returncode != 0, "rendering should have been refused"
    return proc.stderr


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(obj)["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def effective_env(objects: Objects, ctr: dict[str, Any]) -> dict[str, Any]:
    """The environment the kubelet would give the container: envFrom ConfigMaps, then env
    (later wins); a secretKeyRef stays a ("secret", name, key) reference."""
    env: dict[str, Any] = {}
    for source in ctr.get("envFrom", []):
        if "secretRef" in source:  # every key of the Secret, kept as a reference
            name = source["secretRef"]["name"]
            secret = objects.get(("Secret", name), {"data": {}})
            env.update({key: ("secret", name, key) for key in secret["data"]})
            continue
        cm = objects[("ConfigMap", source["configMapRef"]["name"])]
        env.update(cm["data"])
    for var in ctr.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = ("secret", ref["name"], ref["key"])
    return env


def expanded_args(objects: Objects, ctr: dict[str, Any]) -> list[str]:
    """args after the kubelet's $(VAR) expansion; an unresolvable reference fails the test
    (Kubernetes would pass it through literally)."""
    env = effective_env(objects, ctr)

    def expand(match: re.Match[str]) -> str:
        value = env.get(match.group(1))
        assert isinstance(value, str), f"$({match.group(1)}) is not in the container's env"
        return value

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", expand, arg) for arg in ctr["args"]]


def chart_app_version() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    return str(chart["appVersion"])


WORKLOADS = [("Deployment", f"{BASE}-discover"), ("Deployment", f"{BASE}-process"),
             ("CronJob", f"{BASE}-produce")]
WEB_OBJECTS = [("Deployment", f"{BASE}-web"), ("Service", f"{BASE}-web"),
               ("Secret", f"{BASE}-web")]
INVENTORY = [{"targets": ["vpn.example.internal", "mail.example.internal"],
              "organization": "Example Corp", "asset": "office"}]


# -- lint -------------------------------------------------------------------------------------


def test_helm_lint_passes_with_default_and_full_values(helm: str, tmp_path: Path) -> None:
    # Given the chart, with its defaults and with every optional branch switched on
    full = {"produce": {"inventory": INVENTORY, "ports": "1-1024", "timeZone": "Europe/Paris"},
            "clickhouse": {"existingSecret": "ch"}, "scopeAllow": "198.18.0.0/15",
            "discover": {"hostNetwork": True}, "settings": {"PORTWATCH_TIMEOUT": "2"},
            "web": {"existingSecret": "web", "allowedHosts": ["proxy.example.internal"],
                    "ingress": {"enabled": True, "host": "ports.example.internal",
                                "className": "nginx", "tlsSecretName": "ports-tls"}},
            "grafana": {"dashboards": {"namespace": "monitoring",
                                       "annotations": {"grafana_folder": "portwatch"}}}}
    for values in (None, full):
        # When helm lints it strictly (warnings are failures)
        proc = _run(helm, "lint", "--strict", str(CHART), tmp_path=tmp_path, values=values)
        # Then it passes
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


# -- what is rendered -------------------------------------------------------------------------


def test_default_render_has_every_component(helm: str, tmp_path: Path) -> None:
    # Given the default values / When rendered
    objects = render(helm, tmp_path)
    # Then exactly these objects exist (no inventory ConfigMap: no inventory given)
    assert set(objects) == {
        ("ServiceAccount", BASE), ("ConfigMap", f"{BASE}-settings"),
        ("Secret", f"{BASE}-clickhouse"), *WORKLOADS, *WEB_OBJECTS,
        ("ConfigMap", f"{BASE}-dashboards"),
    }
    # And every pod runs the chart's image with the component's command, as the service
    # account, without an API token
    for key in WORKLOADS:
        ctr = container(objects[key])
        assert ctr["image"] == f"portwatch:{chart_app_version()}"
        assert ctr["command"] == ["portwatch"]
        assert ctr["args"][0] == key[1].rsplit("-", 1)[1]
        spec = pod_spec(objects[key])
        assert spec["serviceAccountName"] == BASE
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert objects[("ServiceAccount", BASE)]["automountServiceAccountToken"] is False


def test_disabled_components_are_not_rendered(helm: str, tmp_path: Path) -> None:
    # Given process and produce disabled / When rendered
    objects = render(helm, tmp_path, {"process": {"enabled": False},
                                      "produce": {"enabled": False},
                                      "web": {"enabled": False},
                                      "grafana": {"dashboards": {"enabled": False}}})
    # Then neither they nor the password Secret (only process pods use it) exist
    assert {kind_name for kind_name in objects if kind_name[0] != "ServiceAccount"} == {
        ("ConfigMap", f"{BASE}-settings"), ("Deployment", f"{BASE}-discover")}


def test_image_tag_and_digest_from_values(helm: str, tmp_path: Path) -> None:
    # Given an image repository and tag, then a digest
    tagged = render(helm, tmp_path, {"image": {"repository": "registry.example/pw",
                                               "tag": "1.2.3"}})
    pinned = render(helm, tmp_path, {"image": {"digest": "sha256:" + "a" * 64}})
    # Then every container uses it, the digest winning over the tag
    for key in WORKLOADS:
        assert container(tagged[key])["image"] == "registry.example/pw:1.2.3"
        assert container(pinned[key])["image"] == "portwatch@sha256:" + "a" * 64


# -- discovery: NET_RAW and nothing else -------------------------------------------------------


def test_discover_keeps_exactly_net_raw(helm: str, tmp_path: Path) -> None:
    # Given the default values (masscan allowed) / When rendered
    objects = render(helm, tmp_path)
    ctr = container(objects[("Deployment", f"{BASE}-discover")])
    sc = ctr["securityContext"]
    # Then the worker holds NET_RAW itself (engine auto takes masscan only when the process
    # can open its answer tap; a non-root worker cannot hold a capability in Kubernetes):
    # uid 0 with every capability dropped but NET_RAW, a read-only root, no escalation
    assert (sc["runAsNonRoot"], sc["runAsUser"], sc["runAsGroup"]) == (False, 0, 0)
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert ctr["args"][ctr["args"].index("--engine") + 1] == "auto"
    assert "--rate" not in ctr["args"]  # portwatch's engine default
    spec = pod_spec(objects[("Deployment", f"{BASE}-discover")])
    assert "hostNetwork" not in spec
    # And the other components keep no capability at all
    for key in WORKLOADS[1:]:
        other = container(objects[key])["securityContext"]
        assert other["capabilities"] == {"drop": ["ALL"]}
        assert other["allowPrivilegeEscalation"] is False
        assert other["readOnlyRootFilesystem"] is True


def test_net_raw_off_drops_everything_and_uses_connect(helm: str, tmp_path: Path) -> None:
    # Given NET_RAW switched off / When rendered
    objects = render(helm, tmp_path, {"discover": {"netRaw": False, "replicas": 4,
                                                   "rate": 300}})
    deployment = objects[("Deployment", f"{BASE}-discover")]
    ctr = container(deployment)
    # Then no capability remains, no privilege escalation, and discovery is connect()-only
    assert ctr["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
    assert ctr["securityContext"]["runAsNonRoot"] is True
    assert "runAsUser" not in ctr["securityContext"]  # the pod's non-root user
    assert ctr["args"][ctr["args"].index("--engine") + 1] == "connect"
    assert ctr["args"][ctr["args"].index("--rate") + 1] == "300"
    assert deployment["spec"]["replicas"] == 4
    # and a rate of a million is its digits (it rendered "1e+06", which --rate refuses)
    fast = render(helm, tmp_path, {"discover": {"rate": 1_000_000}})
    args = container(fast[("Deployment", f"{BASE}-discover")])["args"]
    assert args[args.index("--rate") + 1] == "1000000"


@pytest.mark.parametrize(("values", "words"), [
    ({"discover": {"rate": "100k"}}, 'discover.rate "100k": a whole number'),
    ({"discover": {"rate": 2.5}}, "discover.rate 2.5: a whole number"),
    ({"clickhouse": {"secure": "yes"}}, 'clickhouse.secure "yes": true or false'),
])
def test_values_of_the_wrong_kind_are_refused_not_dropped(
        helm: str, tmp_path: Path, values: dict[str, Any], words: str) -> None:
    # (a rate of "100k" rendered no --rate at all: masscan ran at its default)
    assert words in render_error(helm, tmp_path, values)


def test_masscan_without_net_raw_is_refused(helm: str, tmp_path: Path) -> None:
    # Given masscan asked for without the capability it needs / When rendered
    stderr = render_error(helm, tmp_path, {"discover": {"netRaw": False, "engine": "masscan"}})
    # Then helm refuses with the reason
    assert "discover.engine=masscan needs discover.netRaw=true" in stderr


def test_host_network_keeps_cluster_dns(helm: str, tmp_path: Path) -> None:
    # Given discovery on the node's network / When rendered
    objects = render(helm, tmp_path, {"discover": {"hostNetwork": True}})
    spec = pod_spec(objects[("Deployment", f"{BASE}-discover")])
    # Then the pod still resolves Kafka's service name
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"


# -- process ---------------------------------------------------------------------------------


def test_process_replicas_resources_and_probes_from_values(helm: str, tmp_path: Path) -> None:
    # Given replicas and resources for the Faust workers
    resources = {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"memory": "6Gi"}}
    objects = render(helm, tmp_path, {"process": {"replicas": 7, "resources": resources,
                                                  "webPort": 6070}})
    deployment = objects[("Deployment", f"{BASE}-process")]
    ctr = container(deployment)
    # Then they are rendered as given
    assert deployment["spec"]["replicas"] == 7
    assert ctr["resources"] == resources
    # And the workers answer GET /healthz on that port, which the probes check
    assert ctr["ports"] == [{"name": "web", "containerPort": 6070, "protocol": "TCP"}]
    args = ctr["args"]
    assert args[args.index("--health") + 1] == "0.0.0.0:6070"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert ctr[probe]["httpGet"] == {"path": "/healthz", "port": "web"}


def test_probes_can_be_disabled(helm: str, tmp_path: Path) -> None:
    # Given two probes set to null (helm merges maps: {} would keep the defaults)
    objects = render(helm, tmp_path, {"process": {"livenessProbe": None, "startupProbe": None}})
    # Then they are gone and the third stays
    ctr = container(objects[("Deployment", f"{BASE}-process")])
    assert "livenessProbe" not in ctr and "startupProbe" not in ctr
    assert "readinessProbe" in ctr


# -- produce ---------------------------------------------------------------------------------


def test_cronjob_defaults_forbid_overlap_and_stay_suspended_without_targets(
        helm: str, tmp_path: Path) -> None:
    # Given the default values (no target) / When rendered
    cron = render(helm, tmp_path)[("CronJob", f"{BASE}-produce")]
    # Then runs never overlap, and nothing is scanned until targets are configured
    assert cron["spec"]["schedule"] == "0 */6 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["suspend"] is True
    assert "--inventory" not in container(cron)["args"]


def test_cronjob_schedule_and_inventory_from_values(helm: str, tmp_path: Path) -> None:
    # Given a schedule, a port spec and an inventory
    objects = render(helm, tmp_path, {"produce": {"schedule": "*/30 * * * *", "ports": "1-1024",
                                                  "inventory": INVENTORY}})
    cron = objects[("CronJob", f"{BASE}-produce")]
    ctr = container(cron)
    spec = pod_spec(cron)
    # Then the CronJob runs on that schedule, one run at a time, bounded in time
    assert cron["spec"]["schedule"] == "*/30 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["suspend"] is False
    assert cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 3600
    assert spec["restartPolicy"] == "OnFailure"
    args = expanded_args(objects, ctr)
    assert args[args.index("--ports") + 1] == "1-1024"
    assert args[args.index("--checkpoint") + 1] == "/var/lib/portwatch/produce.checkpoint"
    # And the inventory is a mounted ConfigMap file the producer's own reader parses
    inventory_path = Path(args[args.index("--inventory") + 1])
    mount = next(m for m in ctr["volumeMounts"] if m["name"] == "inventory")
    assert inventory_path.parent == Path(mount["mountPath"])
    volume = next(v for v in spec["volumes"] if v["name"] == "inventory")
    cm = objects[("ConfigMap", volume["configMap"]["name"])]
    assert [item["path"] for item in volume["configMap"]["items"]] == [inventory_path.name]
    local = tmp_path / inventory_path.name
    local.write_text(cm["data"][inventory_path.name], encoding="utf-8")
    specs = read_inventory(local)
    assert [(s.text, s.organization, s.asset) for s in specs] == [
        ("vpn.example.internal", "Example Corp", "office"),
        ("mail.example.internal", "Example Corp", "office")]
    # And the checkpoint's directory is writable scratch (the root filesystem is read-only)
    assert {"name": "work", "mountPath": "/var/lib/portwatch"} in ctr["volumeMounts"]


def test_cronjob_targets_and_existing_inventory(helm: str, tmp_path: Path) -> None:
    # Given command-line targets
    objects = render(helm, tmp_path, {"produce": {"targets": ["db.example.internal"]}})
    args = container(objects[("CronJob", f"{BASE}-produce")])["args"]
    # Then they follow "--", so none is ever read as a flag
    assert args[-2:] == ["--", "db.example.internal"]
    # Given an existing CSV inventory ConfigMap
    objects = render(helm, tmp_path, {"produce": {"existingInventoryConfigMap": "assets",
                                                  "existingInventoryKey": "assets.csv"}})
    cron = objects[("CronJob", f"{BASE}-produce")]
    args = container(cron)["args"]
    # Then the chart mounts it (keeping the key's suffix, which picks the parser) and
    # renders no inventory of its own
    assert args[args.index("--inventory") + 1] == "/etc/portwatch/inventory/assets.csv"
    volume = next(v for v in pod_spec(cron)["volumes"] if v["name"] == "inventory")
    assert volume["configMap"]["name"] == "assets"
    assert ("ConfigMap", f"{BASE}-inventory") not in objects


def test_targets_and_inventory_together_are_refused(helm: str, tmp_path: Path) -> None:
    stderr = render_error(helm, tmp_path, {"produce": {"targets": ["db.example.internal"],
                                                       "inventory": INVENTORY}})
    assert "not both" in stderr


# -- settings, addresses and the password ----------------------------------------------------


def test_configmap_keys_are_settings_env_vars(helm: str, tmp_path: Path) -> None:
    # Given the defaults, then every setting overridden and a scope fence
    defaults = render(helm, tmp_path)[("ConfigMap", f"{BASE}-settings")]["data"]
    overrides = {env: "7" for env in SETTINGS_ENVS - FROM_VALUES}
    full = render(helm, tmp_path, {"settings": overrides, "scopeAllow": "198.18.0.0/15"})
    data = full[("ConfigMap", f"{BASE}-settings")]["data"]
    # Then the defaults set only the addresses, and every key is a portwatch setting
    assert set(defaults) == {"PORTWATCH_KAFKA", "PORTWATCH_STORE"}
    assert set(data) == (SETTINGS_ENVS - FROM_VALUES) | {"PORTWATCH_KAFKA", "PORTWATCH_STORE",
                                                          SCOPE_ALLOW_ENV}
    assert all(isinstance(value, str) for value in data.values())
    assert data[SCOPE_ALLOW_ENV] == "198.18.0.0/15"
    assert {data[env] for env in overrides} == {"7"}


def test_values_file_documents_every_setting() -> None:
    # Given portwatch's settings / Then values.yaml names each one (drift check)
    documented = (CHART / "values.yaml").read_text(encoding="utf-8")
    assert sorted(env for env in SETTINGS_ENVS if env not in documented) == []


@pytest.mark.parametrize("key", ["PORTWATCH_CLICKHOUSE_PASSWORD", "TIMEOUT", "PORTWATCH_KAFKA",
                                 "PORTWATCH_ENGINE", "PORTWATCH_SHARD_PORT"])
def test_settings_refuses_secrets_foreign_and_owned_keys(helm: str, tmp_path: Path,
                                                         key: str) -> None:
    stderr = render_error(helm, tmp_path, {"settings": {key: "x"}})
    assert f"settings.{key}" in stderr


def test_the_charts_known_settings_are_the_ones_portwatch_reads() -> None:
    # (a misspelt key was put in the ConfigMap and ignored by every process: a review)
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    listed = re.search(r'define "portwatch.knownSettings" -}}\n(.*?)\n', helpers)
    assert listed is not None
    web = {"PORTWATCH_WEB_COOKIE_SECURE", "PORTWATCH_WEB_TRUSTED_PROXIES"}
    assert set(listed.group(1).split()) == SETTINGS_ENVS | web


@pytest.mark.parametrize("release", ["pw.prod", "1pw"])
def test_a_release_name_kubernetes_refuses_for_a_service_is_refused(
        helm: str, tmp_path: Path, release: str) -> None:
    proc = _run(helm, "template", release, str(CHART), tmp_path=tmp_path)
    assert proc.returncode != 0
    assert f'the name "{release}-portwatch"' in proc.stderr
    assert "Kubernetes refuses it as a Service name" in proc.stderr


def test_a_name_override_kubernetes_refuses_as_a_label_is_refused(helm: str,
                                                                  tmp_path: Path) -> None:
    stderr = render_error(helm, tmp_path, {"fullnameOverride": "pw",
                                           "nameOverride": "port watch"})
    assert 'nameOverride "port watch": a label value' in stderr


def test_a_long_name_cut_to_size_loses_every_trailing_hyphen(helm: str, tmp_path: Path) -> None:
    # ("a" * 52 + "--x" cut to 54 ended in '-' after one was trimmed, and was refused as
    # the user's name: a second review)
    objects = render(helm, tmp_path, {"fullnameOverride": "a" * 52 + "--x",
                                      "produce": {"enabled": False}})
    assert ("ServiceAccount", "a" * 52) in objects


def test_alerts_web_token_or_password_changes_roll_the_pods_that_read_them(
        helm: str, tmp_path: Path) -> None:
    # (each is read once at a process's start: a `helm upgrade` changing only one of them
    # left every pod on the old one: a review)
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        out = {}
        for (kind, name), obj in render(helm, tmp_path, values).items():
            if kind == "Deployment":
                annotations = obj["spec"]["template"]["metadata"]["annotations"]
                out[name.removeprefix(f"{BASE}-")] = str(annotations.get("checksum/config"))
        return out

    alerts = {"enabled": True, "config": ALERTS_CONFIG,
              "secretEnv": {"PORTWATCH_HOOK_SECRET": "a" * 32}}
    base = {"alerts": alerts, "web": {"token": "t" * 20}, "clickhouse": {"password": "one"}}
    before = checksums(base)
    assert before["discover"] == "None"  # it reads none of them
    rule = {**ALERTS_CONFIG["rules"][0], "when": {"colors": ["red", "yellow"]}}
    # Then each change rolls the pods that read it, and only those (a second review:
    # discovery workers rolled, and rebalanced their shards, for an alert rule)
    for changed, rolled in (
            ({**base, "alerts": {**alerts, "config": {**ALERTS_CONFIG, "rules": [rule]}}},
             {"process"}),
            ({**base, "alerts": {**alerts, "secretEnv": {"PORTWATCH_HOOK_SECRET": "b" * 32}}},
             {"process"}),
            ({**base, "web": {"token": "u" * 20}}, {"web"}),
            ({**base, "clickhouse": {"password": "two"}}, {"process", "web"})):
        after = checksums(changed)
        assert {name for name in before if after[name] != before[name]} == rolled
    assert checksums(base) == before  # and the same values give the same pods
    # And no annotation is a plain digest of a secret (anyone who may list pods reads it:
    # a SHA-256 of the password let them test guesses at it offline; a second review)
    import hashlib
    import json
    plain = {hashlib.sha256(json.dumps(x, separators=(",", ":")).encode()).hexdigest()
             for x in (["one"], "one", [alerts, "t" * 20, "one"])}
    plain |= {hashlib.sha256(b"one").hexdigest()}
    assert not plain & set(before.values())


def test_settings_change_rolls_the_pods(helm: str, tmp_path: Path) -> None:
    before = render(helm, tmp_path)
    after = render(helm, tmp_path, {"settings": {"PORTWATCH_TIMEOUT": "3"}})
    for key in WORKLOADS:
        def checksum(objects: Objects, key: tuple[str, str] = key) -> str:
            obj = objects[key]
            template = (obj["spec"]["jobTemplate"]["spec"]["template"] if key[0] == "CronJob"
                        else obj["spec"]["template"])
            return str(template["metadata"]["annotations"]["checksum/settings"])
        assert checksum(before) != checksum(after)


def test_addresses_from_values_reach_every_container(helm: str, tmp_path: Path) -> None:
    # Given Kafka and ClickHouse addresses
    bootstrap = "kafka-0.mq.svc:9093,kafka-1.mq.svc:9093"
    objects = render(helm, tmp_path, {
        "kafka": {"bootstrapServers": bootstrap},
        "clickhouse": {"host": "ch.db.svc", "port": 8124, "database": "scans", "user": "writer"}})
    store = "clickhouse://writer@ch.db.svc:8124/scans"
    # Then every container has Kafka's address in its environment and its --kafka argument
    for key in WORKLOADS:
        ctr = container(objects[key])
        env = effective_env(objects, ctr)
        assert env["PORTWATCH_KAFKA"] == bootstrap
        assert env["PORTWATCH_STORE"] == store
        args = expanded_args(objects, ctr)
        assert args[args.index("--kafka") + 1] == bootstrap
    # And the Faust workers get the store URL, without a password in it
    args = expanded_args(objects, container(objects[("Deployment", f"{BASE}-process")]))
    assert args[args.index("--store") + 1] == store


def test_clickhouse_over_https_and_an_ipv6_host_make_a_store_url_portwatch_reads(
        helm: str, tmp_path: Path) -> None:
    from stream_processors.store import StoreLocation

    # Given a ClickHouse server over HTTPS at an IPv6 address
    objects = render(helm, tmp_path, {"clickhouse": {"host": "fd00::5", "port": 8443,
                                                     "secure": True}})
    env = effective_env(objects, container(objects[("Deployment", f"{BASE}-process")]))
    # Then the URL brackets the address and says HTTPS, and parses as such
    assert env["PORTWATCH_STORE"] == "clickhouses://portwatch@[fd00::5]:8443/portwatch"
    location = StoreLocation.parse(env["PORTWATCH_STORE"])
    assert (location.host, location.port) == ("fd00::5", 8443)


@pytest.mark.parametrize(("values", "words"), [
    ({"clickhouse": {"database": "port-watch"}}, "clickhouse.database \"port-watch\""),
    ({"settings": {"PORTWATCH_ALERTS": "/tmp/a.yaml"}}, "the chart sets it from alerts.*"),
])
def test_values_the_store_or_the_chart_would_refuse_later_are_refused_at_render(
        helm: str, tmp_path: Path, values: dict[str, Any], words: str) -> None:
    assert words in render_error(helm, tmp_path, values)


def test_process_health_listens_where_the_cluster_answers(helm: str, tmp_path: Path) -> None:
    def health(values: dict[str, Any]) -> str:
        args = container(render(helm, tmp_path, values)[("Deployment", f"{BASE}-process")])[
            "args"]
        return str(args[args.index("--health") + 1])

    assert health({}) == "0.0.0.0:6066"
    # an IPv6-only cluster: the address in brackets, as --health reads it
    assert health({"process": {"healthHost": "::"}}) == "[::]:6066"


def test_extra_volumes_reach_every_pod(helm: str, tmp_path: Path) -> None:
    # Given a CA bundle for PORTWATCH_TLS_TRUST_STORE (every command checks that file)
    objects = render(helm, tmp_path, {
        "extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/portwatch/ca",
                               "readOnly": True}],
        "settings": {"PORTWATCH_TLS_TRUST_STORE": "/etc/portwatch/ca/ca.pem"}})
    # Then every workload mounts it, beside its scratch volumes
    for key in WORKLOADS:
        spec = pod_spec(objects[key])
        assert {"name": "ca", "configMap": {"name": "corp-ca"}} in spec["volumes"], key
        mounts = container(objects[key])["volumeMounts"]
        assert {"name": "ca", "mountPath": "/etc/portwatch/ca", "readOnly": True} in mounts
        assert {m["name"] for m in mounts} >= {"work", "tmp", "ca"}


def test_clickhouse_password_comes_from_the_chart_secret(helm: str, tmp_path: Path) -> None:
    # Given a password in the values
    password = "s3cret-Only-In-The-Secret"
    objects = render(helm, tmp_path, {"clickhouse": {"password": password}})
    # When the process container's environment is resolved
    env = effective_env(objects, container(objects[("Deployment", f"{BASE}-process")]))
    # Then PORTWATCH_CLICKHOUSE_PASSWORD references the Secret's key, which holds the password
    kind, name, key = env["PORTWATCH_CLICKHOUSE_PASSWORD"]
    assert (kind, name, key) == ("secret", f"{BASE}-clickhouse", "clickhouse-password")
    secret = objects[("Secret", name)]
    assert base64.b64decode(secret["data"][key]).decode() == password
    # And the password appears nowhere else, and only the process pods receive it
    elsewhere = [obj for k, obj in objects.items() if k[0] != "Secret"]
    assert password not in yaml.safe_dump_all(elsewhere)
    for other in WORKLOADS[0], WORKLOADS[2]:
        assert "PORTWATCH_CLICKHOUSE_PASSWORD" not in effective_env(objects,
                                                                    container(objects[other]))


def test_existing_secret_is_referenced_not_created(helm: str, tmp_path: Path) -> None:
    # Given an existing Secret and key
    objects = render(helm, tmp_path, {"clickhouse": {"existingSecret": "ch-creds",
                                                     "passwordKey": "pw"}})
    env = effective_env(objects, container(objects[("Deployment", f"{BASE}-process")]))
    # Then the process container reads it, and the chart renders no Secret of its own
    assert env["PORTWATCH_CLICKHOUSE_PASSWORD"] == ("secret", "ch-creds", "pw")
    assert [k for k in objects if k[0] == "Secret"] == [("Secret", f"{BASE}-web")]


# -- schedules and alerts (issue "Watch and alert") ---------------------------------------------

SCHEDULES_FILE = """\
schedules:
  - name: hourly-top
    targets: [198.18.0.10, 198.18.0.11]
    organization: Example Corp
    asset: edge
    ports: "1-1024"
    udp: none
    cron: "0 * * * *"
  - name: nightly-full
    inventory: true
    ports: "1-65535"
    udp: top1000
    allow_large: true
    cron: "30 2 * * *"
  - name: nightly-example
    inventory: true
    organization: Example Corp
    ports: "1-1024"
    cron: "45 2 * * *"
"""


def test_one_producer_cronjob_per_schedule_entry_from_the_watch_file(helm: str,
                                                                     tmp_path: Path) -> None:
    from portwatch.alerts.schedule import load_schedules

    # Given the very schedules file `portwatch watch --schedule` accepts (its inventory: is
    # a path there, so the embedded check gets a file beside it)
    (tmp_path / "true").write_text("Example Corp: [198.18.0.12]\n")
    path = tmp_path / "schedules.yaml"
    path.write_text(SCHEDULES_FILE)
    entries = {e.name: e for e in load_schedules(path)}
    # When it is used as a values file (with the chart's inventory)
    values = yaml.safe_load(SCHEDULES_FILE)
    values["produce"] = {"inventory": INVENTORY}
    objects = render(helm, tmp_path, values)
    # Then there is one CronJob per entry, on the entry's cron, never overlapping itself
    jobs = {name: obj for (kind, name), obj in objects.items()
            if kind == "CronJob" and "-schedule-" in name}
    assert set(jobs) == {f"{BASE}-schedule-{name}" for name in
                         ("hourly-top", "nightly-full", "nightly-example")}
    for name, entry in entries.items():
        job = jobs[f"{BASE}-schedule-{name}"]
        assert job["spec"]["schedule"] == entry.cron
        assert job["spec"]["timeZone"] == "Etc/UTC"
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        assert pod_spec(job)["securityContext"]["runAsNonRoot"] is True
    # And each runs `portwatch produce` with the entry's ports, UDP profile and targets
    hourly = expanded_args(objects, container(jobs[f"{BASE}-schedule-hourly-top"]))
    assert hourly == ["produce", "--kafka", "kafka:9092", "--checkpoint",
                      "/var/lib/portwatch/hourly-top.checkpoint", "--ports", "1-1024",
                      "--udp", "none", "--org", "Example Corp", "--asset", "edge", "--",
                      "198.18.0.10", "198.18.0.11"]
    nightly_job = jobs[f"{BASE}-schedule-nightly-full"]
    nightly = expanded_args(objects, container(nightly_job))
    assert nightly[5:] == ["--ports", "1-65535", "--udp", "top1000", "--inventory",
                           "/etc/portwatch/inventory/inventory.yaml", "--allow-large"]
    assert [e.allow_large for e in entries.values()] == [False, True, False]
    # And an inventory entry's organization narrows the chart's inventory to it, as
    # `watch` narrows its file (an entry's targets are labelled with it instead)
    example = expanded_args(objects, container(jobs[f"{BASE}-schedule-nightly-example"]))
    assert example[5:] == ["--ports", "1-1024", "--inventory",
                           "/etc/portwatch/inventory/inventory.yaml",
                           "--only-org", "Example Corp"]
    assert entries["nightly-example"].organization == "Example Corp"
    # And every command line is one the real `portwatch produce` parses to those values
    from portwatch.distributed_cli import produce
    for args, expected in ((hourly, {"organization": "Example Corp", "asset": "edge",
                                     "only_organization": ""}),
                           (example, {"organization": "", "asset": "",
                                      "only_organization": "Example Corp",
                                      "allow_large": False}),
                           (nightly, {"allow_large": True})):
        with produce.make_context("produce", list(args[1:])) as ctx:
            assert {k: ctx.params[k] for k in expected} == expected
    volumes = {v["name"]: v for v in pod_spec(nightly_job)["volumes"]}
    assert volumes["inventory"]["configMap"]["name"] == f"{BASE}-inventory"


def test_a_schedule_entry_with_one_target_or_exclusion_as_a_plain_value(
        helm: str, tmp_path: Path) -> None:
    # Given an entry as `watch` takes it: `targets: 198.18.0.1`, `exclude: 198.18.0.2`
    # (the chart failed: "range can't iterate over 198.18.0.1": a review)
    objects = render(helm, tmp_path, {"schedules": [
        {"name": "one", "cron": "@hourly", "targets": "198.18.0.1", "exclude": "198.18.0.2",
         "ports": "22"}]})
    # Then its producer gets them as a list of one
    args = expanded_args(objects, container(objects[("CronJob", f"{BASE}-schedule-one")]))
    assert args[5:] == ["--ports", "22", "--exclude", "198.18.0.2", "--", "198.18.0.1"]


def test_a_schedule_entry_with_targets_and_an_inventory_scans_both(
        helm: str, tmp_path: Path) -> None:
    from portwatch.alerts.schedule import load_schedules
    from portwatch.distributed_cli import produce

    # Given an entry `watch` takes: targets and an inventory, an organization and an asset
    # (the chart refused it, "give targets or inventory, not both": a review)
    entry = {"name": "both", "cron": "@hourly", "targets": ["198.18.0.1"], "inventory": True,
             "organization": "Example Corp", "asset": "edge", "ports": "22"}
    (tmp_path / "true").write_text("Example Corp: [198.18.0.12]\n")
    (tmp_path / "schedules.yaml").write_text(yaml.safe_dump({"schedules": [entry]}))
    (watched,) = load_schedules(tmp_path / "schedules.yaml")
    objects = render(helm, tmp_path, {"schedules": [entry], "produce": {"inventory": INVENTORY}})
    # Then its producer gets both, as watch scans them: the inventory narrowed to the
    # organization, the asset labelling the targets
    args = expanded_args(objects, container(objects[("CronJob", f"{BASE}-schedule-both")]))
    assert args[5:] == ["--ports", "22", "--inventory",
                        "/etc/portwatch/inventory/inventory.yaml", "--only-org",
                        "Example Corp", "--org", "Example Corp", "--asset", "edge", "--",
                        "198.18.0.1"]
    assert (watched.targets, watched.asset) == (("198.18.0.1",), "edge")
    with produce.make_context("produce", list(args[1:])) as ctx:
        assert (ctx.params["only_organization"], ctx.params["asset"],
                ctx.params["organization"]) == ("Example Corp", "edge", "Example Corp")
    # and the targets it resolves keep the entry's own beside the inventory's (the
    # organization narrows the inventory and labels the targets: --only-org alone dropped
    # them, a review)
    from portwatch.assembly import Assembly
    from portwatch.settings import Settings

    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("Example Corp: [198.18.0.12]\nOther: [198.18.0.13]\n")
    work = Assembly(Settings.from_env(ports="22", udp="none")).scan_input(
        ["198.18.0.1"], organization="Example Corp", asset="edge", inventory=str(inventory),
        only_organization="Example Corp")
    assert sorted((t.ip, t.organization, t.asset) for t in work.targets) == [
        ("198.18.0.1", "Example Corp", "edge"), ("198.18.0.12", "Example Corp", "")]


@pytest.mark.parametrize(("schedules", "words"), [
    ([{"name": "a", "cron": "@hourly", "targets": ["198.18.0.1"]},
      {"name": "a", "cron": "@daily", "targets": ["198.18.0.2"]}], "used twice"),
    ([{"name": "a", "cron": "@hourly", "targets": ["198.18.0.1"], "ports": "top1000"}],
     "explicit spec"),
    ([{"name": "a", "cron": "@hourly"}], "give targets or inventory"),
    ([{"name": "A_b", "cron": "@hourly", "targets": ["198.18.0.1"]}], "lower-case"),
    ([{"name": "a", "targets": ["198.18.0.1"]}], "cron is required"),
    ([{"name": "a", "cron": "@hourly", "inventory": True}], "needs produce.inventory"),
    # (watch refuses it; the chart dropped the asset without a word: a review)
    ([{"name": "a", "cron": "@hourly", "inventory": True, "asset": "edge"}],
     "an inventory's targets carry their own"),
    # a name the entry check takes, but a CronJob name (with the release's) over 52
    ([{"name": "weekly-full-tcp-udp-office-network", "cron": "@weekly",
       "targets": ["198.18.0.1"]}], "Kubernetes takes at most 52"),
])
def test_bad_schedule_entries_are_refused(helm: str, tmp_path: Path,
                                          schedules: list[dict[str, Any]], words: str) -> None:
    assert words in render_error(helm, tmp_path, {"schedules": schedules})


ALERTS_CONFIG = {
    "channels": {"soc-hook": {"webhook": "https://soc.example/hooks/portwatch",
                              "secret_env": "PORTWATCH_HOOK_SECRET"}},
    "rules": [{"name": "risky-opened", "when": {"colors": ["red"]},
               "notify": ["soc-hook"], "digest": "5m"}],
}


def test_alert_rules_and_secrets_reach_the_process_pods(helm: str, tmp_path: Path) -> None:
    from portwatch.alerts import load_alerts

    secret = "hook-Secret-Value-42"
    # Given alerting on, with the rules and the webhook secret in values
    objects = render(helm, tmp_path, {"alerts": {
        "enabled": True, "config": ALERTS_CONFIG,
        "secretEnv": {"PORTWATCH_HOOK_SECRET": secret}}})
    process = container(objects[("Deployment", f"{BASE}-process")])
    env = effective_env(objects, process)
    # Then the process container finds the rules file where PORTWATCH_ALERTS says
    assert env["PORTWATCH_ALERTS"] == "/etc/portwatch/alerts/alerts.yaml"
    mounts = {m["name"]: m for m in process["volumeMounts"]}
    assert mounts["alerts"]["mountPath"] == "/etc/portwatch/alerts"
    volumes = {v["name"]: v for v in pod_spec(objects[("Deployment", f"{BASE}-process")])
               ["volumes"]}
    config_map = objects[("ConfigMap", volumes["alerts"]["configMap"]["name"])]
    # And the secret variable comes from the chart's Secret
    assert env["PORTWATCH_HOOK_SECRET"] == ("secret", f"{BASE}-alerts",
                                            "PORTWATCH_HOOK_SECRET")
    stored = objects[("Secret", f"{BASE}-alerts")]["data"]["PORTWATCH_HOOK_SECRET"]
    assert base64.b64decode(stored).decode() == secret
    # And portwatch accepts the rendered file with that environment
    rendered = tmp_path / "alerts.yaml"
    rendered.write_text(config_map["data"]["alerts.yaml"])
    config = load_alerts(rendered, env={"PORTWATCH_HOOK_SECRET": secret})
    assert [r.name for r in config.rules] == ["risky-opened"]
    # And the secret is nowhere but in its Secret; other pods get no alert settings
    assert secret not in yaml.safe_dump_all(
        [obj for key, obj in objects.items() if key[0] != "Secret"])
    for other in WORKLOADS[0], WORKLOADS[2]:
        assert "PORTWATCH_ALERTS" not in effective_env(objects, container(objects[other]))


def test_alert_secrets_from_an_existing_secret(helm: str, tmp_path: Path) -> None:
    objects = render(helm, tmp_path, {"alerts": {"enabled": True, "config": ALERTS_CONFIG,
                                                 "existingSecret": "soc-alert-secrets"}})
    process = container(objects[("Deployment", f"{BASE}-process")])
    assert {"secretRef": {"name": "soc-alert-secrets"}} in process["envFrom"]
    assert ("Secret", f"{BASE}-alerts") not in objects


def test_alerts_off_by_default_and_on_without_rules_refused(helm: str, tmp_path: Path) -> None:
    objects = render(helm, tmp_path)
    assert ("ConfigMap", f"{BASE}-alerts") not in objects
    assert "PORTWATCH_ALERTS" not in effective_env(
        objects, container(objects[("Deployment", f"{BASE}-process")]))
    assert "set alerts.config" in render_error(helm, tmp_path, {"alerts": {"enabled": True}})
    assert ("Secret", f"{BASE}-alerts") not in objects


# -- web reports -----------------------------------------------------------------------------


def test_web_serves_the_store_beyond_loopback_with_a_token_from_a_secret(
        helm: str, tmp_path: Path) -> None:
    # Given a token in the values / When rendered
    token = "a-web-token-of-32-characters-xyz"
    objects = render(helm, tmp_path, {"web": {"token": token}})
    deployment = objects[("Deployment", f"{BASE}-web")]
    ctr = container(deployment)
    args = expanded_args(objects, ctr)
    # Then the pod runs `portwatch serve` on all addresses of the pod, on the store
    assert ctr["command"] == ["portwatch"]
    assert args == ["serve", "--store", "clickhouse://portwatch@clickhouse:8123/portwatch",
                    "--host", "0.0.0.0", "--port", "8765"]
    # And the token and the ClickHouse password reach it from Secrets only
    env = effective_env(objects, ctr)
    assert env["PORTWATCH_WEB_TOKEN"] == ("secret", f"{BASE}-web", "web-token")
    assert env["PORTWATCH_CLICKHOUSE_PASSWORD"] == ("secret", f"{BASE}-clickhouse",
                                                    "clickhouse-password")
    secret = objects[("Secret", f"{BASE}-web")]
    assert base64.b64decode(secret["data"]["web-token"]).decode() == token
    assert token not in yaml.safe_dump_all(
        [obj for key, obj in objects.items() if key[0] != "Secret"])
    # And it is unprivileged, probed on /healthz (which needs no token)
    assert ctr["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    assert ctr["ports"] == [{"name": "http", "containerPort": 8765, "protocol": "TCP"}]
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod_spec(deployment)["automountServiceAccountToken"] is False
    # And the Service selects exactly the web pods, on the container's named port
    service = objects[("Service", f"{BASE}-web")]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "web"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http",
                                         "protocol": "TCP"}]
    # And no Ingress unless asked for
    assert not [key for key in objects if key[0] == "Ingress"]


def test_web_token_is_generated_when_none_is_given(helm: str, tmp_path: Path) -> None:
    # Given no token / When rendered twice (helm template: nothing installed to keep)
    first = render(helm, tmp_path)[("Secret", f"{BASE}-web")]["data"]["web-token"]
    # Then a 32-character random token, long enough for serve's 16-character minimum
    token = base64.b64decode(first).decode()
    assert len(token) == 32 and token.isalnum()


def test_web_short_token_is_refused(helm: str, tmp_path: Path) -> None:
    stderr = render_error(helm, tmp_path, {"web": {"token": "short"}})
    assert "web.token is 5 characters: portwatch serve needs at least 16" in stderr


def test_web_existing_secret_is_referenced_not_created(helm: str, tmp_path: Path) -> None:
    objects = render(helm, tmp_path, {"web": {"existingSecret": "pw-web", "tokenKey": "t"}})
    env = effective_env(objects, container(objects[("Deployment", f"{BASE}-web")]))
    assert env["PORTWATCH_WEB_TOKEN"] == ("secret", "pw-web", "t")
    assert ("Secret", f"{BASE}-web") not in objects


def test_web_ingress_routes_its_host_and_serve_accepts_it(helm: str, tmp_path: Path) -> None:
    # Given an Ingress with TLS and a reverse proxy's name / When rendered
    objects = render(helm, tmp_path, {"web": {
        "allowedHosts": ["proxy.example.internal"],
        "ingress": {"enabled": True, "host": "ports.example.internal", "className": "nginx",
                    "tlsSecretName": "ports-tls",
                    "annotations": {"cert-manager.io/cluster-issuer": "internal"}}}})
    ingress = objects[("Ingress", f"{BASE}-web")]
    # Then the Ingress sends its host to the web Service's http port, over TLS
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["ports.example.internal"],
                                       "secretName": "ports-tls"}]
    assert ingress["spec"]["rules"] == [{"host": "ports.example.internal", "http": {"paths": [
        {"path": "/", "pathType": "Prefix", "backend": {"service": {
            "name": f"{BASE}-web", "port": {"name": "http"}}}}]}}]
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "internal"}
    # And serve answers to the Ingress host and the proxy's name
    args = container(objects[("Deployment", f"{BASE}-web")])["args"]
    assert args[args.index("--port") + 2:] == ["--allowed-host", "ports.example.internal",
                                               "--allowed-host", "proxy.example.internal",
                                               # served over HTTPS: the cookie is Secure
                                               "--cookie-secure"]


def test_web_ingress_without_host_is_refused(helm: str, tmp_path: Path) -> None:
    stderr = render_error(helm, tmp_path, {"web": {"ingress": {"enabled": True}}})
    assert "web.ingress.host is required" in stderr


# -- Grafana dashboards ----------------------------------------------------------------------


def _dashboard_json(objects: Objects) -> dict[str, Any]:
    import json

    cm = objects[("ConfigMap", f"{BASE}-dashboards")]
    assert set(cm["data"]) == {"portwatch.json"}
    return json.loads(cm["data"]["portwatch.json"])  # type: ignore[no-any-return]


def test_dashboards_configmap_carries_the_sidecar_label_and_the_built_dashboard(
        helm: str, tmp_path: Path) -> None:
    import json

    from deploy.grafana import build_dashboards

    # Given the default values / When rendered
    objects = render(helm, tmp_path)
    cm = objects[("ConfigMap", f"{BASE}-dashboards")]
    # Then the Grafana sidecar's label is on it, in the release namespace
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == NAMESPACE
    # And its dashboard is exactly what the builder writes (the SQL tests run on that file)
    assert _dashboard_json(objects) == json.loads(build_dashboards.render())
    board = _dashboard_json(objects)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource", "grafana-clickhouse-datasource")
    assert {p["datasource"]["uid"] for p in board["panels"]} == {"${datasource}"}


def test_dashboards_link_targets_to_the_ingress_list_view(helm: str, tmp_path: Path) -> None:
    # Given the web Ingress with TLS, and the sidecar's namespace, label and folder
    objects = render(helm, tmp_path, {
        "web": {"ingress": {"enabled": True, "host": "ports.example.internal",
                            "tlsSecretName": "ports-tls"}},
        "grafana": {"dashboards": {"namespace": "monitoring",
                                   "labels": {"grafana_dashboard": "1", "team": "sec"},
                                   "annotations": {"grafana_folder": "portwatch"}}}})
    cm = objects[("ConfigMap", f"{BASE}-dashboards")]
    # Then the ConfigMap lands where the sidecar looks
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["team"] == "sec"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "portwatch"}
    # And the web_url variable (the target links' base) is the Ingress URL
    web_url = next(v for v in _dashboard_json(objects)["templating"]["list"]
                   if v["name"] == "web_url")
    assert web_url["query"] == web_url["current"]["value"] == "https://ports.example.internal"
    # And an explicit webUrl wins
    objects = render(helm, tmp_path, {"grafana": {"dashboards": {
        "webUrl": "http://reports.example.internal:8080/"}}})
    web_url = next(v for v in _dashboard_json(objects)["templating"]["list"]
                   if v["name"] == "web_url")
    assert web_url["query"] == "http://reports.example.internal:8080"


def test_dashboards_can_be_disabled(helm: str, tmp_path: Path) -> None:
    objects = render(helm, tmp_path, {"grafana": {"dashboards": {"enabled": False}}})
    assert ("ConfigMap", f"{BASE}-dashboards") not in objects


# -- every reference resolves -----------------------------------------------------------------

EVERYTHING_ON = {
    "produce": {"inventory": INVENTORY, "ports": "1-1024"},
    "scopeAllow": "198.18.0.0/15",
    "alerts": {"enabled": True, "config": ALERTS_CONFIG,
               "secretEnv": {"PORTWATCH_HOOK_SECRET": "hook-Secret-Value-42"}},
    "web": {"allowedHosts": ["proxy.example.internal"],
            "ingress": {"enabled": True, "host": "ports.example.internal"}},
}
# Secrets the values name as made elsewhere (existingSecret): they need not be rendered.
EXTERNAL = {"ch", "web", "soc-alert-secrets", "ports-tls"}


def _reference_errors(objects: Objects) -> list[str]:
    """What a cluster would trip over and `helm template` never checks: a mount of no
    volume, a ConfigMap/Secret (or one of its keys) that does not exist, a probe on a port
    the container does not declare or listen on, a Service or Ingress pointing at nothing,
    a Deployment whose selector does not select its own pods."""
    errors: list[str] = []
    secrets = {name: {**obj.get("data", {}), **obj.get("stringData", {})}
               for (kind, name), obj in objects.items() if kind == "Secret"}
    maps = {name: obj.get("data", {}) for (kind, name), obj in objects.items()
            if kind == "ConfigMap"}

    def source(kind: str, name: str, key: str | None, where: str) -> None:
        found = (secrets if kind == "Secret" else maps).get(name)
        if found is None:
            if not (kind == "Secret" and name in EXTERNAL):
                errors.append(f"{where}: {kind} {name} is not rendered")
        elif key is not None and key not in found:
            errors.append(f"{where}: {kind} {name} has no key {key}")

    pods: dict[str, dict[str, Any]] = {}  # workload -> pod template
    for (kind, name), obj in objects.items():
        if kind not in ("Deployment", "CronJob"):
            continue
        template = (obj["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob"
                    else obj["spec"]["template"])
        pods[name] = template
        spec = template["spec"]
        if kind == "Deployment":
            selector = obj["spec"]["selector"]["matchLabels"]
            labels = template["metadata"]["labels"]
            if not selector.items() <= labels.items():
                errors.append(f"{name}: selector {selector} does not select its pods")
        account = spec.get("serviceAccountName")
        if account and ("ServiceAccount", account) not in objects:
            errors.append(f"{name}: service account {account} is not rendered")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v:
                source("ConfigMap", v["configMap"]["name"], None, f"{name} volume {v['name']}")
                for item in v["configMap"].get("items", []):
                    source("ConfigMap", v["configMap"]["name"], item["key"], name)
            if "secret" in v:
                source("Secret", v["secret"]["secretName"], None, f"{name} volume {v['name']}")
        for ctr in spec["containers"]:
            where = f"{name}/{ctr['name']}"
            for mount in ctr.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    errors.append(f"{where}: mounts {mount['name']}, which is no volume")
            for src in ctr.get("envFrom", []):
                ref = src.get("configMapRef") or src["secretRef"]
                source("ConfigMap" if "configMapRef" in src else "Secret", ref["name"], None,
                       where)
            for var in ctr.get("env", []):
                for ref_kind, field in (("Secret", "secretKeyRef"),
                                        ("ConfigMap", "configMapKeyRef")):
                    ref = var.get("valueFrom", {}).get(field)
                    if ref:
                        source(ref_kind, ref["name"], ref["key"], f"{where} ${var['name']}")
            ports = {p.get("name"): p["containerPort"] for p in ctr.get("ports", [])}
            listens = " ".join(expanded_args(objects, ctr))
            for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = ctr.get(probe_name)
                if probe is None:
                    continue
                action = probe.get("httpGet") or probe.get("tcpSocket") or {}
                port = action.get("port")
                number = ports.get(port) if isinstance(port, str) else port
                if number is None or number not in ports.values():
                    errors.append(f"{where} {probe_name}: port {port} is not declared")
                elif not re.search(rf"(^|[\s:=]){number}(\s|$)", listens):
                    errors.append(f"{where} {probe_name}: nothing in the args listens on "
                                  f"{number}: {listens}")
    for (kind, name), obj in objects.items():
        if kind != "Service":
            continue
        selector = obj["spec"]["selector"]
        chosen = [w for w, t in pods.items()
                  if selector.items() <= t["metadata"]["labels"].items()]
        if len(chosen) != 1:
            errors.append(f"Service {name} selects {chosen}, not one workload")
            continue
        declared = {p.get("name"): p["containerPort"]
                    for c in pods[chosen[0]]["spec"]["containers"] for p in c.get("ports", [])}
        for port in obj["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if target not in declared and target not in declared.values():
                errors.append(f"Service {name}: targetPort {target} is not declared")
    for (kind, name), obj in objects.items():
        if kind != "Ingress":
            continue
        for rule in obj["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = objects.get(("Service", backend["name"]))
                if service is None:
                    errors.append(f"Ingress {name}: no Service {backend['name']}")
                    continue
                names = {(p.get("name"), p["port"]) for p in service["spec"]["ports"]}
                wanted = backend["port"]
                if not any(wanted.get("name") == n or wanted.get("number") == p
                           for n, p in names):
                    errors.append(f"Ingress {name}: Service {backend['name']} has no port "
                                  f"{wanted}")
    return errors


@pytest.mark.parametrize("values", [None, EVERYTHING_ON, {
    **EVERYTHING_ON, "clickhouse": {"existingSecret": "ch"},
    "web": {"existingSecret": "web", "ingress": {"enabled": True, "host": "h.example",
                                                 "tlsSecretName": "ports-tls"}},
    "alerts": {"enabled": True, "config": ALERTS_CONFIG,
               "existingSecret": "soc-alert-secrets"}}, {
    # the default producer off, a schedule entry with the chart's inventory (its
    # ConfigMap was not rendered, and every run stuck on FailedMount: a review)
    "produce": {"enabled": False, "inventory": INVENTORY},
    "schedules": [{"name": "nightly", "inventory": True, "ports": "1-65535",
                   "cron": "30 2 * * *"}]}],
    ids=["defaults", "everything-on", "existing-secrets", "schedules-only"])
def test_every_reference_in_the_render_resolves(helm: str, tmp_path: Path,
                                                values: dict[str, Any] | None) -> None:
    # Given the chart rendered with defaults, with every component on, and with secrets
    # made elsewhere
    objects = render(helm, tmp_path, values)
    # Then every volume, ConfigMap, Secret key, probe port, Service and Ingress backend it
    # names exists, and each probe's port is one the container's arguments listen on
    assert _reference_errors(objects) == []
    assert sum(kind == "Deployment" for kind, _ in objects) >= 3


def test_reference_check_finds_broken_references(helm: str, tmp_path: Path) -> None:
    # Given a render with every component on, broken in the ways a cluster would trip over
    objects = render(helm, tmp_path, EVERYTHING_ON)
    process = container(objects[("Deployment", f"{BASE}-process")])
    process["readinessProbe"]["httpGet"]["port"] = 6066 + 1
    process["volumeMounts"].append({"name": "nowhere", "mountPath": "/x"})
    web = objects[("Service", f"{BASE}-web")]
    web["spec"]["selector"] = {"app": "none"}
    serve = container(objects[("Deployment", f"{BASE}-web")])
    serve["args"][serve["args"].index("--port") + 1] = "8766"
    ingress = next(obj for (kind, _), obj in objects.items() if kind == "Ingress")
    ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "gone"
    # Then the check names each of them
    errors = _reference_errors(objects)
    assert any("readinessProbe: port 6067 is not declared" in e for e in errors), errors
    assert any("mounts nowhere, which is no volume" in e for e in errors), errors
    assert any(f"Service {BASE}-web selects [], not one workload" in e for e in errors)
    assert any("Ingress" in e and "no Service gone" in e for e in errors), errors
    assert any("readinessProbe: nothing in the args listens on 8765" in e for e in errors)
    assert len(errors) == 6, errors  # the web container's two probes both name 8765


# -- the API's own types ----------------------------------------------------------------------


def _template_text(helm: str, tmp_path: Path, values: dict[str, Any] | None) -> str:
    proc = _run(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                tmp_path=tmp_path, values=values)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _kubecheck(kubecheck: str, text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubecheck], input=text, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("values", [None, EVERYTHING_ON, yaml.safe_load(SCHEDULES_FILE)],
                         ids=["defaults", "everything-on", "schedules"])
def test_every_rendered_object_decodes_strictly_with_the_api_types(
        helm: str, kubecheck: str, tmp_path: Path, values: dict[str, Any] | None) -> None:
    # Given the chart rendered with defaults, with every component on, and with schedules
    if values is not None and "schedules" in values:
        values = {**values, "produce": {"inventory": INVENTORY}}
    text = _template_text(helm, tmp_path, values)
    # When every object is decoded as an API server with strict field validation does
    proc = _kubecheck(kubecheck, text)
    # Then each decodes: no unknown or duplicated field, no value of the wrong type
    assert proc.returncode == 0, proc.stderr
    rendered = sum(1 for doc in yaml.safe_load_all(text) if doc)
    assert proc.stdout.strip() == f"kubecheck: {rendered} objects, 0 refused"


def test_kubecheck_refuses_a_repeated_key(helm: str, kubecheck: str, tmp_path: Path) -> None:
    # Given a container whose image key is written twice (a YAML-to-JSON step that keeps
    # the last one would hide it)
    lines = _template_text(helm, tmp_path, None).splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("image:"))
    broken = "\n".join([*lines[:at + 1], lines[at], *lines[at + 1:]]) + "\n"
    # Then it is refused on one line that names the key
    proc = _kubecheck(kubecheck, broken)
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1
    assert 'key "image" already set in map' in proc.stderr


def test_kubecheck_refuses_a_misspelt_field_and_a_wrong_type(
        helm: str, kubecheck: str, tmp_path: Path) -> None:
    # Given a render with a misspelt probe and a replica count given as text
    text = _template_text(helm, tmp_path, None)
    broken = text.replace("readinessProbe:", "readinesProbe:", 1).replace(
        "replicas: 1", 'replicas: "one"', 1)
    # When it is checked / Then both are refused, one line each, naming the field
    proc = _kubecheck(kubecheck, broken)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert any('unknown field "spec.template.spec.containers[0].readinesProbe"' in ln
               for ln in lines)
    assert any("DeploymentSpec.spec.replicas of type int32" in ln for ln in lines)
    assert proc.stdout.strip().endswith("2 refused")
