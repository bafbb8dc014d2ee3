"""The package as a user imports it."""

from __future__ import annotations

import subprocess
import sys


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
