"""The deployable roles, what each one imports, and their lock files.

    python infra/roles.py lock      # write infra/requirements/<role>.txt and dev.txt from the project's environment
    python infra/roles.py imports   # the third-party modules each role's code imports, by static analysis

A role is one container image. Its lock file pins every distribution in the closure of the role's
requirements (the project's core plus one extra, read from pyproject.toml) to the version installed in
the environment running this script (`.venv`, where the test suite passes), with the markers evaluated
for that interpreter: CPython 3.11 on Linux x86-64, the platform of the images. The images install the
lock, then the project with `--no-deps`, so they run the versions the tests ran.

`dev.txt` is the same for the whole project with its test tools (`.[all,dev]`): what `make install` and CI
install, so a fresh clone runs the versions the locks were written from (and the lock tests compare equal).
"""

from __future__ import annotations

import argparse
import ast
import functools
import sys
import sysconfig
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "infra" / "requirements"
PROJECT = "recsys"
PROJECT_PACKAGES = ("recsys_assets", "serving", "console")
# the CPU build of torch comes from this index; the pipeline images install it before their lock
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# the training stack: none of it may reach the API or console images
TRAINING_STACK = ("torch", "recbole", "ray", "mlflow", "evidently", "optuna", "scikit-learn", "dagster-webserver")


@dataclass(frozen=True)
class Role:
    """One image: what it installs, where its code starts, what it must not carry."""

    name: str
    dockerfile: str
    # the project's extra the image installs; None: the project is not installed, only `requirements`
    extra: str | None
    # the project's packages whose lazy (function-level) imports count as the role's own
    own_packages: tuple[str, ...]
    entry_modules: tuple[str, ...]
    excluded: tuple[str, ...] = ()
    # requirements taken by name from the `pipeline` extra (roles that do not install the project)
    requirements: tuple[str, ...] = ()


def _console_pages() -> tuple[str, ...]:
    return tuple(f"console.app_pages.{p.stem}" for p in sorted((ROOT / "console" / "app_pages").glob("[!_]*.py")))


ROLES: dict[str, Role] = {
    r.name: r
    for r in (
        Role(
            name="api",
            dockerfile="infra/docker/api.Dockerfile",
            extra="api",
            own_packages=("serving",),
            entry_modules=("serving.__main__", "serving.app"),
            # dagster is the pipeline's scheduler; the API reads only the artifact the pipeline publishes
            excluded=(*TRAINING_STACK, "dagster"),
        ),
        Role(
            name="console",
            dockerfile="infra/docker/console.Dockerfile",
            extra="console",
            own_packages=("console",),
            entry_modules=("console.app", *_console_pages()),
            # it reads the tables the pipeline writes of its runs and registry, not Dagster or MLflow
            excluded=(*TRAINING_STACK, "dagster", "mlflow-skinny"),
        ),
        Role(
            name="pipeline",
            dockerfile="infra/docker/code-location.Dockerfile",
            extra="pipeline",
            own_packages=("recsys_assets",),
            entry_modules=("recsys_assets.defs.definitions", "recsys_assets.tools.cli", "recsys_assets.__main__"),
        ),
        Role(
            name="dagster",
            dockerfile="infra/docker/dagster.Dockerfile",
            extra=None,
            own_packages=(),
            entry_modules=(),
            # webserver and daemon talk to the code location over gRPC and never load its code
            excluded=("torch", "recbole", "ray", "mlflow", "evidently", "optuna", "scikit-learn", PROJECT),
            # dagster-azure: the Blob compute-log manager of infra/dagster/dagster.azure.yaml
            requirements=("dagster", "dagster-webserver", "dagster-postgres", "dagster-azure"),
        ),
    )
}


# ---------------------------------------------------------------------------------------------
# Dependency closure and lock files
# ---------------------------------------------------------------------------------------------


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def role_requirements(role: Role) -> list[Requirement]:
    """The role's direct requirements as pyproject.toml states them (core + extra, or picked by name)."""
    project = pyproject()
    extras = project["optional-dependencies"]
    if role.extra is None:
        pipeline = {canonicalize_name(Requirement(r).name): Requirement(r) for r in extras["pipeline"]}
        return [pipeline[canonicalize_name(n)] for n in role.requirements]
    return [Requirement(r) for r in (*project["dependencies"], *extras[role.extra])]


class LockError(Exception):
    """The environment does not satisfy the requirements (missing distribution or version out of bounds)."""


def installed(name: str) -> metadata.Distribution | None:
    """The distribution installed in this interpreter's site-packages. Not `metadata.distribution`, which
    searches all of sys.path: `import ray` puts its vendored copies (colorama, psutil) at the front of it."""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return next(iter(metadata.distributions(name=name, path=paths)), None)


def closure(requirements: Iterable[Requirement]) -> dict[str, metadata.Distribution]:
    """Every installed distribution the requirements need, by canonical name, markers evaluated for this
    interpreter; raises LockError when one is missing or out of its bounds."""
    env = default_environment()
    found: dict[str, metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    queue: list[tuple[Requirement, str]] = [(r, "") for r in requirements]
    while queue:
        req, extra = queue.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        dist = installed(name)
        if dist is None:
            raise LockError(f"{req} is required but not installed")
        # a local version label (torch's +cpu) satisfies its public version's pin
        if not req.specifier.contains(dist.version, prereleases=True) and not req.specifier.contains(
            dist.version.split("+")[0], prereleases=True
        ):
            raise LockError(f"{req} is required but {name} {dist.version} is installed")
        found[name] = dist
        for wanted in ("", *sorted(req.extras)):
            if (name, wanted) in done:
                continue
            done.add((name, wanted))
            for dep in dist.requires or []:
                queue.append((Requirement(dep), wanted))
    return found


def lock_lines(role: Role) -> list[str]:
    """`name==version` for every distribution of the role's closure but the project itself, sorted."""
    dists = closure(role_requirements(role))
    dists.pop(PROJECT, None)
    return [f"{name}=={dists[name].version}" for name in sorted(dists)]


def lock_text(role: Role) -> str:
    py = sys.version_info
    what = f"{PROJECT}[{role.extra}]" if role.extra else f"{', '.join(role.requirements)} (pipeline extra's bounds)"
    header = [
        f"# {role.name}: {role.dockerfile}. Generated by `python infra/roles.py lock`; do not edit.",
        f"# The closure of {what} as installed in the project's environment "
        f"(CPython {py.major}.{py.minor}, {sys.platform}).",
    ]
    if any(line.startswith("torch==") for line in lock_lines(role)):
        header.append(f"# torch is the CPU build, from {TORCH_CPU_INDEX} (installed first by the Dockerfile).")
    return "\n".join([*header, *lock_lines(role)]) + "\n"


DEV_LOCK = REQUIREMENTS / "dev.txt"
# the extras of `.[all,dev]`, `all` spelled out (it names the project itself, whose installed metadata
# may be older than pyproject.toml)
DEV_EXTRAS = ("api", "console", "pipeline", "dev")


def dev_requirements() -> list[Requirement]:
    """The project's core and every extra `make install` installs, as pyproject.toml states them."""
    project = pyproject()
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in (*project["dependencies"], *(r for e in DEV_EXTRAS for r in extras[e]))]


def dev_lock_lines() -> list[str]:
    dists = closure(dev_requirements())
    dists.pop(PROJECT, None)
    return [f"{name}=={dists[name].version}" for name in sorted(dists)]


def dev_lock_text() -> str:
    py = sys.version_info
    header = [
        "# dev: `make install` and CI (.ci/run). Generated by `make lock` (`python infra/roles.py lock`); do not edit.",
        f"# The closure of {PROJECT}[all,dev] as installed in the project's environment "
        f"(CPython {py.major}.{py.minor}, {sys.platform}).",
        f"# torch is the CPU build, from {TORCH_CPU_INDEX} (installed first by `make install`).",
    ]
    return "\n".join([*header, *dev_lock_lines()]) + "\n"


def read_pins(path: Path) -> dict[str, str]:
    """A lock file as {canonical name: version}."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-")):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def lock_path(role: Role) -> Path:
    return REQUIREMENTS / f"{role.name}.txt"


def read_lock(role: Role) -> dict[str, str]:
    """The role's lock file as {canonical name: version}."""
    return read_pins(lock_path(role))


# ---------------------------------------------------------------------------------------------
# Static import analysis
# ---------------------------------------------------------------------------------------------


def module_file(name: str) -> Path | None:
    """The source file of a project module (package `__init__` or module), or None if it is not one."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    path = ROOT.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


@dataclass(frozen=True)
class Import:
    module: str
    # inside a function: runs only when that function is called
    lazy: bool


def imports_of(name: str) -> list[Import]:
    """Every module a project module imports, with relative imports resolved and `TYPE_CHECKING` blocks
    skipped; `from pkg import sub` yields the submodule when `sub` is one."""
    path = module_file(name)
    assert path is not None, name
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend(Import(alias.name, inner) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                module = ".".join([*base, *([child.module] if child.module else [])])
                found.append(Import(module, inner))
                found.extend(
                    Import(f"{module}.{alias.name}", inner)
                    for alias in child.names
                    if module_file(f"{module}.{alias.name}")
                )
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


@dataclass
class RoleImports:
    """What a role's code imports: its project modules and the third-party top-level modules it needs."""

    modules: set[str]
    # top-level module -> a project module importing it
    third_party: dict[str, str]
    # imported inside functions of modules the role does not own: needed only if those functions run
    optional: dict[str, str]


def role_imports(role: Role) -> RoleImports:
    """Follow imports from the role's entry modules: module-level imports everywhere, function-level
    imports only in the role's own packages (the code it runs; elsewhere they belong to functions the
    role may never call)."""
    stdlib = sys.stdlib_module_names | {"__future__"}
    modules: set[str] = set()
    third: dict[str, str] = {}
    optional: dict[str, str] = {}
    stack = list(role.entry_modules)
    while stack:
        name = stack.pop()
        parts = name.split(".")
        # importing a.b.c imports a and a.b first
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub in modules or module_file(sub) is None:
                continue
            modules.add(sub)
            owned = sub.split(".")[0] in role.own_packages
            for imp in imports_of(sub):
                top = imp.module.split(".")[0]
                if top in PROJECT_PACKAGES:
                    if owned or not imp.lazy:
                        stack.append(imp.module)
                elif top not in stdlib:
                    if owned or not imp.lazy:
                        third.setdefault(top, sub)
                    else:
                        optional.setdefault(top, sub)
    return RoleImports(modules, third, {k: v for k, v in optional.items() if k not in third})


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    """Canonical names of the installed distributions providing a top-level module."""
    return {canonicalize_name(d) for d in _packages_distributions().get(module, [])}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["lock", "imports"])
    args = parser.parse_args(argv)
    if args.command == "lock":
        REQUIREMENTS.mkdir(parents=True, exist_ok=True)
        for role in ROLES.values():
            lock_path(role).write_text(lock_text(role))
            print(f"{lock_path(role).relative_to(ROOT)}: {len(lock_lines(role))} distributions")
        DEV_LOCK.write_text(dev_lock_text())
        print(f"{DEV_LOCK.relative_to(ROOT)}: {len(dev_lock_lines())} distributions")
        return 0
    for role in ROLES.values():
        if not role.entry_modules:
            print(f"{role.name}: no project code")
            continue
        found = role_imports(role)
        print(f"{role.name}: {len(found.modules)} project modules")
        print("  imports:", ", ".join(sorted(found.third_party)))
        if found.optional:
            print("  only inside functions it may not call:", ", ".join(sorted(found.optional)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
