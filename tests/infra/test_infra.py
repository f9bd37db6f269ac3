"""The deployment files checked offline: linters on the Dockerfiles, workflows and shell scripts; the
lock files against pyproject.toml and each role's imports; every setting a role reads set in the
compose stack and in the Azure templates (or allowed to default, with the reason); ports and health
paths against the API's real routes and the console's; the Dagster instance files against Dagster's
own config schema; the Bicep templates parsed and cross-checked; the blue/green script against a
stand-in `az`.

What no test here does: build an image (no Docker engine) or deploy to Azure. The lean images'
dependency sets are installed and started for real in tests/test_infra_images.py.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import BaseModel

from recsys_assets.contract.settings import Settings, get_settings
from tests.conftest import ROOT

INFRA = ROOT / "infra"
AZURE = INFRA / "azure"
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


roles = _load("infra_roles", INFRA / "roles.py")
smoke = _load("infra_smoke", INFRA / "smoke.py")

# compose service / Bicep env variable -> role (roles.ROLES); mlflow is a third-party server
COMPOSE_ROLES = {
    "api": "api",
    "console": "console",
    "code-location": "pipeline",
    "pipeline": "pipeline",
    "dagster-webserver": "dagster",
    "dagster-daemon": "dagster",
}
BICEP_ENV_ROLES = {"apiEnv": "api", "consoleEnv": "console", "pipelineEnv": "pipeline", "dagsterEnv": "dagster"}

# Settings a role reads but may leave at their default, and why the default is right for it there.
# Every other setting a role reads must be set by its image, compose service and Azure app.
CLEANING = (
    "cleaning parameters: the documented defaults fit the shipped sources; a deployment on other data "
    "sets the same RECSYS_* names"
)


def cleaning(*names: str) -> dict[str, str]:
    return dict.fromkeys(names, CLEANING)


SERVING_TUNING = {
    name: "serving limits and timings with safe defaults (serving/README.md); raise per deployment if needed"
    for name in (
        "cache_ttl_seconds",
        "rate_limit_per_minute",
        "max_body_bytes",
        "model_poll_seconds",
        "idempotency_ttl_seconds",
        "live_state_ttl_seconds",
        "events_segment_max_bytes",
        "events_segment_max_seconds",
        "max_json_depth",
        "candidate_threshold_items",
    )
}
LOG_FORMAT = "text lines by default; a deployment whose collector parses JSON sets RECSYS_LOG_FORMAT=json"
ALLOWED_DEFAULTS: dict[str, dict[str, str]] = {
    "api": {
        # ratings and time bounds check live events as the pipeline checks logged ones
        **cleaning("event_weights", "rating_min", "rating_max", "time_min", "time_max"),
        **SERVING_TUNING,
        "ab_challenger_share": "0: no A/B split until an operator opens one",
        "ab_challenger_path": "default: artifacts/CHALLENGER.json when the pipeline writes it",
        "exploration": "off (share 0): a deployment opens it on a share of the champion's lists for off-policy "
        "estimates",
        "log_format": LOG_FORMAT,
        "mlflow_tracking_uri": "only the fallback for registry_url, which compose and Azure set",
        **{
            name: "CORS is off by default: a client team's browser app on another origin is named per deployment"
            for name in ("cors_allow_origins", "cors_allow_credentials", "cors_max_age_seconds")
        },
        "forwarded_allow_ips": "default: no proxy is believed, the client address is the connection's peer; a "
        "deployment that puts the API behind its own proxy names it (compose and Azure: each client is its API "
        "key or the ingress's address)",
    },
    # the console reads only where the data is and where the API answers: all set everywhere it runs
    "console": {},
    "pipeline": {
        **cleaning(
            *("event_weights", "rating_min", "rating_max", "time_min", "time_max"),
            *("kcore_user", "kcore_item", "reject_sample_size"),
        ),
        "log_format": LOG_FORMAT,
        "source": "movielens unless a deployment points RECSYS_SOURCE/RECSYS_EVENT_LOG at its event log",
        "ingestion": "full ingestion unless a deployment whose event log grows by a file a day sets "
        "RECSYS_INGESTION__MODE=daily",
        **{
            name: "the feedback loop's tuning: the documented defaults (hourly windows, weekly retrain, all "
            "data features deciding) are a deployment's starting point"
            for name in (
                *("drift_window_minutes", "drift_window_grace_seconds", "drift_sensor_seconds"),
                *("drift_reference_windows", "drift_min_rows", "drift_threshold", "drift_share", "drift_features"),
                *("min_ctr", "min_ndcg", "retrain_models", "retrain_protocols", "retrain_budget", "retrain_cron"),
                "promotion_margin",
            )
        },
        "event_log": "only with source=event_log",
        "registry_url": "read by the demo alone (whether to point its API at the MLflow UI); the pipeline writes "
        "the registry through mlflow_tracking_uri",
        "exploration": "the off-policy estimates' defaults (the latest 20k champion lists, 95% intervals)",
        "canary": "the canary gate's defaults (10% canary, 5% holdout, 5% margin, alpha 0.05) are a deployment's "
        "starting point",
        **{
            name: "evaluation at scale: the defaults (10k users, 256 MB batches) bound memory at every size"
            for name in ("eval_users", "eval_batch_memory_mb", "eval_recbole_collector_cells")
        },
        "limits": "the training limits' defaults (16 GB, 30 min per candidate, EASE up to 20k items, every core) "
        "fit the documented machine; a deployment with less memory sets RECSYS_LIMITS__*",
        **{
            name: "the executor: multiprocess (a step per process, one per core) on compose and Container Apps; "
            "infra/k8s sets k8s"
            for name in ("executor", "executor_max_concurrent")
        },
        **{
            name: "read by `python -m recsys_assets demo` only (local servers), not by `pipeline` or the code server"
            for name in (
                *("api_host", "api_port", "console_port", "dagster_port", "mlflow_ui_port", "redis_url"),
                "api_keys",
            )
        },
    },
}
# either one names the Blob account: a connection string (Azurite) or an account URL (managed identity)
STORAGE_CREDENTIALS = {"azure_connection_string", "azure_account_url"}


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = (INFRA / "docker" / f"{name}.Dockerfile").read_text()
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    out = []
    for line in lines:
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def image_env(name: str) -> dict[str, str]:
    """ENV of the final stage."""
    stages = [i for i, (instr, _) in enumerate(dockerfile(name)) if instr == "FROM"]
    env = {}
    for instr, args in dockerfile(name)[stages[-1] :]:
        if instr == "ENV":
            for part in shlex.split(args):
                key, _, value = part.partition("=")
                env[key] = value
    return env


def instruction(name: str, instr: str) -> list[str]:
    return [args for i, args in dockerfile(name) if i == instr]


@functools.cache
def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def compose_env(service: str) -> dict[str, str]:
    """The environment compose gives a service: its env files that exist, then `environment`, with
    `${VAR:-default}` interpolated to the default."""
    svc = compose()["services"][service]
    env: dict[str, str] = {}
    files = svc.get("env_file") or []
    for entry in [files] if isinstance(files, str | dict) else files:
        path = INFRA / (entry if isinstance(entry, str) else entry["path"])
        if path.exists():
            env.update(env_file(path))
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.partition("=")[::2] for item in raw)
    for key, value in raw.items():
        env[key] = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))
    return env


def compose_dockerfile(service: str) -> str | None:
    """The Dockerfile (stem) of the image a compose service runs, if it is one of ours."""
    svc = compose()["services"][service]
    image = svc.get("image", "")
    for other in compose()["services"].values():
        if other.get("image") == image and "build" in other:
            return Path(other["build"]["dockerfile"]).name.removesuffix(".Dockerfile")
    return None


@functools.cache
def bicep(path: str) -> dict:
    from pycep import BicepParser

    return BicepParser().parse(file_path=AZURE / path)


def bicep_value(doc: dict, value: Any) -> Any:
    """A variable's value where `value` names one, else `value` itself."""
    if isinstance(value, str) and value in (doc.get("variables") or {}):
        return doc["variables"][value]["value"]
    return value


def bicep_env(var: str) -> dict[str, Any]:
    """Env entries (name -> entry) of one of main.bicep's `<role>Env` variables, concat() unfolded."""
    doc = bicep("main.bicep")
    found: dict[str, Any] = {}

    def walk(node: Any) -> None:
        node = bicep_value(doc, node)
        if isinstance(node, dict):
            if isinstance(node.get("name"), str) and ("value" in node or "secretRef" in node):
                found[node["name"]] = node
                return
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(doc["variables"][var]["value"])
    return found


def bicepparam(env: str) -> dict[str, str]:
    """`param name = expression` lines of a .bicepparam file (its `using` checked separately)."""
    text = (AZURE / "params" / f"{env}.bicepparam").read_text()
    return dict(re.findall(r"^param\s+(\w+)\s*=\s*(.+)$", text, flags=re.M))


def setting_names(model: type[BaseModel] = Settings, prefix: str = "RECSYS_") -> dict[str, str]:
    """Every environment name of the settings, nested models unfolded (`RECSYS_EVENT_LOG__ITEMS__PATH`),
    mapped to the top-level field it belongs to."""
    names = {}
    for field, info in model.model_fields.items():
        name = f"{prefix}{field.upper()}"
        names[name] = field
        for arg in getattr(info.annotation, "__args__", (info.annotation,)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                names.update({k: field for k in setting_names(arg, f"{name}__")})
    return names


def settings_read_by(role_name: str) -> set[str]:
    """Settings fields the role's code reads (attribute access on a settings object, `getattr` with a
    constant, or a Settings property/method standing for the fields it uses)."""
    fields = set(Settings.model_fields)
    derived: dict[str, set[str]] = {}
    tree = ast.parse((ROOT / "recsys_assets" / "contract" / "settings.py").read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Settings")
    for fn in cls.body:
        # properties and methods stand for the fields they use; validators run for every role alike
        if isinstance(fn, ast.FunctionDef) and not any("validator" in ast.unparse(d) for d in fn.decorator_list):
            derived[fn.name] = {
                n.attr
                for n in ast.walk(fn)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
            } & fields
    read: set[str] = set()
    for module in roles.role_imports(roles.ROLES[role_name]).modules:
        for node in ast.walk(ast.parse(roles.module_file(module).read_text())):
            if isinstance(node, ast.Attribute) and (node.attr in fields or node.attr in derived):
                owner = ast.unparse(node.value).split(".")[-1].lstrip("_")
                if owner in ("settings", "s"):
                    read |= {node.attr} if node.attr in fields else derived[node.attr]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in fields
            ):
                read.add(node.args[1].value)
    return read


def api_routes() -> set[str]:
    from serving.app import create_app

    app = create_app(get_settings(storage_uri="data", redis_url=""))
    return {route.path for route in app.routes}


def linter(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.fail(f"{name} not found: it comes with the dev extra (make install)")
    return path


# ---------------------------------------------------------------------------------------------
# Linters
# ---------------------------------------------------------------------------------------------


def test_hadolint_passes_on_every_dockerfile() -> None:
    files = sorted((INFRA / "docker").glob("*.Dockerfile"))
    assert {f.stem for f in files} == {Path(r.dockerfile).stem for r in roles.ROLES.values()}
    result = subprocess.run([linter("hadolint"), *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_passes_on_the_workflows() -> None:
    assert {p.name for p in WORKFLOWS.glob("*.yml")} >= {"ci.yml", "deploy.yml"}
    # shellcheck from the dev extra is on PATH: actionlint checks the `run:` scripts with it too
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([linter("actionlint")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_passes_on_the_deploy_script() -> None:
    result = subprocess.run([linter("shellcheck"), str(AZURE / "deploy.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# Dependencies: the split, the locks, each role's imports
# ---------------------------------------------------------------------------------------------


def test_extras_split_the_dependencies_by_role() -> None:
    project = roles.pyproject()
    extras = project["optional-dependencies"]
    core = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert core == {
        canonicalize_name(n)
        for n in (
            *("pydantic", "pydantic-settings", "numpy", "scipy", "pandas", "pyarrow", "fsspec", "adlfs"),
            *("azure-storage-blob", "azure-identity", "tqdm"),
        )
    }
    assert extras["all"] == ["recsys[api,console,pipeline]"]
    assert {"api", "console", "pipeline", "all", "dev"} <= set(extras)
    # `make install` installs the lock of `.[all,dev]`; `make lock` resolves `.[all,dev]` to write it
    assert "$(BIN)/pip install -q --no-deps -r $(DEV_LOCK)" in (ROOT / "Makefile").read_text()
    assert roles.DEV_EXTRAS == ("api", "console", "pipeline", "dev")
    pipeline = {Requirement(r).name: Requirement(r) for r in extras["pipeline"]}
    # dagster's integrations move with it: 1.13.27 <-> 0.29.27
    assert str(pipeline["dagster-postgres"].specifier) == "==0.29.27"
    assert str(pipeline["dagster"].specifier) == "==1.13.27"


@pytest.mark.parametrize("role_name", sorted(roles.ROLES))
def test_lock_pins_every_requirement_within_its_bounds(role_name: str) -> None:
    role = roles.ROLES[role_name]
    pins = roles.read_lock(role)
    assert pins, f"{roles.lock_path(role)} is empty"
    for req in roles.role_requirements(role):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in {roles.lock_path(role).name}"
        version = pins[name]
        assert req.specifier.contains(version, prereleases=True) or req.specifier.contains(
            version.split("+")[0], prereleases=True
        ), f"{name}=={version} is outside {req}"
    for excluded in role.excluded:
        assert canonicalize_name(excluded) not in pins, f"{role_name} image would carry {excluded}"


@pytest.mark.parametrize("role_name", sorted(roles.ROLES))
def test_lock_is_the_closure_in_this_environment(role_name: str) -> None:
    """The lock equals the role's closure as installed here. `make install` installs infra/requirements/dev.txt,
    which holds every role's closure, so on a fresh clone they are equal; a difference means pyproject.toml
    changed without `make lock`, or the environment was installed some other way."""
    role = roles.ROLES[role_name]
    pins = roles.read_lock(role)
    lines = roles.lock_lines(role)  # LockError: a requirement missing or out of bounds here (`make install`)
    current = {canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in lines}
    missing, extra = sorted(set(current) - set(pins)), sorted(set(pins) - set(current))
    drift = {n: (pins[n], current[n]) for n in pins if n in current and pins[n] != current[n]}
    assert not (missing or extra or drift), (
        f"environment differs from {roles.lock_path(role).name}: missing {missing}, extra {extra}, "
        f"versions (lock, installed) {drift}. Regenerate the locks with `make lock`, or reinstall with `make install`"
    )


@pytest.mark.parametrize("role_name", ["api", "console", "pipeline"])
def test_every_module_a_role_imports_is_in_its_lock(role_name: str) -> None:
    role = roles.ROLES[role_name]
    pins = set(roles.read_lock(role))
    found = roles.role_imports(role)
    missing = {}
    for module, importer in found.third_party.items():
        dists = roles.distributions_of(module)
        assert dists, f"{module} (imported by {importer}) belongs to no installed distribution"
        if not dists & pins:
            missing[module] = importer
    assert not missing, f"{role_name}: imported but not in its lock: {missing}"


def test_api_and_console_import_no_training_stack() -> None:
    for role_name in ("api", "console"):
        found = roles.role_imports(roles.ROLES[role_name])
        imported = set(found.third_party) | set(found.optional)
        assert not imported & {"torch", "recbole", "ray", "evidently", "optuna", "sklearn"}, role_name
        # the API reads only the artifact, the console the tables the pipeline writes: no Dagster, no MLflow
        assert not imported & {"dagster", "mlflow"}, role_name


@pytest.mark.parametrize("package", ["console", "serving"])
def test_console_and_api_import_only_the_contract_of_the_pipeline(package: str) -> None:
    """Every import of `recsys_assets` in console/ and serving/, at module level or inside a function, is
    of `recsys_assets.contract` (the console reads tables through `contract.warehouse`)."""
    outside = []
    for path in sorted((ROOT / package).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for imp in roles.imports_of(module):
            parts = imp.module.split(".")
            if parts[0] == "recsys_assets" and parts[:2] != ["recsys_assets", "contract"]:
                outside.append(f"{module} imports {imp.module}")
    assert not outside, outside


@pytest.mark.parametrize("role_name", sorted(roles.ROLES))
def test_dockerfile_installs_its_lock_only(role_name: str) -> None:
    role = roles.ROLES[role_name]
    name = Path(role.dockerfile).stem
    text = (ROOT / role.dockerfile).read_text()
    assert f"COPY infra/requirements/{role_name}.txt /tmp/requirements.txt" in text
    installs = [a for a in instruction(name, "RUN") if "pip install" in a]
    assert any("--no-deps --only-binary=:all: -r /tmp/requirements.txt" in a for a in installs), installs
    torch = [a for a in installs if "torch==" in a]
    if "torch" in roles.read_lock(role):
        # the CPU build from the PyTorch index, the very version of the lock
        assert torch and f"torch=={roles.read_lock(role)['torch']}" in torch[0], torch
        assert roles.TORCH_CPU_INDEX in text
    else:
        assert not torch and "download.pytorch.org" not in text
    if role.extra is not None:
        assert any("pip install --no-deps /src && pip check" in a for a in installs)
    # multi-stage, non-root
    assert len(instruction(name, "FROM")) == 2
    assert instruction(name, "USER") == ["10001:10001"]
    assert instruction(name, "HEALTHCHECK"), f"{name} has no HEALTHCHECK"
    # the build context is the repository: everything but what the Dockerfile copies is left out
    ignore = [
        line
        for line in (INFRA / "docker" / f"{name}.Dockerfile.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ignore[0] == "*"
    copied = set()
    for args in instruction(name, "COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        if "--from=" not in args:
            copied.update(words[:-1])
    for source in copied:
        assert any(source.startswith(line[1:].rstrip("/")) for line in ignore if line.startswith("!")), source


# ---------------------------------------------------------------------------------------------
# Ports and health paths
# ---------------------------------------------------------------------------------------------


def healthcheck_url(name: str) -> tuple[int, str] | None:
    [check] = instruction(name, "HEALTHCHECK")
    m = re.search(r"http://127\.0\.0\.1:(\d+)(/[^'\"]*)", check)
    return (int(m.group(1)), m.group(2)) if m else None


def test_api_ports_and_health_paths_match_its_routes() -> None:
    routes = api_routes()
    assert {"/health", "/ready", "/metrics", "/docs"} <= routes
    env = image_env("api")
    port = int(env["RECSYS_API_PORT"])
    assert env["RECSYS_API_HOST"] == "0.0.0.0"
    assert instruction("api", "EXPOSE") == [str(port)]
    assert healthcheck_url("api") == (port, "/health")
    # compose publishes that port
    assert f"127.0.0.1:{port}:{port}" in compose()["services"]["api"]["ports"]
    # Azure: the same port, liveness /health and readiness /ready, both real routes
    doc = bicep("main.bicep")
    assert bicep_value(doc, "apiPort") == port
    params = doc["modules"]["api"]["config"]["params"]
    assert bicep_value(doc, params["targetPort"]) == port
    probes = {p["type"]: p["httpGet"] for p in params["probes"]}
    assert probes["Liveness"]["path"] == "/health"
    assert probes["Readiness"]["path"] == "/ready"
    for probe in probes.values():
        assert probe["path"] in routes
        assert bicep_value(doc, probe["port"]) == port
    # the deployment's smoke test asks for what the API serves
    source = (INFRA / "smoke.py").read_text()
    for path in ("/health", "/ready", "/recommendations"):
        assert path in source
    assert any(r.startswith("/v1/users/{user_id") and r.endswith("/recommendations") for r in routes)


def test_console_port_and_health_path_are_streamlits() -> None:
    from streamlit.web.server.starlette.starlette_routes import ROUTE_HEALTH

    health = "/" + ROUTE_HEALTH.lstrip("/")
    env = image_env("console")
    port = int(env["RECSYS_CONSOLE_PORT"])
    assert instruction("console", "EXPOSE") == [str(port)]
    assert healthcheck_url("console") == (port, health)
    [cmd] = instruction("console", "CMD")
    args = json.loads(cmd)
    assert args[args.index("--server.port") + 1] == str(port)
    assert args[args.index("--server.address") + 1] == "0.0.0.0"
    # the image's Python is 3.11: the app path below site-packages is that of the installed package
    assert args[2] == "/opt/venv/lib/python3.11/site-packages/console/app.py"
    assert instruction("console", "FROM")[0].startswith("${PYTHON_IMAGE}")
    assert "python:3.11-" in (INFRA / "docker" / "console.Dockerfile").read_text()
    assert f"127.0.0.1:{port}:{port}" in compose()["services"]["console"]["ports"]
    doc = bicep("main.bicep")
    params = doc["modules"]["console"]["config"]["params"]
    assert bicep_value(doc, params["targetPort"]) == port
    assert {p["httpGet"]["path"] for p in params["probes"]} == {health}


def test_dagster_and_mlflow_ports_and_health_paths() -> None:
    import dagster_webserver.webserver as webserver

    # the webserver's health route, the code server's gRPC port, MLflow's /health
    assert '"/server_info"' in Path(webserver.__file__).read_text()
    assert healthcheck_url("dagster") == (3000, "/server_info")
    [cmd] = instruction("dagster", "CMD")
    assert json.loads(cmd)[:5] == ["dagster-webserver", "--host", "0.0.0.0", "--port", "3000"]
    assert instruction("code-location", "EXPOSE") == ["4000"]
    [cmd] = instruction("code-location", "CMD")
    args = json.loads(cmd)
    assert args[:3] == ["dagster", "code-server", "start"]
    assert args[args.index("--port") + 1] == "4000"
    assert args[args.index("--module-name") + 1] == "recsys_assets.defs.definitions"
    [check] = instruction("code-location", "HEALTHCHECK")
    assert '"grpc-health-check", "--port", "4000"' in check
    from mlflow.server.security_utils import HEALTH_ENDPOINTS

    assert "/health" in HEALTH_ENDPOINTS
    services = compose()["services"]
    assert "http://127.0.0.1:5000/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    assert services["code-location"]["environment"]["DAGSTER_CODE_LOCATION_PORT"] == "4000"
    doc = bicep("main.bicep")
    assert bicep_value(doc, "codePort") == 4000
    assert bicep_value(doc, "dagsterPort") == 3000
    assert bicep_value(doc, "mlflowPort") == 5000
    ui = doc["modules"]["dagsterUi"]["config"]["params"]
    assert ui["probes"][0]["httpGet"]["path"] == "/server_info"
    code = doc["modules"]["codeLocation"]["config"]["params"]
    # gRPC inside the environment only, HTTP/2
    assert code["external"] is False and code["transport"] == "http2"


# ---------------------------------------------------------------------------------------------
# Settings: every one a role reads is set everywhere it runs (or allowed to default)
# ---------------------------------------------------------------------------------------------


def test_settings_read_by_each_role_are_found() -> None:
    # the analysis itself: a few settings each role certainly reads
    assert {"storage_uri", "redis_url", "api_keys", "events_dir"} <= settings_read_by("api")
    assert {"storage_uri", "api_url", "events_dir"} <= settings_read_by("console")
    assert {"storage_uri", "source", "mlflow_tracking_uri", "dagster_home"} <= settings_read_by("pipeline")


def test_allow_lists_name_settings_their_role_reads() -> None:
    for role_name, allowed in ALLOWED_DEFAULTS.items():
        stale = set(allowed) - settings_read_by(role_name)
        assert not stale, f"{role_name}: allowed to default but not read any more: {sorted(stale)}"
        unknown = set(allowed) - set(Settings.model_fields)
        assert not unknown, f"{role_name}: no such settings: {sorted(unknown)}"


def _check_coverage(role_name: str, provided: set[str], where: str) -> None:
    names = {field: f"RECSYS_{field.upper()}" for field in Settings.model_fields}
    needed = settings_read_by(role_name)
    missing = []
    for field in sorted(needed - STORAGE_CREDENTIALS):
        if names[field] not in provided and field not in ALLOWED_DEFAULTS[role_name]:
            missing.append(names[field])
    if not any(names[f] in provided for f in STORAGE_CREDENTIALS):
        missing.append(" or ".join(sorted(names[f] for f in STORAGE_CREDENTIALS)))
    assert not missing, f"{where} ({role_name}) does not set {missing}"


@pytest.mark.parametrize("service", sorted(s for s, r in COMPOSE_ROLES.items() if r != "dagster"))
def test_compose_sets_every_setting_its_role_reads(service: str) -> None:
    role_name = COMPOSE_ROLES[service]
    env = {**image_env(compose_dockerfile(service)), **compose_env(service)}
    _check_coverage(role_name, set(env), f"compose service {service}")


@pytest.mark.parametrize("var", sorted(v for v, r in BICEP_ENV_ROLES.items() if r != "dagster"))
def test_azure_apps_set_every_setting_their_role_reads(var: str) -> None:
    role_name = BICEP_ENV_ROLES[var]
    env = {**image_env(Path(roles.ROLES[role_name].dockerfile).stem), **bicep_env(var)}
    _check_coverage(role_name, set(env), f"main.bicep {var}")


def test_every_recsys_name_set_anywhere_is_a_setting() -> None:
    """A typo in a variable name would silently fall back to the default."""
    valid = setting_names()
    sources = {f"compose {s}": compose_env(s) for s in compose()["services"]}
    sources |= {f"main.bicep {v}": bicep_env(v) for v in BICEP_ENV_ROLES}
    sources |= {f"image {r.name}": image_env(Path(r.dockerfile).stem) for r in roles.ROLES.values()}
    for where, env in sources.items():
        unknown = {k for k in env if k.startswith("RECSYS_") and k not in valid}
        assert not unknown, f"{where}: not settings: {sorted(unknown)}"


@pytest.mark.parametrize("service", sorted(s for s, r in COMPOSE_ROLES.items() if r != "dagster"))
def test_compose_environment_builds_valid_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RECSYS_"):
            monkeypatch.delenv(key)
    env = {**image_env(compose_dockerfile(service)), **compose_env(service)}
    for key, value in env.items():
        if key.startswith("RECSYS_"):
            monkeypatch.setenv(key, value)
    settings = get_settings()
    assert settings.is_azure and settings.azure_connection_string
    assert settings.storage_uri == "abfs://recsys/data"
    if COMPOSE_ROLES[service] == "api":
        from serving.security import ApiKeys

        # Azure storage needs a local events folder: the volume the console and the pipeline read
        assert str(settings.events_path()) == "/var/lib/recsys/events"
        assert ApiKeys.parse(settings.api_keys).scopes_by_key


def test_dagster_variables_are_set_wherever_dagster_runs() -> None:
    """The instance and workspace files read DAGSTER_* variables: every process loading them has them."""
    texts = [(INFRA / "dagster" / f).read_text() for f in ("dagster.yaml", "dagster.azure.yaml", "workspace.yaml")]
    instance_vars = set(re.findall(r"\{env: (DAGSTER_[A-Z_]+)\}", texts[0] + texts[1]))
    workspace_vars = set(re.findall(r"\{env: (DAGSTER_[A-Z_]+)\}", texts[2]))
    assert {"DAGSTER_PG_HOST", "DAGSTER_PG_PASSWORD"} <= instance_vars
    local_vars = set(re.findall(r"\{env: (DAGSTER_[A-Z_]+)\}", texts[0]))
    for service, role_name in COMPOSE_ROLES.items():
        if role_name not in ("pipeline", "dagster"):
            continue
        env = {**image_env(compose_dockerfile(service)), **compose_env(service)}
        needed = local_vars | (workspace_vars if role_name == "dagster" else set()) | {"DAGSTER_HOME"}
        assert needed <= set(env), f"compose {service} misses {sorted(needed - set(env))}"
        assert env["DAGSTER_HOME"] == "/opt/dagster/home"
    for var in ("pipelineEnv", "dagsterEnv"):
        env = bicep_env(var)
        needed = instance_vars | (workspace_vars if var == "dagsterEnv" else set()) | {"DAGSTER_HOME"}
        assert needed <= set(env), f"main.bicep {var} misses {sorted(needed - set(env))}"
        assert bicep_value(bicep("main.bicep"), env["DAGSTER_HOME"]["value"]) == "/opt/dagster/azure"
    # the CLI's instance is the servers' instance
    pipeline = bicep_env("pipelineEnv")
    assert pipeline["RECSYS_DAGSTER_HOME"]["value"] == pipeline["DAGSTER_HOME"]["value"]
    assert image_env("code-location")["RECSYS_DAGSTER_HOME"] == image_env("code-location")["DAGSTER_HOME"]


# ---------------------------------------------------------------------------------------------
# Dagster instance and workspace files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dagster.yaml", "dagster.azure.yaml"])
def test_dagster_instance_files_pass_dagsters_schema(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_postgres import DagsterPostgresStorage

    for var in re.findall(r"\{env: ([A-Z_]+)\}", (INFRA / "dagster" / name).read_text()):
        monkeypatch.setenv(var, "5432" if var.endswith("_PORT") else "x")
    shutil.copy(INFRA / "dagster" / name, tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    result = process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    assert result.success, result.errors
    for key in ("run_coordinator", "run_launcher", "compute_logs"):
        if key not in config:
            continue
        cls = getattr(importlib.import_module(config[key]["module"]), config[key]["class"])
        result = process_config(cls.config_type(), config[key].get("config") or {})
        assert result.success, (key, result.errors)
    assert config["telemetry"] == {"enabled": False}


def test_postgres_urls_name_the_driver_the_images_have() -> None:
    """SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; dagster-postgres brings psycopg2 only."""
    for role_name in ("pipeline", "dagster"):
        pins = roles.read_lock(roles.ROLES[role_name])
        assert "psycopg2-binary" in pins and "psycopg" not in pins, role_name
    for name in ("dagster.yaml", "dagster.azure.yaml"):
        config = yaml.safe_load((INFRA / "dagster" / name).read_text())
        assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2", name
    assert compose_env("mlflow")["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert "'postgresql+psycopg2://" in (AZURE / "modules" / "keyvault.bicep").read_text()
    assert "postgresqlScheme: postgresql+psycopg2" in (INFRA / "k8s" / "dagster-values.yaml").read_text()


def test_workspace_file_passes_dagsters_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.workspace.config_schema import ensure_workspace_config

    monkeypatch.setenv("DAGSTER_CODE_LOCATION_HOST", "code-location")
    monkeypatch.setenv("DAGSTER_CODE_LOCATION_PORT", "4000")
    path = INFRA / "dagster" / "workspace.yaml"
    config = ensure_workspace_config(yaml.safe_load(path.read_text()), str(path))
    [entry] = config["load_from"]
    assert entry["grpc_server"]["location_name"] == "recsys"


def test_code_server_module_is_the_projects_code_location() -> None:
    # the module `make ui` loads (workspace.yaml) is the one the image's code server serves
    assert "module_name: recsys_assets.defs.definitions" in (ROOT / "workspace.yaml").read_text()
    assert callable(importlib.import_module("recsys_assets.defs.definitions").defs)


# ---------------------------------------------------------------------------------------------
# Compose stack
# ---------------------------------------------------------------------------------------------


def test_compose_stack_has_every_service_wired() -> None:
    services = compose()["services"]
    assert {"azurite", "redis", "postgres", "mlflow", *COMPOSE_ROLES} <= set(services)
    for name, svc in services.items():
        if "build" in svc:
            assert svc["build"]["context"] == ".."
            assert (ROOT / svc["build"]["dockerfile"]).is_file(), name
        # every long-running service can be waited on
        if name != "pipeline":
            assert "healthcheck" in svc or compose_dockerfile(name), f"{name} has no health check"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            assert cond["condition"] in ("service_healthy", "service_started", "service_completed_successfully")
        for port in svc.get("ports") or []:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    env = compose_env("code-location")
    assert env["RECSYS_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["RECSYS_REDIS_URL"] == "redis://redis:6379/0"
    assert "BlobEndpoint=http://azurite:10000/devstoreaccount1" in env["RECSYS_AZURE_CONNECTION_STRING"]
    assert compose_env("console")["RECSYS_API_URL"] == "http://api:8000"
    # the MLflow server accepts the Host header the others send
    mlflow_env = compose_env("mlflow")
    assert "mlflow:5000" in mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert "CREATE DATABASE mlflow" in (INFRA / "compose" / "postgres-init.sql").read_text()
    # API keys come from the env files, not from compose.yaml
    assert "RECSYS_API_KEYS" not in (INFRA / "compose.yaml").read_text()
    assert "secrets.env" in (INFRA / ".gitignore").read_text()


def test_events_volume_is_shared_read_only_by_readers() -> None:
    services = compose()["services"]
    assert "events:/var/lib/recsys/events" in services["api"]["volumes"]
    for reader in ("console", "code-location", "pipeline"):
        assert "events:/var/lib/recsys/events:ro" in services[reader]["volumes"], reader
    for role_dockerfile in ("api", "code-location"):
        # the folder exists in the image, owned by the app user, so a new volume is writable
        assert "/var/lib/recsys/events" in (INFRA / "docker" / f"{role_dockerfile}.Dockerfile").read_text()


# ---------------------------------------------------------------------------------------------
# Azure templates
# ---------------------------------------------------------------------------------------------

BICEP_FILES = sorted(str(p.relative_to(AZURE)) for p in AZURE.rglob("*.bicep"))


@pytest.mark.parametrize("path", BICEP_FILES)
def test_bicep_files_parse(path: str) -> None:
    doc = bicep(path)
    assert doc.get("resources") or doc.get("modules"), path


def _resources() -> dict[str, list[tuple[str, dict]]]:
    """Resource type -> [(file, resource)] over every template."""
    out: dict[str, list[tuple[str, dict]]] = {}
    for path in BICEP_FILES:
        for res in (bicep(path).get("resources") or {}).values():
            out.setdefault(res["type"], []).append((path, res))
    return out


def test_templates_declare_the_platform() -> None:
    types = set(_resources())
    assert {
        "Microsoft.Storage/storageAccounts",
        "Microsoft.Storage/storageAccounts/blobServices/containers",
        "Microsoft.ContainerRegistry/registries",
        "Microsoft.App/managedEnvironments",
        "Microsoft.App/containerApps",
        "Microsoft.App/jobs",
        "Microsoft.Cache/redis",
        "Microsoft.DBforPostgreSQL/flexibleServers",
        "Microsoft.KeyVault/vaults",
        "Microsoft.KeyVault/vaults/secrets",
        "Microsoft.MachineLearningServices/workspaces",
        "Microsoft.MachineLearningServices/workspaces/computes",
        "Microsoft.Consumption/budgets",
        "Microsoft.ManagedIdentity/userAssignedIdentities",
        "Microsoft.Authorization/roleAssignments",
    } <= types
    # one API version per resource type across files
    for rtype, found in _resources().items():
        versions = {res["api_version"] for _, res in found if not res.get("existing")}
        assert len(versions) <= 1, (rtype, versions)


def test_modules_get_the_parameters_they_declare() -> None:
    """What a Bicep compile would reject first: an unknown or a missing module parameter."""
    for path in BICEP_FILES:
        for name, module in (bicep(path).get("modules") or {}).items():
            target = str((AZURE / Path(path).parent / module["detail"]["path"]).resolve().relative_to(AZURE))
            declared = bicep(target)["parameters"]
            passed = set(module["config"]["params"])
            assert passed <= set(declared), f"{path} {name}: unknown {sorted(passed - set(declared))}"
            required = {p for p, spec in declared.items() if spec.get("default") is None}
            assert required <= passed, f"{path} {name}: missing {sorted(required - passed)}"


@pytest.mark.parametrize("env", ["staging", "production"])
def test_parameter_files_fit_main(env: str) -> None:
    text = (AZURE / "params" / f"{env}.bicepparam").read_text()
    assert re.search(r"^using '\.\./main\.bicep'$", text, flags=re.M)
    declared = bicep("main.bicep")["parameters"]
    given = bicepparam(env)
    assert set(given) <= set(declared), sorted(set(given) - set(declared))
    required = {p for p, spec in declared.items() if spec.get("default") is None}
    assert required <= set(given), sorted(required - set(given))
    assert given["environmentName"] == f"'{env}'"
    # at least two API replicas everywhere (the template refuses fewer too)
    assert int(given["apiMinReplicas"]) >= 2
    min_decorator = {d["type"]: d.get("argument") for d in declared["apiMinReplicas"]["decorators"]}
    assert min_decorator["min_value"] >= 2
    # secrets never sit in the file: read from the deploying job's environment
    for secret in ("apiKeys", "postgresAdminPassword"):
        assert given[secret].startswith("readEnvironmentVariable('RECSYS_")
        assert any(d["type"] == "secure" for d in declared[secret]["decorators"])


def test_api_app_is_blue_green_and_autoscaled() -> None:
    doc = bicep("main.bicep")
    params = doc["modules"]["api"]["config"]["params"]
    assert params["revisionsMode"] == "Multiple"
    assert params["minReplicas"] == "apiMinReplicas" and params["maxReplicas"] == "apiMaxReplicas"
    [rule] = params["scaleRules"]
    assert "concurrentRequests" in rule["http"]["metadata"]
    assert params["external"] is True
    traffic = json.dumps(doc["variables"]["apiTraffic"])
    for word in ("apiStableRevision", "apiNewRevisionWeight", "candidate", "stable"):
        assert word in traffic
    # the module passes revision mode, suffix and traffic through to the app
    app = bicep("modules/containerapp.bicep")["resources"]["app"]["config"]["properties"]
    assert app["configuration"]["activeRevisionsMode"] == "revisionsMode"
    assert app["template"]["revisionSuffix"]
    assert app["template"]["scale"]["rules"] == "scaleRules"


def test_apps_read_their_secrets_from_key_vault() -> None:
    doc = bicep("main.bicep")
    vault = bicep("modules/keyvault.bicep")
    stored = {key.strip("'") for key in vault["variables"]["secretValues"]["value"]}
    assert {"api-keys", "redis-url", "dagster-pg-password", "mlflow-backend-uri"} <= stored
    for name, module in doc["modules"].items():
        params = module["config"]["params"]
        env = bicep_value(doc, params.get("env"))
        if env is None:
            continue
        refs = set(re.findall(r'"secretRef": "([a-z-]+)"', json.dumps(env)))
        for var in re.findall(r'"(\w+Env)"', json.dumps(env)):
            refs |= set(re.findall(r'"secretRef": "([a-z-]+)"', json.dumps(doc["variables"][var])))
        declared = set(re.findall(r'"arg_2": "([a-z-]+)"', json.dumps(params.get("keyVaultSecrets", []))))
        assert refs <= declared, f"{name}: env refers to {sorted(refs - declared)} without declaring them"
        assert declared <= stored, f"{name}: {sorted(declared - stored)} not in Key Vault"
    # and nothing secret is a plain value
    for var in BICEP_ENV_ROLES:
        for name, entry in bicep_env(var).items():
            if name in ("RECSYS_API_KEYS", "RECSYS_REDIS_URL", "DAGSTER_PG_PASSWORD"):
                assert "secretRef" in entry, (var, name)


def test_training_cluster_scales_to_zero_and_budget_alerts() -> None:
    ml = bicep("modules/ml.bicep")["resources"]["cluster"]["config"]["properties"]
    assert ml["computeType"] == "AmlCompute"
    assert ml["properties"]["scaleSettings"]["minNodeCount"] == 0
    budget = bicep("modules/budget.bicep")["resources"]["budget"]["config"]["properties"]
    assert budget["timeGrain"] == "Monthly"
    kinds = {n["thresholdType"] for n in budget["notifications"].values()}
    assert kinds == {"Actual", "Forecasted"}


def test_azure_images_are_the_ones_ci_pushes() -> None:
    images = bicep_value(bicep("main.bicep"), "images")
    pushed = set(re.findall(r"image: (recsys-[a-z]+)", (WORKFLOWS / "deploy.yml").read_text()))
    used = {re.search(r"/(recsys-[a-z]+):", v).group(1) for v in images.values()}
    assert used == pushed == {"recsys-api", "recsys-console", "recsys-pipeline", "recsys-dagster"}


# ---------------------------------------------------------------------------------------------
# Blue/green script, with a stand-in for the Azure CLI
# ---------------------------------------------------------------------------------------------

FAKE_AZ = r"""#!/usr/bin/env bash
echo "$*" >>"$AZ_LOG"
case "$*" in
  "containerapp list"*) echo "recsys-stg-api" ;;
  "containerapp ingress traffic show"*) echo "recsys-stg-api--r1-aaaaaaa" ;;
  "containerapp revision list"*) printf 'recsys-stg-api--r0-old\n' ;;
  "deployment group create"*)
    cat <<JSON
{"apiName": {"value": "recsys-stg-api"}, "apiFqdn": {"value": "recsys-stg-api.example.io"},
 "apiNewRevision": {"value": "recsys-stg-api--$RECSYS_API_REVISION_SUFFIX"},
 "environmentDomain": {"value": "example.io"}}
JSON
    echo "weight=$RECSYS_API_NEW_REVISION_WEIGHT stable=$RECSYS_API_STABLE_REVISION" >>"$AZ_LOG" ;;
esac
"""


def test_deploy_script_shifts_traffic_and_rolls_back(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "az"
    fake.parent.mkdir()
    fake.write_text(FAKE_AZ)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log, github_env, github_output = tmp_path / "az.log", tmp_path / "env", tmp_path / "out"
    env = {
        "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
        "AZ_LOG": str(log),
        "RESOURCE_GROUP": "rg",
        "PARAMS": "infra/azure/params/staging.bicepparam",
        "IMAGE_TAG": "0123456789abcdef",
        "REGISTRY_NAME": "reg",
        "REGISTRY_RESOURCE_GROUP": "shared",
        "GITHUB_RUN_NUMBER": "7",
        "GITHUB_ENV": str(github_env),
        "GITHUB_OUTPUT": str(github_output),
    }

    def run(*args: str) -> None:
        state = env_file(github_env) if github_env.exists() else {}
        result = subprocess.run(
            ["bash", str(AZURE / "deploy.sh"), *args], env={**env, **state}, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr

    run("deploy", "0")
    calls = log.read_text()
    # the older revision is deactivated, the serving one kept; the new one deployed dark
    assert "revision deactivate -n recsys-stg-api -g rg --revision recsys-stg-api--r0-old" in calls
    assert "weight=0 stable=recsys-stg-api--r1-aaaaaaa" in calls
    assert "-f infra/azure/main.bicep -p infra/azure/params/staging.bicepparam" in calls
    outputs = env_file(github_output)
    assert outputs["candidate_host"] == "recsys-stg-api---candidate.example.io"
    assert env_file(github_env)["NEW_REVISION"] == "recsys-stg-api--r7-0123456"
    run("shift", "10")
    assert "--revision-weight recsys-stg-api--r7-0123456=10 recsys-stg-api--r1-aaaaaaa=90" in log.read_text()
    run("rollback")
    calls = log.read_text()
    assert "--revision-weight recsys-stg-api--r1-aaaaaaa=100 recsys-stg-api--r7-0123456=0" in calls
    assert calls.rstrip().endswith("--revision recsys-stg-api--r7-0123456 -o none")


def test_smoke_script_reports_an_unreachable_api() -> None:
    with pytest.raises(smoke.SmokeFailure, match="no answer"):
        smoke.smoke("http://127.0.0.1:9", "1", ready_timeout=0, log=lambda _: None)
