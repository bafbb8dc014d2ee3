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
