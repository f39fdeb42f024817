"""deploy/ manifests parse, and run exactly what `vinted export` writes (no cluster here: drift tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from hostinfo import RewriteDecision
from vinted_classifier.config import ExportConfig
from vinted_classifier.distributed import cluster_from_env
from vinted_classifier.serving_files import (
    CONTAINER_MODELS_ROOT,
    PROMETHEUS_PATH,
    SESSION_FILES,
    real_server_args,
    write_serving_config,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MODEL = ExportConfig().model_name


def _docs(relative: str) -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / relative).read_text()) if d]
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), (relative, doc.get("kind"))
    return {doc["kind"]: doc for doc in docs}


def _flags(args: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in args)


@pytest.fixture(scope="module")
def exported_files(tmp_path_factory) -> dict[str, str]:
    folder = write_serving_config(tmp_path_factory.mktemp("export"), MODEL)
    return {path.name: path.read_text() for path in folder.iterdir()}


def _config_mount(pod_spec: dict, container: dict) -> str:
    volume = next(
        v["name"] for v in pod_spec["volumes"] if v.get("configMap", {}).get("name") == "vinted-serving-config"
    )
    return next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume)


def _check_file_flags(flags: dict[str, str], mount: str, exported_files: dict[str, str], configmap: dict) -> None:
    for flag, value in flags.items():
        if flag.endswith("_file"):
            folder, name = value.rsplit("/", 1)
            assert folder == mount, (flag, value)
            assert name in exported_files, f"--{flag} names {name}, which `vinted export` does not write"
            assert name in configmap["data"], f"--{flag} names {name}, which the ConfigMap lacks"


def test_every_manifest_parses():
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {f.relative_to(DEPLOY).as_posix() for f in files} == {
        "serving/configmap.yaml",
        "serving/tf-serving.yaml",
        "kserve/inference-service.yaml",
        "training/multiworker-job.yaml",
    }
    kinds = {doc["kind"] for f in files for doc in yaml.safe_load_all(f.read_text()) if doc}
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "InferenceService",
        "Job",
    }


def test_configmap_holds_exactly_what_the_export_writes(exported_files):
    configmap = _docs("serving/configmap.yaml")["ConfigMap"]
    assert configmap["data"], "empty ConfigMap"
    for name, text in configmap["data"].items():
        assert name in exported_files, f"ConfigMap key {name} is not a file `vinted export` writes"
        assert text == exported_files[name], f"ConfigMap {name} differs from the export's (regenerate it)"
    assert set(SESSION_FILES.values()) | {"models.container.config", "batching.config", "monitoring.config"} == set(
        configmap["data"]
    )
    assert f'base_path: "{CONTAINER_MODELS_ROOT}/{MODEL}"' in configmap["data"]["models.container.config"]


def test_deployment_runs_the_flags_vinted_serve_gives_the_real_server(exported_files, tmp_path):
    docs = _docs("serving/tf-serving.yaml")
    configmap = _docs("serving/configmap.yaml")["ConfigMap"]
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("tensorflow/serving:2.21")
    flags = _flags(container["args"])
    ours = _flags(real_server_args(tmp_path, RewriteDecision("off", "test")))
    assert set(flags) == set(ours), set(flags) ^ set(ours)
    for flag in set(ours) - {"port", "rest_api_port"} - {f for f in ours if f.endswith("_file")}:
        assert flags[flag] == ours[flag], flag
    mount = _config_mount(pod, container)
    _check_file_flags(flags, mount, exported_files, configmap)
    assert flags["model_config_file"].endswith("/models.container.config")
    assert flags["tensorflow_session_config_file"].endswith("/" + SESSION_FILES["off"])  # safe on every CPU
    models = next(m for m in container["volumeMounts"] if m["mountPath"] == CONTAINER_MODELS_ROOT)
    assert models["readOnly"] is True

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(flags["port"]), "http": int(flags["rest_api_port"])} == {"grpc": 8500, "http": 8501}
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == f"/v1/models/{MODEL}" and ports[probe["port"]] == 8501
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == PROMETHEUS_PATH and annotations["prometheus.io/port"] == "8501"

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    service = docs["Service"]
    assert service["spec"]["selector"] == labels
    assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {(8500, "grpc"), (8501, "http")}
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels


def test_kserve_inference_service_serves_the_export_with_the_same_files(exported_files, tmp_path):
    service = _docs("kserve/inference-service.yaml")["InferenceService"]
    configmap = _docs("serving/configmap.yaml")["ConfigMap"]
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "tensorflow" and model["runtimeVersion"].startswith("2.21")
    assert model["storageUri"].rstrip("/").endswith(f"/{MODEL}")  # the base path with the version folders
    flags = _flags(model["args"])
    volume = next(v["name"] for v in predictor["volumes"] if v["configMap"]["name"] == configmap["metadata"]["name"])
    mount = next(m["mountPath"] for m in model["volumeMounts"] if m["name"] == volume)
    _check_file_flags(flags, mount, exported_files, configmap)
    ours = _flags(real_server_args(tmp_path, RewriteDecision("off", "test")))
    for flag in ("enable_batching", "enable_model_warmup"):
        assert flags[flag] == ours[flag], flag
    assert flags["tensorflow_session_config_file"].endswith("/" + SESSION_FILES["off"])


def test_training_job_gives_every_worker_a_valid_tf_config():
    docs = _docs("training/multiworker-job.yaml")
    job, service = docs["Job"], docs["Service"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    (container,) = pod["containers"]
    script = " ".join(container["args"])
    assert "exec vinted train" in script
    match = re.search(r'export TF_CONFIG="(.*?)" &&', script)
    assert match, script
    port = service["spec"]["ports"][0]["port"]
    assert {p["containerPort"] for p in container["ports"]} == {port}
    chiefs = 0
    for index in range(spec["completions"]):
        raw = match.group(1).replace('\\"', '"').replace("${JOB_COMPLETION_INDEX}", str(index))
        cluster = cluster_from_env({"TF_CONFIG": raw})
        assert cluster.num_workers == spec["completions"] and cluster.task_index == index
        addresses = json.loads(raw)["cluster"]["worker"]
        assert addresses == [f"{job['metadata']['name']}-{i}.{pod['subdomain']}:{port}" for i in range(len(addresses))]
        chiefs += cluster.is_chief
    assert chiefs == 1
