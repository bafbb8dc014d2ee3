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
    """cli/ holds the console entry points only: the library, the web page and the evaluation never import it."""
    import ast
    from pathlib import Path

    import diffusers_irib

    root = Path(diffusers_irib.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        package = path.relative_to(root).parent.parts
        if package[:1] == ("cli",):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = list(package[: len(package) - node.level + 1]) if node.level else []
                names = [".".join(base + (node.module or "").split("."))] if node.level else [node.module or ""]
                names += [f"{names[0]}.{alias.name}".strip(".") for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if any(n == "cli" or n.startswith("cli.") or n.startswith("diffusers_irib.cli") for n in names):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
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
