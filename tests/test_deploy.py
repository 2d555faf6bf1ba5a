"""Deployment files: the systemd unit and the Kubernetes manifests."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import parse_config
from tests.paths import REPO

CONFIGS = REPO / "configs"
UNIT = CONFIGS / "systemd" / "flopledger.service"
K8S = CONFIGS / "kubernetes"
SERVICE_MONITOR_MARKER = "# --- ServiceMonitor alternative"


def unit_entries(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values; systemd keys may repeat (DeviceAllow=), so lists."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        out[section][key.strip()].append(value.strip())
    return out


def k8s_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


def test_systemd_unit_runs_unprivileged_and_hardened() -> None:
    text = UNIT.read_text()
    unit = unit_entries(text)
    service = unit["Service"]
    assert service["User"] == ["flopledger"]
    assert service["Group"] == ["flopledger"]
    assert service["StateDirectory"] == ["flopledger"]
    assert service["ExecStart"][0].split()[1:3] == ["run", "--config"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes",
                       "CapabilityBoundingSet": "CAP_SYS_PTRACE",
                       "AmbientCapabilities": "CAP_SYS_PTRACE",
                       "DevicePolicy": "closed"}.items():
        assert service[key] == [value], key
    assert set(service["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET",
                                                                  "AF_INET6"}
    assert "/dev/nvidiactl rw" in service["DeviceAllow"]
    assert any(v.startswith("char-nvidia") for v in service["DeviceAllow"])
    # numba's JIT needs W+X memory; PrivateDevices would hide the GPUs.
    assert "MemoryDenyWriteExecute" not in service
    assert "PrivateDevices" not in service
    # The one capability is explained where it is granted.
    before = text.split("CapabilityBoundingSet=")[0].rsplit("\n\n", 1)[-1]
    assert "/proc/<pid>/environ" in before
    assert "falls back" in before
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists; point it at one that does.
    copy = tmp_path / "flopledger.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/flopledger", "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "flopledger.service" not in result.stderr, result.stderr  # no warnings about it


def test_daemonset_targets_gpu_nodes_with_the_access_attribution_needs() -> None:
    kinds = by_kind(k8s_docs("daemonset.yaml"))
    assert set(kinds) == {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"}
    ds = kinds["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()
    assert pod["hostPID"] is True
    assert any(k.startswith("nvidia.com/gpu") for k in pod["nodeSelector"])
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    [container] = pod["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [9947]
    assert "resources" in container
    assert "nvidia.com/gpu" not in str(container["resources"])
    sec = container["securityContext"]
    assert sec["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE"]}
    assert sec["allowPrivilegeEscalation"] is False
    assert sec["readOnlyRootFilesystem"] is True
    assert sec.get("privileged") is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert volumes["state"]["hostPath"]["path"] == mounts["state"]
    assert "runtimeClassName" in (K8S / "daemonset.yaml").read_text()  # the NVIDIA note


def test_configmap_agent_config_is_valid_for_the_agent() -> None:
    kinds = by_kind(k8s_docs("daemonset.yaml"))
    raw = tomllib.loads(kinds["ConfigMap"]["data"]["agent.toml"])
    config = parse_config(raw)
    assert config.agent.listen_port == 9947
    assert str(config.agent.state_dir) == "/var/lib/flopledger"
    pod = kinds["DaemonSet"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert "/var/lib/flopledger" in mounts


def test_service_and_monitors_select_the_agents_on_9947() -> None:
    pod_labels = by_kind(k8s_docs("daemonset.yaml"))["DaemonSet"]["spec"]["template"][
        "metadata"]["labels"]
    service = by_kind(k8s_docs("service.yaml"))["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [(p["port"], p["name"]) for p in service["spec"]["ports"]] == [(9947, "metrics")]
    pod_monitor = by_kind(k8s_docs("podmonitor.yaml"))["PodMonitor"]
    assert pod_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    # The job name must match the alerts' and dashboard's up{job=~"flopledger.*"}.
    assert pod_labels[pod_monitor["spec"]["jobLabel"]].startswith("flopledger")


def test_commented_service_monitor_alternative_parses() -> None:
    text = (K8S / "podmonitor.yaml").read_text()
    assert SERVICE_MONITOR_MARKER in text
    block = text.split(SERVICE_MONITOR_MARKER, 1)[1].splitlines()[1:]
    body = "\n".join(line[2:] for line in block if (line.startswith("# ") and ":" in line)
                     or line.startswith("#   ") or line == "#")
    docs = [d for d in yaml.safe_load_all(body) if d]
    [monitor] = docs
    assert monitor["kind"] == "ServiceMonitor"
    service = by_kind(k8s_docs("service.yaml"))["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]].startswith("flopledger")
