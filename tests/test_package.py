"""The package as a user imports it."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import diffusers_irib


def test_importing_the_package_is_cheap_and_names_load_on_first_use():
    code = (
        "import sys, diffusers_irib; assert 'torch' not in sys.modules, 'eager torch import';"
        "from diffusers_irib import IRIBRestorationPipeline, DegradationConfig;"
        "assert IRIBRestorationPipeline.__name__ == 'IRIBRestorationPipeline' and 'torch' in sys.modules;"
        "assert set(diffusers_irib.__all__) <= set(dir(diffusers_irib))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_no_module_outside_cli_imports_cli():
    """cli/ holds the console entry points only: the library, the web page, the evaluation, the benchmarks
    and the examples never import it (they run a command, if they need one, as a user would)."""
    root = pathlib.Path(diffusers_irib.__file__).parent
    repo = root.parents[1]
    files = {path: ".".join(("diffusers_irib", *path.relative_to(root).parent.parts)) for path in root.rglob("*.py")}
    files.update({path: "" for folder in ("benchmarks", "examples") for path in (repo / folder).rglob("*.py")})
    offenders = [
        str(path.relative_to(repo))
        for path, package in sorted(files.items())
        if not package.startswith("diffusers_irib.cli")
        and any(name.startswith("diffusers_irib.cli") for name in _package_imports(path, package))
    ]
    assert offenders == []


def _package_imports(path: pathlib.Path, package: str) -> set[str]:
    """The ``diffusers_irib`` modules a file imports, function-level imports included (by its AST)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module) if p)
            found |= {target} if node.module else {f"{target}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.split(".")[0] == "diffusers_irib"}


def test_adapters_import_nothing_above_them():
    """adapters/ is the bottom of the model code: it may use its own modules and the package's leaf
    utilities (which import nothing of the package), never the card, the pipeline or the training."""
    src = pathlib.Path(diffusers_irib.__file__).parent
    leaf_utilities = {"diffusers_irib.config_utils", "diffusers_irib.file_utils", "diffusers_irib.hub_utils"}
    for name in sorted(leaf_utilities):
        assert _package_imports(src / f"{name.split('.')[-1]}.py", "diffusers_irib") == set(), name
    for path in sorted((src / "adapters").glob("*.py")):
        outside = {
            m for m in _package_imports(path, "diffusers_irib.adapters") if not m.startswith("diffusers_irib.adapters")
        }
        assert outside <= leaf_utilities, f"adapters/{path.name} imports {sorted(outside - leaf_utilities)}"
