"""What every console entry point shares: --version, --debug, one-line errors, cheap --help."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import diffusers_irib
from diffusers_irib.cli import convert, degrade, demo, restore
from diffusers_irib.utils import arguments, errors, pipeline_arguments
from diffusers_irib.utils import model_sources as models

MAINS = {
    "irib-degrade": degrade.main,
    "irib-restore": restore.main,
    "irib-demo": demo.main,
    "irib-convert-osediff": convert.main,
}
HEAVY = ("torch", "diffusers", "transformers", "huggingface_hub", "safetensors", "peft")
PACKAGE_DIR = Path(diffusers_irib.__file__).parent


def exit_code(main, argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.mark.parametrize("prog", sorted(MAINS))
def test_version_names_the_command_and_the_package(prog, capsys):
    code, out, _ = exit_code(MAINS[prog], ["--version"], capsys)
    assert code == 0
    assert out.strip() == f"{prog} diffusers-irib {diffusers_irib.__version__}"


def test_version_falls_back_to_the_installed_metadata(monkeypatch):
    monkeypatch.delattr(diffusers_irib, "__version__")
    assert arguments.package_version() not in ("", None)


def test_expected_errors_are_one_line_and_debug_brings_the_traceback_back(tmp_path, capsys):
    argv = ["--demo", "--preset", str(tmp_path / "none.json"), "-o", str(tmp_path / "out")]
    code, _, err = exit_code(degrade.main, argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("irib-degrade: error: ") and "none.json" in err
    with pytest.raises(errors.CLIError, match="does not exist"):
        degrade.main([*argv, "--debug"])


def test_unexpected_errors_are_one_line_with_a_pointer_to_debug(capsys):
    def body():
        raise RuntimeError("first line\nsecond line of a long torch message")

    with pytest.raises(SystemExit) as info:
        errors.run_guarded("irib-x", False, body)
    assert info.value.code == 1
    assert capsys.readouterr().err == "irib-x: error: first line (run with --debug for the full traceback)\n"


def test_copied_constants_match_the_library():
    """cli/ keeps copies so that --help need not import torch: they must not drift."""
    from diffusers_irib.adapters import DEFAULT_BASE_MODEL, LORA_WEIGHT_NAME
    from diffusers_irib.image_processing import COLOR_FIXES

    assert models.DEFAULT_BASE_MODEL == DEFAULT_BASE_MODEL
    assert models.LORA_WEIGHT_NAME == LORA_WEIGHT_NAME
    assert set(pipeline_arguments.COLOR_FIXES) == set(COLOR_FIXES) | {"none"}


# Imports the CLI modules with the package's own __init__ replaced by an empty one, so the test
# sees what the CLI code imports, whatever diffusers_irib/__init__.py does.
LAZY_CHECK = textwrap.dedent(
    """
    import json, sys, time, types
    package = types.ModuleType("diffusers_irib")
    package.__path__ = [{package_dir!r}]
    package.__version__ = "0.0.test"
    sys.modules["diffusers_irib"] = package
    start = time.perf_counter()
    from diffusers_irib.cli import convert, degrade, demo, restore
    runs = [
        (restore.main, ["--help"]), (degrade.main, ["--version"]), (demo.main, ["--help"]),
        (convert.main, ["--help"]), (restore.main, ["--seed", "1e23", "x.png"]),
        (restore.main, ["--tile-overlap", "8", "x.png"]), (restore.main, ["{missing}"]),
        (degrade.main, ["{missing}"]), (demo.main, ["--size", "0"]),
    ]
    codes = []
    for main, argv in runs:
        try:
            main(argv)
        except SystemExit as exit:
            codes.append(exit.code)
    heavy = [m for m in {heavy!r} if m in sys.modules]
    print(json.dumps({{"codes": codes, "heavy": heavy, "seconds": time.perf_counter() - start}}))
    """
)


def test_help_version_and_argument_errors_import_no_heavy_module(tmp_path):
    script = LAZY_CHECK.format(package_dir=str(PACKAGE_DIR), heavy=HEAVY, missing=str(tmp_path / "missing.png"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0, 0, 0, 0, 2, 2, 2, 2, 2]
    assert report["heavy"] == []
    assert report["seconds"] < 2.0


REAL_HELP = textwrap.dedent(
    """
    import json, sys, time
    start = time.perf_counter()
    from diffusers_irib.cli.restore import main
    try:
        main(["--help"])
    except SystemExit:
        pass
    print(json.dumps({"torch": "torch" in sys.modules, "seconds": time.perf_counter() - start}))
    """
)


def test_restore_help_with_the_real_package_answers_within_two_seconds():
    """The whole import chain, package __init__ included (it imports its submodules lazily)."""
    result = subprocess.run([sys.executable, "-c", REAL_HELP], capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["torch"] and report["seconds"] < 2.0


def test_an_unreachable_hub_costs_one_attempt_not_one_per_model(monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants
    import huggingface_hub.utils

    from diffusers_irib import hub_utils

    downloads, probes, cache = [], [], []

    class RefusingSession:
        def head(self, url, **kwargs):
            probes.append(url)
            raise OSError("[Errno 111] Connection refused")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: downloads.append(a))
    monkeypatch.setattr(huggingface_hub.utils, "get_session", lambda: RefusingSession())
    monkeypatch.setattr(hub_utils, "is_cached", lambda repo_id, filename, **k: cache.append(repo_id) and False)
    monkeypatch.setattr(hub_utils, "_PROBED", {})
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)
    specs = [models.ModelSpec(role, f"someone/{role}") for role in ("base", "projector", "restorer")]
    message = models.missing_models_message(specs)
    assert len(probes) == 1 and not downloads and "HF_HUB_OFFLINE=1" in message  # one short probe, no retries
    assert cache == ["someone/base", "someone/projector", "someone/restorer"]  # the cache is still asked for each
