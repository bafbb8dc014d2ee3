"""Adapter sets against independent truth: hand-merged weights (W + s * B @ A), plain copies."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import make_sd21_scheduler, make_tiny_unet, make_tiny_vae
from lora_reference import (
    PROJ,
    REST,
    REST_SCALES,
    ManualOneStep,
    assert_grads_close,
    build_two_sets,
    lora_factors,
    merged_params,
    randomize,
    reference_model,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call

from diffusers_irib.adapters import (
    AdapterSetConfig,
    adapter_set_parameters,
    add_adapter_set,
    delete_adapter_set,
    enable_adapter_aware_checkpointing,
    get_active_adapter_set,
    list_adapter_sets,
    load_adapter_set,
    osediff_unet_adapter_groups,
    osediff_unet_target_modules,
    osediff_vae_target_modules,
    save_adapter_set,
    set_adapter_set,
    set_adapter_set_trainable,
    unload_adapter_sets,
    use_adapter_set,
)
from diffusers_irib.one_step import one_step_restore

# ---------------------------------------------------------------------------------------------
# Targets and config
# ---------------------------------------------------------------------------------------------


def test_osediff_targets_on_tiny_models(tiny_unet, tiny_vae):
    unet_targets = osediff_unet_target_modules(tiny_unet)
    convs = {n for n, m in tiny_unet.named_modules() if isinstance(m, nn.Conv2d)}
    suffixes = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
    linears = {n for n, m in tiny_unet.named_modules() if isinstance(m, nn.Linear) and n.endswith(suffixes)}
    assert set(unet_targets) == convs | linears
    assert not [t for t in unet_targets if "norm" in t or "time_emb" in t or "time_embedding" in t]

    groups = osediff_unet_adapter_groups(tiny_unet)
    assert sorted(sum(groups.values(), [])) == sorted(unet_targets)
    assert all("down_blocks" in n or n == "conv_in" for n in groups["default_encoder"])
    assert all("up_blocks" in n or n == "conv_out" for n in groups["default_decoder"])
    assert groups["default_others"] and all(n.startswith("mid_block") for n in groups["default_others"])

    vae_targets = set(osediff_vae_target_modules(tiny_vae))
    enc_convs = {n for n, m in tiny_vae.named_modules() if isinstance(m, nn.Conv2d) and n.startswith("encoder.")}
    attn = {f"encoder.mid_block.attentions.0.{s}" for s in ("to_q", "to_k", "to_v", "to_out.0")}
    assert vae_targets == enc_convs | attn | {"quant_conv"}


def test_adapter_set_config_roundtrip_and_validation(tmp_path):
    cfg = AdapterSetConfig(role="projector", unet_target_modules=["a", "b"], degradation_preset={"name": "elq"})
    path = tmp_path / "adapter_set_config.json"
    cfg.to_json_file(path)
    assert AdapterSetConfig.from_json_file(path) == cfg
    assert json.loads(path.read_text())["alpha"] == 8.0

    bad = {
        "rank": 0,
        "alpha": -1.0,
        "role": "no spaces",
        "init": "kaiming",
        "unet_target_modules": [],
        "vae_target_modules": ["x", "x"],
        "has_conv_in": "yes",
        "format_version": 99,
        "vae_rank": 1.5,
    }
    for field_name, value in bad.items():
        data = {**cfg.to_dict(), field_name: value}
        with pytest.raises(ValueError, match=field_name):
            AdapterSetConfig.from_dict(data)
    with pytest.raises(ValueError, match="degradation_preset"):
        AdapterSetConfig(role="projector", unet_target_modules=["a"], degradation_preset={"f": object()})
    with pytest.raises(ValueError, match="unknown"):
        AdapterSetConfig.from_dict({**cfg.to_dict(), "lora_rank": 4})
    with pytest.raises(ValueError, match="role"):
        AdapterSetConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "role"})


def test_add_adapter_set_lora_config_and_flags(tiny_unet, tiny_vae, sd21_scheduler, tiny_images, prompt_embeds):
    with torch.no_grad():
        base_out = one_step_restore(tiny_unet, tiny_vae, tiny_images, prompt_embeds, sd21_scheduler)
    cfg = add_adapter_set(tiny_unet, tiny_vae, "projector")
    assert (cfg.rank, cfg.alpha, cfg.init, cfg.has_conv_in) == (4, 8.0, "gaussian", False)
    peft_cfg = tiny_unet.peft_config["projector"]
    assert (peft_cfg.r, peft_cfg.lora_alpha, peft_cfg.init_lora_weights) == (4, 8.0, "gaussian")
    assert set(tiny_vae.peft_config["projector"].target_modules) == set(osediff_vae_target_modules(tiny_vae))
    assert not any("decoder" in n for n in tiny_vae.state_dict() if "lora" in n)
    a_all = torch.cat([a.flatten() for a, _, _ in lora_factors(tiny_unet, "projector").values()])
    assert float(a_all.detach().std()) == pytest.approx(0.25, rel=0.2)  # gaussian init: N(0, 1/r)
    assert all(float(b.detach().abs().max()) == 0 for _, b, _ in lora_factors(tiny_unet, "projector").values())
    with torch.no_grad():  # B = 0: a fresh set is the identity on the base model
        torch.testing.assert_close(
            one_step_restore(tiny_unet, tiny_vae, tiny_images, prompt_embeds, sd21_scheduler), base_out, rtol=0, atol=0
        )
    all_params = list(tiny_unet.named_parameters()) + list(tiny_vae.named_parameters())
    trainable = {n for n, p in all_params if p.requires_grad}
    assert trainable and all(".lora_" in n and ".projector." in n for n in trainable)

    add_adapter_set(tiny_unet, tiny_vae, "restorer", trainable=False)
    assert get_active_adapter_set(tiny_unet) == "restorer"
    assert list_adapter_sets(tiny_unet) == ["projector", "restorer"]
    now = {n for n, p in list(tiny_unet.named_parameters()) + list(tiny_vae.named_parameters()) if p.requires_grad}
    assert now == trainable  # adding a frozen set changed no flag
    with pytest.raises(ValueError, match="already exists"):
        add_adapter_set(tiny_unet, tiny_vae, "projector")


# ---------------------------------------------------------------------------------------------
# Exactness and switching
# ---------------------------------------------------------------------------------------------


def test_outputs_equal_hand_merged_copies_and_switching(
    tiny_unet, tiny_vae, sd21_scheduler, tiny_images, prompt_embeds
):
    build_two_sets(tiny_unet, tiny_vae)
    outs = {}
    with torch.no_grad():
        for role, scale, scales in (("projector", 2.0, None), ("restorer", 1.5, REST_SCALES), (None, None, None)):
            with use_adapter_set(tiny_unet, tiny_vae, role):
                outs[role] = one_step_restore(tiny_unet, tiny_vae, tiny_images, prompt_embeds, sd21_scheduler)
            if role is None:
                ref = ManualOneStep(make_tiny_unet(), make_tiny_vae())
            else:
                ref = reference_model(tiny_unet, tiny_vae, role, scale, scales)
            torch.testing.assert_close(outs[role], ref(tiny_images, prompt_embeds), rtol=0, atol=1e-4)
    roles = list(outs)
    for i, r1 in enumerate(roles):
        for r2 in roles[i + 1 :]:
            assert float((outs[r1] - outs[r2]).abs().max()) > 1e-2, (r1, r2)


def _flags(*models):
    return {(i, n): p.requires_grad for i, m in enumerate(models) for n, p in m.named_parameters()}


def test_use_adapter_set_restores_the_active_set_and_reasserts_trainability(tiny_unet, tiny_vae):
    build_two_sets(tiny_unet, tiny_vae)
    set_adapter_set(tiny_unet, tiny_vae, "projector")
    models = (tiny_unet, tiny_vae)
    flags = _flags(*models)
    trainable = {k for k, v in flags.items() if v}
    assert trainable and all(".projector." in n for _, n in trainable)

    with pytest.raises(RuntimeError, match="boom"):
        with use_adapter_set(tiny_unet, tiny_vae, "restorer"):
            assert get_active_adapter_set(tiny_unet, tiny_vae) == "restorer"
            assert _flags(*models) == flags  # switching keeps every set's declared trainability
            with use_adapter_set(tiny_unet, tiny_vae, None):
                assert get_active_adapter_set(tiny_unet, tiny_vae) is None
                for p in adapter_set_parameters(tiny_unet, tiny_vae, "restorer"):
                    p.requires_grad_(True)  # damage: a frozen set made trainable ...
                tiny_unet.set_adapter("restorer")  # ... and peft's own switch, which rewrites flags
            assert get_active_adapter_set(tiny_unet, tiny_vae) == "restorer"
            assert _flags(*models) == flags  # re-asserted, not restored from a damaged snapshot
            raise RuntimeError("boom")
    assert get_active_adapter_set(tiny_unet, tiny_vae) == "projector"
    assert _flags(*models) == flags
    with pytest.raises(ValueError, match="'critic' is not loaded"):
        with use_adapter_set(tiny_unet, tiny_vae, "critic"):
            pass

    set_adapter_set_trainable(tiny_unet, tiny_vae, "projector", False)  # a declared change sticks
    with use_adapter_set(tiny_unet, tiny_vae, "restorer"):
        pass
    assert not any(_flags(*models).values())


def test_every_part_of_a_set_is_a_peft_lora(tiny_unet, tiny_vae):
    names = {n for n, _ in tiny_unet.named_parameters()}
    build_two_sets(tiny_unet, tiny_vae)
    assert type(tiny_unet.conv_in.base_layer) is nn.Conv2d
    assert "forward" not in vars(tiny_unet.conv_in.base_layer)  # no patched forward
    # The restorer's conv_in LoRA is full rank (4 channels x 3 x 3) with a bias; the projector's is rank 4.
    assert tiny_unet.conv_in.lora_A["restorer"].weight.shape == (36, 4, 3, 3)
    assert tiny_unet.conv_in.lora_B["restorer"].bias is not None
    assert tiny_unet.conv_in.lora_A["projector"].weight.shape == (4, 4, 3, 3)
    after = [n for n, _ in tiny_unet.named_parameters()]
    base_names = {n.replace(".base_layer", "") for n in after if ".lora_" not in n}
    assert base_names == names  # nothing outside peft's layers
    for role in ("restorer", None, "projector"):
        set_adapter_set(tiny_unet, tiny_vae, role)
        assert [n for n, _ in tiny_unet.named_parameters()] == after  # names never move with a switch
    # The extra LoRA biases peft's lora_bias adds to every other layer stay zero and frozen.
    biases = [(n, p) for n, p in tiny_unet.named_parameters() if n.endswith("lora_B.restorer.bias")]
    assert len(biases) == len(lora_factors(tiny_unet, "restorer"))
    trainable_biases = adapter_set_parameters(tiny_unet, tiny_vae, "restorer", trainable_only=True)
    assert sum(p.ndim == 1 for p in trainable_biases) == 1  # only conv_in's
    delete_adapter_set(tiny_unet, tiny_vae, "restorer")
    assert get_active_adapter_set(tiny_unet, tiny_vae) == "projector" and list_adapter_sets(tiny_unet) == ["projector"]


def test_unet_only_set_runs_vae_without_adapters(tiny_unet, tiny_vae, tiny_images):
    add_adapter_set(tiny_unet, tiny_vae, "projector")
    randomize(tiny_vae, "projector", 1)
    add_adapter_set(tiny_unet, tiny_vae, "regularizer", vae_target_modules=[])
    assert "regularizer" not in tiny_vae.peft_config
    with torch.no_grad():
        with use_adapter_set(tiny_unet, tiny_vae, "regularizer"):
            z = tiny_vae.encode(tiny_images).latent_dist.mean
        z_base = make_tiny_vae().encode(tiny_images).latent_dist.mean
    torch.testing.assert_close(z, z_base, rtol=0, atol=0)


def test_unload_adapter_sets_gives_back_the_pristine_base(tiny_unet, tiny_vae):
    build_two_sets(tiny_unet, tiny_vae)
    set_adapter_set(tiny_unet, tiny_vae, "restorer")
    unload_adapter_sets(tiny_unet, tiny_vae)
    for model, fresh in ((tiny_unet, make_tiny_unet()), (tiny_vae, make_tiny_vae())):
        sd, ref = model.state_dict(), fresh.state_dict()
        assert sd.keys() == ref.keys()
        assert all(torch.equal(sd[k], ref[k]) for k in ref)
    assert list_adapter_sets(tiny_unet) == []


# ---------------------------------------------------------------------------------------------
# Training-ready switching: f under projector, g under restorer, one graph
# ---------------------------------------------------------------------------------------------


def projector_gradients(images, prompt_embeds, weights, checkpointing: bool, stock_switch: bool = False):
    unet, vae, scheduler = make_tiny_unet(), make_tiny_vae(), make_sd21_scheduler()
    build_two_sets(unet, vae)
    if checkpointing == "aware":
        enable_adapter_aware_checkpointing(unet, vae)
    elif checkpointing:
        unet.enable_gradient_checkpointing()  # the stock call; switching makes it adapter-aware
        vae.enable_gradient_checkpointing()
    if stock_switch:  # the trap: plain switches with the stock checkpoint function
        set_adapter_set(unet, vae, "projector")
        unet.enable_gradient_checkpointing(), vae.enable_gradient_checkpointing()
        lq = one_step_restore(unet, vae, images, prompt_embeds, scheduler)
        set_adapter_set(unet, vae, "restorer")
        unet.enable_gradient_checkpointing(), vae.enable_gradient_checkpointing()
        hq = one_step_restore(unet, vae, lq, prompt_embeds, scheduler)
    else:
        with use_adapter_set(unet, vae, "projector"):
            lq = one_step_restore(unet, vae, images, prompt_embeds, scheduler)
        with use_adapter_set(unet, vae, "restorer"):
            hq = one_step_restore(unet, vae, lq, prompt_embeds, scheduler)
    # After the contexts the restorer (last added) is active again: backward recomputes f's
    # checkpointed blocks while the *restorer* is active, the hard case.
    (hq * weights).sum().backward()
    grads, others = {}, []
    for prefix, model in (("unet", unet), ("vae", vae)):
        for name, p in model.named_parameters():
            if ".projector." in name:
                grads[f"{prefix}.{name}"] = p.grad
            else:
                others.append((f"{prefix}.{name}", p.grad))
    return grads, others, unet, vae


def test_projector_gradients_through_frozen_restorer(tiny_images, prompt_embeds):
    weights = torch.randn(tiny_images.shape, generator=torch.Generator().manual_seed(5))
    grads, others, unet, vae = projector_gradients(tiny_images, prompt_embeds, weights, False)
    assert all(g is None for _, g in others), [n for n, g in others if g is not None][:5]
    assert all(g is not None and float(g.abs().max()) > 0 for g in grads.values())

    # Independent truth: plain copies, projector LoRA factors as leaf tensors merged by hand,
    # restorer merged (and its conv_in) into a second plain copy.
    g_ref = reference_model(unet, vae, "restorer", 1.5, REST_SCALES)
    f_ref = ManualOneStep(make_tiny_unet(), make_tiny_vae())
    leaves, params = {}, {}
    for prefix, model in (("unet", unet), ("vae", vae)):
        factors = {}
        for name, (a, b, _) in lora_factors(model, "projector").items():
            a_leaf, b_leaf = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
            leaves[f"{prefix}.{name}.lora_A.projector.weight"] = a_leaf
            leaves[f"{prefix}.{name}.lora_B.projector.weight"] = b_leaf
            factors[name] = (a_leaf, b_leaf, None)
        base_sd = getattr(f_ref, prefix).state_dict()
        params.update(merged_params(factors, 2.0, base_sd, prefix))
    lq = functional_call(f_ref, params, (tiny_images, prompt_embeds), strict=False)
    (g_ref(lq, prompt_embeds) * weights).sum().backward()
    assert leaves.keys() == grads.keys()
    for name, leaf in leaves.items():
        assert_grads_close(grads[name], leaf.grad, 1e-4, name)

    # Same gradients with gradient checkpointing on UNet and VAE (stock enable, or ours).
    for mode in (True, "aware"):
        grads_gc, others_gc, _, _ = projector_gradients(tiny_images, prompt_embeds, weights, mode)
        assert all(g is None for _, g in others_gc)
        for name in grads:
            assert_grads_close(grads_gc[name], grads[name], 1e-5, f"{mode}: {name}")

    # Control: the stock checkpoint function with a plain switch gets it wrong (or refuses).
    try:
        grads_bad, _, _, _ = projector_gradients(tiny_images, prompt_embeds, weights, True, stock_switch=True)
    except torch.utils.checkpoint.CheckpointError:
        return
    worst = max(float((grads_bad[n] - grads[n]).abs().max() / grads[n].abs().max()) for n in grads)
    assert worst > 1e-2


def test_trainable_conv_in_lora_gets_the_full_conv_in_gradient(tiny_unet, tiny_vae, tiny_images, prompt_embeds):
    # OSEDiff trains conv_in fully; as an exact LoRA, A is the one-hot patch extractor, so the
    # gradient of B (reshaped) and of its bias is exactly the gradient of a full conv_in weight/bias.
    add_adapter_set(tiny_unet, tiny_vae, "projector", conv_in=True)
    randomize(tiny_unet, "projector", 40)
    layer = tiny_unet.conv_in
    with torch.no_grad():
        layer.lora_A["projector"].weight.copy_(torch.eye(36).reshape(36, 4, 3, 3))
        for name, (_, _, bias) in lora_factors(tiny_unet, "projector").items():
            if bias is not None and name != "conv_in":
                bias.zero_()
    b, bias = layer.lora_B["projector"].weight, layer.lora_B["projector"].bias
    assert b.requires_grad and bias.requires_grad and not layer.base_layer.weight.requires_grad
    with use_adapter_set(tiny_unet, tiny_vae, "projector"):
        out = one_step_restore(tiny_unet, tiny_vae, tiny_images, prompt_embeds, make_sd21_scheduler())
    out.square().sum().backward()
    ref = reference_model(tiny_unet, tiny_vae, "projector", 2.0, {"conv_in": 1.0})
    ref(tiny_images, prompt_embeds).square().sum().backward()
    assert layer.base_layer.weight.grad is None
    assert_grads_close(b.grad.reshape(32, 4, 3, 3), ref.unet.conv_in.weight.grad, 1e-4, "conv_in.weight")
    assert_grads_close(bias.grad, ref.unet.conv_in.bias.grad, 1e-4, "conv_in.bias")
    frozen_biases = [
        p for n, p in tiny_unet.named_parameters() if n.endswith("lora_B.projector.bias") and "conv_in" not in n
    ]
    assert frozen_biases and all(p.grad is None and not p.requires_grad for p in frozen_biases)


# ---------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------


def _outputs(unet, vae, images, prompt_embeds, roles=("projector", "restorer", None)):
    scheduler = make_sd21_scheduler()
    out = {}
    with torch.no_grad():
        for role in roles:
            with use_adapter_set(unet, vae, role):
                out[role] = one_step_restore(unet, vae, images, prompt_embeds, scheduler)
    return out


def test_save_load_roundtrip_is_exact(tmp_path, tiny_unet, tiny_vae, tiny_images, prompt_embeds):
    build_two_sets(tiny_unet, tiny_vae)
    expected = _outputs(tiny_unet, tiny_vae, tiny_images, prompt_embeds)
    save_adapter_set(tiny_unet, tiny_vae, "projector", tmp_path / "projector")
    save_adapter_set(tiny_unet, tiny_vae, "restorer", tmp_path / "restorer")

    for role, scale_cfg, conv in (("projector", PROJ, False), ("restorer", REST, True)):
        folder = tmp_path / role
        assert sorted(os.listdir(folder)) == [
            "README.md",
            "adapter_set_config.json",
            "pytorch_lora_weights.safetensors",
        ]
        with safe_open(folder / "pytorch_lora_weights.safetensors", "pt") as f:
            keys, meta = list(f.keys()), json.loads(f.metadata()["lora_adapter_metadata"])
        assert all(k.startswith(("unet.", "vae.")) and role not in k for k in keys)
        assert all("lora" in k for k in keys)  # diffusers' load_lora_weights accepts only LoRA keys
        assert ("unet.conv_in.lora_B.bias" in keys) == conv
        assert any(k.startswith("vae.encoder.") for k in keys) and not any("decoder" in k for k in keys)
        assert (meta["unet.r"], meta["unet.lora_alpha"]) == (scale_cfg["rank"], scale_cfg["alpha"])
        assert (meta["vae.r"], meta["vae.lora_alpha"]) == (scale_cfg["rank"], scale_cfg["alpha"])
        cfg = AdapterSetConfig.from_json_file(folder / "adapter_set_config.json")
        assert (cfg.role, cfg.rank, cfg.alpha, cfg.has_conv_in) == (role, scale_cfg["rank"], scale_cfg["alpha"], conv)

    unet, vae = make_tiny_unet(), make_tiny_vae()
    rng = torch.random.get_rng_state()
    # Same trainability as the saved model: on CPU, requires_grad alone can pick another conv
    # kernel (ulp-level differences), and this check is bitwise.
    load_adapter_set(unet, vae, tmp_path / "projector", trainable=True)
    load_adapter_set(unet, vae, str(tmp_path / "restorer"))
    assert torch.equal(rng, torch.random.get_rng_state())  # loading does not move the user's seed
    assert all(p.requires_grad for p in adapter_set_parameters(unet, vae, "projector"))
    restorer_params = adapter_set_parameters(unet, vae, "restorer")
    assert restorer_params and not any(p.requires_grad for p in restorer_params)  # frozen by default
    n_unet, n_vae = len(lora_factors(unet, "restorer")), len(lora_factors(vae, "restorer"))
    assert len(restorer_params) == 3 * n_unet + 2 * n_vae  # A, B (and lora_bias on the UNet: own conv_in)
    got = _outputs(unet, vae, tiny_images, prompt_embeds)
    for role in expected:
        torch.testing.assert_close(got[role], expected[role], rtol=0, atol=0)

    # A set can be loaded under another role name (frozen here, hence the ulp tolerance).
    load_adapter_set(unet, vae, tmp_path / "projector", role="projector_copy")
    torch.testing.assert_close(
        _outputs(unet, vae, tiny_images, prompt_embeds, ("projector_copy",))["projector_copy"],
        expected["projector"],
        rtol=0,
        atol=1e-5,
    )


def test_saved_unet_half_loads_with_stock_diffusers(tmp_path, tiny_unet, tiny_vae, tiny_images, prompt_embeds):
    # Interop: diffusers' own loader reads our file's UNet part with the right alpha from metadata.
    add_adapter_set(tiny_unet, tiny_vae, "projector", rank=2, alpha=5.0, vae_target_modules=[])
    randomize(tiny_unet, "projector", 3)
    save_adapter_set(tiny_unet, tiny_vae, "projector", tmp_path)
    other = make_tiny_unet()
    other.load_lora_adapter(
        str(tmp_path), weight_name="pytorch_lora_weights.safetensors", prefix="unet", adapter_name="p"
    )
    assert other.peft_config["p"].lora_alpha == 5.0
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 999])
    with torch.no_grad():
        torch.testing.assert_close(
            other(latents, t, prompt_embeds.expand(2, -1, -1)).sample,
            tiny_unet(latents, t, prompt_embeds.expand(2, -1, -1)).sample,
            rtol=0,
            atol=0,
        )


def _rewrite(folder, edit_tensors=None, edit_meta=None, edit_config=None):
    path = os.path.join(folder, "pytorch_lora_weights.safetensors")
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    lora_meta = json.loads(metadata["lora_adapter_metadata"])
    config = json.loads(open(os.path.join(folder, "adapter_set_config.json")).read())
    if edit_tensors:
        tensors = edit_tensors(tensors)
    if edit_meta:
        edit_meta(lora_meta)
    if edit_config:
        edit_config(config)
    metadata["lora_adapter_metadata"] = json.dumps(lora_meta)
    metadata["irib_adapter_set"] = json.dumps(config)
    save_file(tensors, path, metadata=metadata)
    with open(os.path.join(folder, "adapter_set_config.json"), "w") as f:
        json.dump(config, f)


def _rename_target(old, new):
    def tensors(t):
        return {k.replace(f".{old}.", f".{new}."): v for k, v in t.items()}

    def meta(m):
        m["unet.target_modules"] = [new if x == old else x for x in m["unet.target_modules"]]

    def config(c):
        c["unet_target_modules"] = [new if x == old else x for x in c["unet_target_modules"]]

    return dict(edit_tensors=tensors, edit_meta=meta, edit_config=config)


def _truncate_rank(t):
    key = "unet.down_blocks.0.resnets.0.conv1.lora_A.weight"
    return {**t, key: t[key][:1].contiguous()}


MISMATCHES = {
    "rank in config": (dict(edit_config=lambda c: c.update(rank=3)), "rank 3"),
    "rank in shapes": (dict(edit_tensors=_truncate_rank), "shapes do not fit"),
    "alpha": (dict(edit_meta=lambda m: m.update({"unet.lora_alpha": 4.0})), "alpha"),
    "target missing": (_rename_target("down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.0.conv9"), "not found"),
    # SD2.1 (768-v) and SD2.1-base share every shape; only sample_size tells them apart.
    "base": (
        dict(edit_config=lambda c: c["base_architecture"]["unet"].update(sample_size=96)),
        "different base model",
    ),
    "role missing": (dict(edit_config=lambda c: c.pop("role")), "role"),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_load_rejects_mismatches(case, tmp_path, tiny_unet, tiny_vae):
    add_adapter_set(tiny_unet, tiny_vae, "projector")
    save_adapter_set(tiny_unet, tiny_vae, "projector", tmp_path)
    edits, message = MISMATCHES[case]
    _rewrite(tmp_path, **edits)
    unet, vae = make_tiny_unet(), make_tiny_vae()
    with pytest.raises(ValueError, match=message):
        load_adapter_set(unet, vae, tmp_path)
    assert not hasattr(unet, "peft_config") or not unet.peft_config  # nothing half-loaded


def test_load_rejects_other_base_and_duplicates(tmp_path, tiny_unet, tiny_vae):
    add_adapter_set(tiny_unet, tiny_vae, "projector")
    save_adapter_set(tiny_unet, tiny_vae, "projector", tmp_path)
    torch.manual_seed(0)
    from diffusers import UNet2DConditionModel

    bigger = UNet2DConditionModel(**{**dict(make_tiny_unet().config), "cross_attention_dim": 16})
    with pytest.raises(ValueError, match="cross_attention_dim"):
        load_adapter_set(bigger, make_tiny_vae(), tmp_path)
    with pytest.raises(ValueError, match="already exists"):
        load_adapter_set(tiny_unet, tiny_vae, tmp_path)
    with pytest.raises(ValueError, match="not loaded"):
        save_adapter_set(tiny_unet, tiny_vae, "restorer", tmp_path / "x")
    with pytest.raises(ValueError, match="not a folder"):
        load_adapter_set(make_tiny_unet(), make_tiny_vae(), tmp_path / "missing")


def test_load_adapter_set_weights_copies_in_place_and_refuses_a_different_set(tmp_path):
    from diffusers_irib.adapters import load_adapter_set_weights

    unet, vae = make_tiny_unet(), make_tiny_vae()
    add_adapter_set(unet, vae, "projector")
    add_adapter_set(unet, vae, "restorer", conv_in=True, trainable=False)
    randomize(unet, "restorer", 1)
    randomize(vae, "restorer", 2)
    save_adapter_set(unet, vae, "restorer", tmp_path / "restorer")
    saved = load_file(tmp_path / "restorer" / "pytorch_lora_weights.safetensors")

    unet2, vae2 = make_tiny_unet(), make_tiny_vae()
    add_adapter_set(unet2, vae2, "restorer", conv_in=True)  # fresh: B = 0
    before = {name: p for name, p in [*unet2.named_parameters(), *vae2.named_parameters()] if ".restorer." in name}
    load_adapter_set_weights(unet2, vae2, tmp_path / "restorer")
    after = dict([*unet2.named_parameters(), *vae2.named_parameters()])
    assert all(after[name] is p for name, p in before.items())  # the same objects: an optimiser keeps them
    for key, value in saved.items():  # every saved tensor, found by its own name with the role inserted
        part, _, rest = key.partition(".")
        module, factor, kind = rest.rsplit(".", 2)
        assert torch.equal(after[f"{module}.{factor}.restorer.{kind}"], value), key
    unet3, vae3 = make_tiny_unet(), make_tiny_vae()
    add_adapter_set(unet3, vae3, "restorer", rank=2, conv_in=True)
    with pytest.raises(ValueError, match="rank"):
        load_adapter_set_weights(unet3, vae3, tmp_path / "restorer")
