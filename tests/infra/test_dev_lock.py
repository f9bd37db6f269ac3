"""The development lock (infra/requirements/dev.txt) that `make install` and CI install: every requirement
of `.[all,dev]` pinned within its bounds, equal to the environment the tests run in, consistent with the
images' locks, and installed by the Makefile without resolving anything anew (CPU torch named exactly)."""

from __future__ import annotations

import re
import subprocess

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT
from tests.infra.test_infra import roles

MAKEFILE = ROOT / "Makefile"


def test_dev_lock_pins_every_requirement_within_its_bounds() -> None:
    pins = roles.read_pins(roles.DEV_LOCK)
    for req in roles.dev_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in {roles.DEV_LOCK.name}: run `make lock`"
        version = pins[name]
        assert req.specifier.contains(version, prereleases=True) or req.specifier.contains(
            version.split("+")[0], prereleases=True
        ), f"{name}=={version} is outside {req}: run `make lock`"
    # the CPU build, by its local version label: the plain version would resolve to the CUDA build on PyPI
    assert pins["torch"].endswith("+cpu"), pins["torch"]


def test_dev_lock_is_the_closure_in_this_environment() -> None:
    pins = roles.read_pins(roles.DEV_LOCK)
    current = {canonicalize_name(n): v for n, v in (line.split("==") for line in roles.dev_lock_lines())}
    missing, extra = sorted(set(current) - set(pins)), sorted(set(pins) - set(current))
    drift = {n: (pins[n], current[n]) for n in pins if n in current and pins[n] != current[n]}
    assert not (missing or extra or drift), (
        f"environment differs from {roles.DEV_LOCK.name}: missing {missing}, extra {extra}, versions (lock, "
        f"installed) {drift}. Regenerate the locks with `make lock`, or reinstall with `make install`"
    )


def test_every_image_lock_agrees_with_the_dev_lock() -> None:
    dev = roles.read_pins(roles.DEV_LOCK)
    for role in roles.ROLES.values():
        pins = roles.read_lock(role)
        assert pins.keys() <= dev.keys(), f"{role.name}: {sorted(pins.keys() - dev.keys())} not in dev.txt"
        differ = {n: (v, dev[n]) for n, v in pins.items() if dev[n] != v}
        assert not differ, f"{role.name}.txt and dev.txt pin other versions: {differ}; run `make lock`"


def _make_dry_run(target: str) -> list[str]:
    out = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "pip install" in line or "roles.py" in line]


def test_make_install_installs_the_lock_only_with_the_cpu_torch_of_the_lock() -> None:
    lines = _make_dry_run("install")
    torch = roles.read_pins(roles.DEV_LOCK)["torch"]
    # torch first, by its exact build name, with the PyTorch CPU index
    assert f"'torch=={torch}'" in lines[-3] and roles.TORCH_CPU_INDEX in lines[-3], lines
    assert lines[-2].endswith("pip install -q --no-deps -r infra/requirements/dev.txt"), lines
    assert lines[-1].endswith("pip install -q --no-deps -e ."), lines
    # nothing resolves `.[all,dev]` freely in install
    assert not [line for line in lines if "[all,dev]" in line], lines


def test_make_lock_resolves_pyproject_then_writes_every_lock() -> None:
    lines = _make_dry_run("lock")
    assert re.search(r"pip install .*-e '\.\[all,dev\]'", lines[-2]), lines
    assert lines[-1].endswith("python infra/roles.py lock"), lines


def test_the_closure_reads_site_packages_not_vendored_copies_on_sys_path(tmp_path, monkeypatch) -> None:
    # `import ray` puts ray/thirdparty_files (its own colorama and psutil) at the front of sys.path
    vendored = tmp_path / "thirdparty_files" / "colorama-9.9.9.dist-info"
    vendored.mkdir(parents=True)
    (vendored / "METADATA").write_text("Metadata-Version: 2.1\nName: colorama\nVersion: 9.9.9\n")
    monkeypatch.syspath_prepend(str(vendored.parent))
    pins = roles.read_pins(roles.DEV_LOCK)
    assert roles.installed("colorama").version == pins["colorama"]
    found = roles.closure([Requirement(f"colorama=={pins['colorama']}")])
    assert found["colorama"].version == pins["colorama"]
