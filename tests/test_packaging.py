"""Packaging: one version number, py.typed markers, SPDX license and license files, and an sdist
that carries what its own tests need (tests/conftest.py, the data, the licenses).

The sdist and wheel are really built (about a second each), from a copy of the source tree in
tmp_path so that nothing is written beside the sources. Tests that read pyproject.toml skip when
the tests run without the source tree next to them.
"""
import importlib.resources
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import fastnn

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"

#: what the sdist's own test run needs, beside the package modules
SDIST_NEEDS = ["pyproject.toml", "README.md", "LICENSE", "MANIFEST.in",
               "tests/conftest.py", "tests/test_packaging.py",
               "fastnn/py.typed", "backends/py.typed",
               "fastnn/datasets/mnist_sample.npz", "fastnn/datasets/MNIST-LICENSE.txt",
               "tools/make_mnist_sample.py",  # tests/test_datasets.py rebuilds the sample with it
               "bench/conftest.py", "bench/README.md"]
JUNK = ("__pycache__/", ".pyc", ".nbi", ".nbc", ".benchmarks/", ".pytest_cache/")


@pytest.fixture(scope="module")
def pyproject():
    if not PYPROJECT.is_file():
        pytest.skip(f"no pyproject.toml at {REPO}: the tests run without their source tree")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11+) or tomli")
    with open(PYPROJECT, "rb") as f:
        return tomllib.load(f)


def _setuptools_for_pep639():
    """Skip unless the installed setuptools can build this project (>= 77, as build-system asks)."""
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        pytest.skip("setuptools is not installed: cannot build the sdist here")
    if int(version.split(".")[0]) < 77:
        pytest.skip(f"setuptools {version} is older than 77, which this pyproject.toml needs")


# ---- one version ------------------------------------------------------------------
def test_version_is_the_installed_distributions():
    assert fastnn.__version__ == metadata.version("fastnn")


def test_version_is_defined_once(pyproject):
    project = pyproject["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fastnn.__version__"}
    init = (REPO / "fastnn" / "__init__.py").read_text()
    assert init.count("__version__ =") == 1 and f'__version__ = "{fastnn.__version__}"' in init


# ---- what the wheel installs ------------------------------------------------------
def test_every_package_folder_is_listed(pyproject):
    """The packages list is explicit (fastnn.backends lives in backends/): a new subpackage left out
    of it works in an editable install and is missing from every wheel."""
    config = pyproject["tool"]["setuptools"]
    roots = {"fastnn": "fastnn", **config["package-dir"]}
    found = {".".join((name, *init.parent.relative_to(REPO / folder).parts))
             for name, folder in roots.items() for init in (REPO / folder).rglob("__init__.py")}
    listed = set(config["packages"])
    assert not found - listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert not listed - found, f"listed but not on disk: {sorted(listed - found)}"


# ---- typing ------------------------------------------------------------------------
@pytest.mark.parametrize("package", ["fastnn", "fastnn.backends"])
def test_py_typed_is_installed(package):
    assert importlib.resources.files(package).joinpath("py.typed").is_file()


# ---- licenses ----------------------------------------------------------------------
def test_license_is_an_spdx_expression_with_its_files(pyproject):
    project = pyproject["project"]
    assert isinstance(project["license"], str)  # PEP 639; the {text = ...} table is deprecated
    assert project["license"] == "MIT AND CC-BY-SA-3.0"
    files = project["license-files"]
    assert "LICENSE" in files and "fastnn/datasets/MNIST-LICENSE.txt" in files
    for name in files:
        assert (REPO / name).is_file(), name
    assert "MIT License" in (REPO / "LICENSE").read_text()
    assert pyproject["build-system"]["requires"] == ["setuptools>=77"]


def test_installed_metadata_carries_the_license(pyproject):
    meta = metadata.metadata("fastnn")
    assert meta["License-Expression"] == pyproject["project"]["license"]
    assert sorted(meta.get_all("License-File") or []) == sorted(pyproject["project"]["license-files"])


# ---- sdist and wheel ---------------------------------------------------------------
def _build(hook, source, out):
    code = f"import sys, setuptools.build_meta as b; print(b.{hook}(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=source, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory, pyproject):
    _setuptools_for_pep639()
    tmp = tmp_path_factory.mktemp("sdist")
    source = tmp / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", ".tox", ".nox", "build", "dist", "*.egg-info", ".mypy_cache", ".ruff_cache"))
    return _build("build_sdist", source, tmp / "dist")


def test_sdist_carries_what_its_tests_need(sdist):
    assert sdist.name == f"fastnn-{fastnn.__version__}.tar.gz"
    root = f"fastnn-{fastnn.__version__}/"
    with tarfile.open(sdist) as tar:
        members = {m.name[len(root):] for m in tar.getmembers() if m.isfile()}
        pkg_info = tar.extractfile(root + "PKG-INFO").read().decode()
    missing = [name for name in SDIST_NEEDS if name not in members]
    assert not missing, f"missing from the sdist: {missing}"
    on_disk = {p.relative_to(REPO).as_posix() for p in (REPO / "tests").glob("*.py")}
    assert on_disk <= members, f"test files not in the sdist: {sorted(on_disk - members)}"
    junk = sorted(m for m in members if any(j in m for j in JUNK))
    assert not junk, f"build leftovers in the sdist: {junk}"
    assert f"Version: {fastnn.__version__}\n" in pkg_info
    assert "License-Expression: MIT AND CC-BY-SA-3.0\n" in pkg_info
    assert "License-File: fastnn/datasets/MNIST-LICENSE.txt\n" in pkg_info


def test_wheel_from_the_sdist_has_py_typed_data_and_licenses(sdist, tmp_path):
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(tmp_path)
    wheel = _build("build_wheel", tmp_path / f"fastnn-{fastnn.__version__}", tmp_path / "wheel")
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
    info = f"fastnn-{fastnn.__version__}.dist-info"
    for name in ["fastnn/py.typed", "fastnn/backends/py.typed", "fastnn/datasets/mnist_sample.npz",
                 "fastnn/datasets/MNIST-LICENSE.txt", f"{info}/licenses/LICENSE",
                 f"{info}/licenses/fastnn/datasets/MNIST-LICENSE.txt"]:
        assert name in names, name
    assert not [n for n in names if n.startswith(("tests/", "bench/", "tools/", "backends/"))]
