"""Adapter sets: named LoRA adapters on ONE shared SD2.1 UNet/VAE, switched by peft adapter name.

An adapter set (role ``projector``, ``restorer``, ``regularizer``, ...) is a UNet LoRA plus an
optional VAE-encoder LoRA, both registered with peft under the role's name; a set that changes
the UNet's ``conv_in`` fully (as OSEDiff trains it) carries that change as an exact full-rank LoRA
with a bias on ``conv_in``. One copy of the 866M-parameter UNet thus serves every role, and
``None`` means "no adapter", the frozen SD prior.

One job per module:

* :mod:`.config` - :class:`AdapterSetConfig`, the set's JSON description;
* :mod:`.targets` - OSEDiff's LoRA target rules and the base-architecture record;
* :mod:`.conv_in` - a full conv_in change as an exact LoRA;
* :mod:`.registry` - which sets a UNet holds, seen through compile/DDP wrappers;
* :mod:`.switching` - switching, declared trainability, fusing;
* :mod:`.checkpointing` - gradient checkpointing that replays the forward-time adapters;
* :mod:`.lifecycle` - add, delete, unload;
* :mod:`.serialization` - save/load as diffusers LoRA files with a model card;
* :mod:`.model_card` - that model card (``README.md``), from the packaged template;
* :mod:`.conversion` - OSEDiff's ``osediff.pkl`` to a restorer set.
"""

from .checkpointing import enable_adapter_aware_checkpointing
from .config import (
    ADAPTER_SET_CONFIG_NAME,
    DEFAULT_BASE_MODEL,
    FORMAT_VERSION,
    LORA_WEIGHT_NAME,
    MODEL_CARD_NAME,
    AdapterSetConfig,
)
from .conversion import (
    CheckpointReadError,
    convert_osediff_checkpoint,
    convert_osediff_state_dict,
    load_base_conv_in,
    read_checkpoint,
)
from .lifecycle import add_adapter_set, delete_adapter_set, unload_adapter_sets
from .registry import require_role, unwrap_model
from .serialization import detached_peft_layers, load_adapter_set, load_adapter_set_weights, save_adapter_set
from .switching import (
    adapter_set_parameters,
    fuse_adapter_set,
    fused_adapter_set,
    get_active_adapter_set,
    get_adapter_set_config,
    list_adapter_sets,
    reassert_trainability,
    set_adapter_set,
    set_adapter_set_trainable,
    unfuse_adapter_set,
    use_adapter_set,
)
from .targets import (
    OSEDIFF_UNET_ADAPTERS,
    base_architecture,
    osediff_unet_adapter_groups,
    osediff_unet_target_modules,
    osediff_vae_target_modules,
)

__all__ = [
    "ADAPTER_SET_CONFIG_NAME",
    "AdapterSetConfig",
    "DEFAULT_BASE_MODEL",
    "FORMAT_VERSION",
    "LORA_WEIGHT_NAME",
    "MODEL_CARD_NAME",
    "OSEDIFF_UNET_ADAPTERS",
    "adapter_set_parameters",
    "add_adapter_set",
    "base_architecture",
    "CheckpointReadError",
    "convert_osediff_checkpoint",
    "convert_osediff_state_dict",
    "delete_adapter_set",
    "detached_peft_layers",
    "enable_adapter_aware_checkpointing",
    "fuse_adapter_set",
    "fused_adapter_set",
    "get_active_adapter_set",
    "get_adapter_set_config",
    "list_adapter_sets",
    "load_adapter_set",
    "load_adapter_set_weights",
    "load_base_conv_in",
    "read_checkpoint",
    "reassert_trainability",
    "require_role",
    "osediff_unet_adapter_groups",
    "osediff_unet_target_modules",
    "osediff_vae_target_modules",
    "save_adapter_set",
    "set_adapter_set",
    "set_adapter_set_trainable",
    "unfuse_adapter_set",
    "unload_adapter_sets",
    "unwrap_model",
    "use_adapter_set",
]
