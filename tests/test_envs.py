"""The per-rule-group conda environments (envs/*.yaml) stay usable without conda installed.

Checked here, statically:
- every pin in envs/ (pip sections and post-deploy scripts) equals the pin of the tested
  virtual environment: pyproject.toml for direct dependencies, constraints.txt otherwise;
- every rule that calls `covidmtl <command>` names an environment with `conda:`, and that
  environment holds every third-party package the command imports (the import closure of
  the command's module, read from the source with `ast`).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO

ENVS = REPO / "envs"
SRC = REPO / "src"
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
ENV_FILES = sorted(ENVS.glob("*.yaml"))
PIN = re.compile(r"^\s*-?\s*([A-Za-z0-9_.\-\[\]]+)\s*==\s*([A-Za-z0-9_.+\-]+)\s*$")

# Packages that the code needs without importing them by name.
IMPLICIT = {
    "covidmtl.tables": {"tabulate"},  # DataFrame.to_markdown
}
# Function-level imports that run only when the module itself is the command (other
# commands import the module for helpers): PyRadiomics is needed by feature extraction only.
LAZY_ENTRY_ONLY = {
    "covidmtl.features.radiomics": {"radiomics"},
}


def project_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = {}
    for text in requirements:
        req = Requirement(text)
        (spec,) = req.specifier
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def env_pip_packages(env_file: Path) -> dict[str, str]:
    """name -> pinned version of the pip section and of the env's post-deploy script."""
    env = yaml.safe_load(env_file.read_text(encoding="utf-8"))
    lines = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict) and "pip" in dep:
            lines += [str(item) for item in dep["pip"]]
    post_deploy = env_file.with_name(env_file.stem + ".post-deploy.sh")
    if post_deploy.exists():
        for line in post_deploy.read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("#"):
                continue
            lines += [word for word in line.split() if "==" in word]
    pins = {}
    for line in lines:
        match = PIN.match(line)
        assert match, f"{env_file.name}: '{line}' is not pinned as name==version"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


@pytest.mark.parametrize("env_file", ENV_FILES, ids=[f.name for f in ENV_FILES])
def test_env_pins_match_the_tested_environment(env_file):
    project, lock = project_pins(), lock_pins()
    env = yaml.safe_load(env_file.read_text(encoding="utf-8"))
    assert env["channels"][0] == "conda-forge" and "nodefaults" in env["channels"]
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"], f"{env_file.name}: python must be pinned to 3.11 like pyproject.toml"
    pins = env_pip_packages(env_file)
    assert pins, f"{env_file.name} pins nothing"
    for name, version in pins.items():
        expected = project.get(name, lock.get(name))
        assert expected is not None, f"{env_file.name}: {name} is in neither pyproject.toml nor constraints.txt"
        assert version == expected, f"{env_file.name}: {name}=={version}, but the tested pin is {expected}"


def test_the_four_rule_groups_have_an_environment():
    assert {f.stem for f in ENV_FILES} >= {"imaging", "features", "deep", "stats"}
    for env_file in ENV_FILES:
        post_deploy = env_file.with_name(env_file.stem + ".post-deploy.sh")
        assert post_deploy.exists(), f"{env_file.name} needs {post_deploy.name} to install the covidmtl package"
        assert "pip install --no-deps" in post_deploy.read_text(encoding="utf-8")


# --- which packages does a `covidmtl <command>` import? ------------------------------------


def _module_file(name: str) -> Path | None:
    path = SRC.joinpath(*name.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    return None


def _imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            parts = module.split(".")
            parts = parts[: len(parts) - node.level + (1 if is_package else 0)]
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        return [base] + [f"{base}.{alias.name}" for alias in node.names]
    # dynamic imports by name, e.g. dataset adapters: "covidmtl.datasets.synthetic"
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"covidmtl(\.\w+)+(:\w+)?", node.value):
        return [node.value.split(":")[0]]
    return []


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(covidmtl modules, third-party top-level names) that a module imports anywhere."""
    path = _module_file(module)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    internal, external = set(), set()
    for node in ast.walk(tree):
        for name in _imported_names(node, module, is_package):
            top = name.split(".")[0]
            if top == "covidmtl":
                if _module_file(name):
                    internal.add(name)
            elif top and top != "__future__" and top not in sys.stdlib_module_names:
                external.add(top)
    return internal, external


def command_requirements(entry_module: str) -> set[str]:
    """Distributions a command may need: the third-party imports of every covidmtl module it
    reaches, function-level ones included (conservative), except LAZY_ENTRY_ONLY ones."""
    seen: set[str] = set()
    externals: set[str] = set()
    todo = [entry_module]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if _module_file(".".join(parts[:i]))]
        internal, external = _imports(module)
        if module != entry_module:
            external -= LAZY_ENTRY_ONLY.get(module, set())
        externals |= external
        todo += sorted(internal)
    dists = importlib.metadata.packages_distributions()
    required = {canonicalize_name(d) for name in externals for d in dists.get(name, [name])}
    for module in seen:
        required |= IMPLICIT.get(module, set())
    return required


def rules_with_commands() -> list[tuple[str, str, str | None, str]]:
    """(rule file, rule name, conda env path or None, covidmtl command) for each rule calling covidmtl."""
    found = []
    for rule_file in RULE_FILES:
        text = rule_file.read_text(encoding="utf-8")
        blocks = re.split(r"^(?=(?:rule|checkpoint) \w+:)", text, flags=re.M)
        for block in blocks:
            header = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if not header:
                continue
            conda = re.search(r"^\s+conda:\s*\n\s+[\"']([^\"']+)[\"']", block, flags=re.M)
            for command in sorted(set(re.findall(r"[\"']covidmtl ([a-z0-9][a-z0-9-]*)", block))):
                found.append((rule_file.name, header.group(1), conda.group(1) if conda else None, command))
    return found


def test_every_rule_names_an_environment_that_holds_its_imports():
    sys.path.insert(0, str(SRC))
    try:
        from covidmtl.cli import COMMANDS
    finally:
        sys.path.remove(str(SRC))
    found = rules_with_commands()
    assert found, "no rule calls covidmtl?"
    problems = []
    for rule_file, rule, conda, command in found:
        if conda is None:
            problems.append(f"{rule_file}: rule {rule} has no conda: directive")
            continue
        env_path = (REPO / "workflow" / "rules" / conda).resolve() if rule_file != "Snakefile" else (REPO / conda).resolve()
        if not env_path.is_file():
            problems.append(f"{rule_file}: rule {rule} names {conda}, which does not exist")
            continue
        if command not in COMMANDS:
            problems.append(f"{rule_file}: rule {rule} calls unknown command 'covidmtl {command}'")
            continue
        have = set(env_pip_packages(env_path))
        missing = command_requirements(COMMANDS[command].split(":")[0]) - have
        if missing:
            problems.append(f"{rule_file}: rule {rule} (covidmtl {command}) imports {sorted(missing)}, "
                            f"which {env_path.name} lacks")
    assert not problems, "\n".join(problems)


def test_import_scanner_follows_lazy_imports():
    """Guard for the scanner itself: function-level imports count, LAZY_ENTRY_ONLY ones only
    in the command's own module."""
    assert {"pandas", "tabulate"} <= command_requirements("covidmtl.cohort_table")
    assert "pyradiomics" in command_requirements("covidmtl.features.radiomics")
    assert "pyradiomics" not in command_requirements("covidmtl.stats.anova")
    assert "torch" not in command_requirements("covidmtl.curate")
