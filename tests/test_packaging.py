"""The pack as a distributable thing: registry metadata, dependencies, library independence from ComfyUI, CLI."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "nodes",
                 "execution", "node_helpers", "latent_preview"}


def requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def test_requirements_leave_torch_to_comfyui_and_pin_nothing():
    for req in requirements(REPO / "requirements.txt"):
        assert req.name.lower() not in {"torch", "torchvision", "torchaudio"}, req
        assert not any(spec.operator in ("==", "===", "<", "<=", "~=") for spec in req.specifier), (
            f"{req} caps a version: it would fight ComfyUI's or another pack's pins")


def test_requirements_agree_with_the_installed_host_requirements():
    """Every dependency is installed (next to the host's own requirements) at a version our bounds accept."""
    for req in requirements(REPO / "requirements.txt"):
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            pytest.fail(f"{req.name} is not installed; run scripts/setup.sh")
        assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} does not satisfy {req}"


def test_pyproject_declares_the_same_dependencies_as_requirements_txt():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == sorted(str(r) for r in requirements(REPO / "requirements.txt"))


def test_pyproject_has_what_the_comfy_registry_needs():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = pyproject["project"], pyproject["tool"]["comfy"]
    assert project["name"] and not project["name"][0].isdigit() and len(project["name"]) < 100
    assert project["version"].count(".") == 2 and all(p.isdigit() for p in project["version"].split("."))
    assert project["description"] and project["license"] and project["urls"]["Repository"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert comfy["requires-comfyui"].startswith(">=")


def library_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((REPO / "llmga").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_library_never_imports_comfyui(path):
    assert not library_imports(path) & COMFY_MODULES


def test_library_imports_without_comfyui_on_the_path():
    code = ("import sys, llmga, llmga.prompt, llmga.sd.convert, llmga.__main__; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(COMFY_MODULES)}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_cli_runs_as_a_module_from_the_repository_root():
    reply = "Sure! <gen_image> a red fox in deep snow </gen_image>"
    result = subprocess.run([sys.executable, "-m", "llmga", "extract-prompt", "--json", reply],
                            cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(result.stdout)["prompt"] == "a red fox in deep snow"
    usage = subprocess.run([sys.executable, "-m", "llmga", "--help"], cwd=REPO, capture_output=True, text=True)
    assert usage.returncode == 0 and "extract-prompt" in usage.stdout


@pytest.mark.host
def test_comfyui_reads_the_pack_configuration(comfy_path):
    """ComfyUI's own pyproject parser (what the registry tooling also reads) accepts the file."""
    code = (
        "import json, sys; from comfy_config.config_parser import extract_node_configuration; "
        "c = extract_node_configuration(sys.argv[1]); "
        "print(json.dumps({'name': c.project.name, 'version': c.project.version, "
        "'publisher': c.tool_comfy.publisher_id, 'display': c.tool_comfy.display_name, "
        "'requires': c.project.supported_comfyui_version, 'os': c.project.supported_os, "
        "'accelerators': c.project.supported_accelerators, 'repository': c.project.urls.repository, "
        "'license': c.project.license.file}))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(REPO)], cwd=comfy_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["name"] == "comfyui-llmga" and config["version"] == "0.1.0"
    assert config["publisher"] and config["display"] and config["repository"]
    assert config["requires"] == ">=0.3.75" and config["license"] == "LICENSE"
    assert config["os"] and config["accelerators"]  # classifiers ComfyUI recognises (else it drops them all)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved against the repository root (the pack's package)."""
    package = list(path.relative_to(REPO).with_suffix("").parts)[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.update(f"{module}.{alias.name}".lstrip(".") for alias in node.names)
    return names


ADAPTER_AND_APPLICATION_FILES = sorted(
    path for folder in ("llmga", "nodes", "training", "bench", "scripts") for path in (REPO / folder).rglob("*.py")
    if "cli" not in path.relative_to(REPO).parts[:2] and path != REPO / "llmga" / "__main__.py")


@pytest.mark.parametrize("path", ADAPTER_AND_APPLICATION_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_outside_the_command_line_imports_from_it(path):
    """llmga/cli/ is an adapter beside nodes/: the library, the nodes and the applications never import it (only
    `python -m llmga`'s entry point does)."""
    assert not [name for name in imported_modules(path) if name == "llmga.cli" or name.startswith("llmga.cli.")]


def test_the_import_resolver_sees_relative_and_absolute_imports_of_the_cli():
    assert "llmga.cli.common.InputError" in imported_modules(REPO / "llmga" / "cli" / "sd.py")
    assert "llmga.cli.main" in imported_modules(REPO / "llmga" / "__main__.py")


@pytest.mark.parametrize(("version", "requirements", "needs"), [
    ('__version__ = "0.3.75"\n', "torch\ntorchaudio\n", False),  # the pinned host guards its torchaudio imports
    ('__version__ = "0.33.0"\n', "torch\ntorchvision\ntorchaudio\n", True),  # newer hosts import it at startup
    ('__version__ = "0.33.0"\n', "torch\ntorchvision\n", False),
    (None, "torchaudio>=2.0  # audio nodes\n", True),  # a host that does not say its version: assume a new one
])
def test_setup_installs_torchaudio_only_for_hosts_that_import_it(tmp_path, version, requirements, needs):
    from comfyui_host import needs_torchaudio

    (tmp_path / "requirements.txt").write_text(requirements)
    if version is not None:
        (tmp_path / "comfyui_version.py").write_text(version)
    assert needs_torchaudio(tmp_path) is needs
