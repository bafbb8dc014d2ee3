"""Prompt extractors, offline: tiny CLIP / BLIP models built from configs (their words are noise,
the code path is real), in-memory tokenizers, local save/load only. No Hugging Face Hub access."""

from __future__ import annotations

import math
import string
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_irib import prompts as P
from diffusers_irib.prompts import (
    CaptionPrompt,
    CLIPTagger,
    EmptyPrompt,
    FixedPrompt,
    PromptExtractor,
    RAMTagger,
    check_prompts,
    format_osediff_prompt,
)

TAGS = ["cat", "dog", "tree", "sky", "house", "car", "street", "water", "flower"]


def noise_images(n: int, size=(40, 48), seed: int = 0, mode: str = "RGB") -> list[Image.Image]:
    rng = np.random.RandomState(seed)
    ims = [Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]
    return [im.convert(mode) for im in ims]


# --------------------------------------------------------------------------------------------
# tiny models
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip():
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    # Character-level byte-BPE vocabulary (no merges): every lowercase word is tokenisable.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,'-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    text = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=48,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def tiny_blip():
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "photo", "of", "the", "cat", "dog", "on", "in"]
    words += ["house", "street", "tree", "sky", "man", "woman"] + list(string.ascii_lowercase)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(dict.fromkeys(words))}, bos_token="[DEC]")
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        encoder_hidden_size=32,
        bos_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    vision = dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    return model, processor


# --------------------------------------------------------------------------------------------
# protocol, fixed prompts, formatting, check_prompts
# --------------------------------------------------------------------------------------------


def test_fixed_and_empty_prompts_and_protocol():
    ims = noise_images(3, mode="L")
    assert FixedPrompt("a photo")(ims) == ["a photo"] * 3
    assert EmptyPrompt()(ims) == ["", "", ""]
    assert FixedPrompt("x")([]) == [] and EmptyPrompt()(()) == []
    for extractor in (FixedPrompt("x"), EmptyPrompt(), lambda images: ["p"] * len(images)):
        assert isinstance(extractor, PromptExtractor)
    assert not isinstance("not callable", PromptExtractor)
    with pytest.raises(TypeError, match="prompt"):
        FixedPrompt(3)


def test_format_osediff_prompt_exact_strings():
    # OSEDiff test_osediff.py: f"{tags}, {user_prompt}," with tags joined by ", "
    assert format_osediff_prompt(["cat", "sofa"], "clean") == "cat, sofa, clean,"
    assert format_osediff_prompt(["cat", "sofa"]) == "cat, sofa, ,"
    assert format_osediff_prompt([], "clean") == ", clean,"
    assert format_osediff_prompt([], "") == ", ,"
    assert format_osediff_prompt([" cat ", "", "sofa"], " clean ") == "cat, sofa, clean,"
    assert format_osediff_prompt(("cat",), "clean") == "cat, clean,"
    # exact=False drops empty parts
    assert format_osediff_prompt(["cat", "sofa"], exact=False) == "cat, sofa,"
    assert format_osediff_prompt(["cat"], "clean", exact=False) == "cat, clean,"
    assert format_osediff_prompt([], "clean", exact=False) == "clean,"
    assert format_osediff_prompt([], exact=False) == ""
    with pytest.raises(TypeError, match="tags"):
        format_osediff_prompt("cat, sofa")
    with pytest.raises(TypeError, match=r"tags\[1\]"):
        format_osediff_prompt(["cat", 1])
    with pytest.raises(TypeError, match="user_prompt"):
        format_osediff_prompt(["cat"], None)


def test_check_prompts():
    assert check_prompts(["a", ""], 2) == ["a", ""]
    assert check_prompts([], 0) == []
    with pytest.raises(TypeError, match="list"):
        check_prompts(("a", "b"), 2)
    with pytest.raises(TypeError, match="list"):
        check_prompts("ab", 2)
    with pytest.raises(ValueError, match="1 prompts for 2 images"):
        check_prompts(["a"], 2)
    with pytest.raises(TypeError, match=r"\[1\]"):
        check_prompts(["a", None], 2)
    with pytest.raises(ValueError, match="n must"):
        check_prompts([], -1)


@pytest.mark.parametrize(
    "bad, match",
    [
        (Image.new("RGB", (8, 8)), "single PIL image"),
        (torch.zeros(1, 3, 8, 8), "images must be a list"),
        ("image.png", "images must be a list"),
        (None, "images must be a list"),
        ([Image.new("RGB", (8, 8)), np.zeros((8, 8, 3))], r"images\[1\]"),
    ],
)
def test_bad_image_inputs(bad, match, tiny_clip):
    model, processor = tiny_clip
    for extractor in (FixedPrompt("x"), EmptyPrompt(), CLIPTagger(model, processor, TAGS)):
        with pytest.raises(TypeError, match=match):
            extractor(bad)


# --------------------------------------------------------------------------------------------
# CLIPTagger
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tags=[]), "tags must not be empty"),
        (dict(tags="cat"), "tags must be a list"),
        (dict(tags=["cat", ""]), r"tags\[1\]"),
        (dict(tags=["cat", "cat"]), "duplicates"),
        (dict(threshold=-0.1), "threshold"),
        (dict(threshold=1.5), "threshold"),
        (dict(threshold=float("nan")), "threshold"),
        (dict(threshold="0.5"), "threshold"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=2.0), "top_k"),
        (dict(batch_size=0), "batch_size"),
        (dict(template="a photo"), "template"),
    ],
)
def test_clip_tagger_argument_validation(kwargs, match, tiny_clip):
    model, processor = tiny_clip
    args = dict(tags=TAGS) | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        CLIPTagger(model, processor, **args)


def test_clip_tagger_prompts_top_k_threshold(tiny_clip):
    model, processor = tiny_clip
    ims = noise_images(3, mode="RGBA")
    tagger = CLIPTagger(model, processor, TAGS, top_k=3, batch_size=2)
    tags = tagger.tag(ims)
    assert [len(t) for t in tags] == [3, 3, 3] and all(set(t) <= set(TAGS) for t in tags)
    out = tagger(ims)
    assert out == [format_osediff_prompt(t) for t in tags] == [", ".join(t) + ", ," for t in tags]
    assert check_prompts(out, 3) is out and tagger([]) == []

    probs = tagger.scores(ims)
    assert probs.shape == (3, len(TAGS)) and torch.allclose(probs.sum(-1), torch.ones(3))

    none = CLIPTagger(model, processor, TAGS, threshold=1.0, top_k=None, user_prompt="sharp")
    assert none(ims) == [", sharp,"] * 3
    assert CLIPTagger(model, processor, TAGS, threshold=1.0, exact_format=False)(ims) == [""] * 3
    # threshold 0 with no top_k keeps every tag; a middle threshold keeps exactly those >= it
    keep_all = CLIPTagger(model, processor, TAGS, threshold=0.0, top_k=None)
    assert [len(t) for t in keep_all.tag(ims)] == [len(TAGS)] * 3
    values, order = torch.sort(probs[0], descending=True)
    thr = float(values[3] + values[4]) / 2  # between the 4th and 5th best: keeps exactly 4
    kept = CLIPTagger(model, processor, TAGS, threshold=thr, top_k=None).tag(ims[:1])[0]
    assert kept == [TAGS[i] for i in order[:4].tolist()]
    assert CLIPTagger(model, processor, TAGS, threshold=thr, top_k=2).tag(ims[:1])[0] == kept[:2]


def test_clip_tagger_scores_match_independent_computation(tiny_clip):
    model, processor = tiny_clip
    ims = noise_images(4, seed=1)
    template = "a photo of a {}."
    tagger = CLIPTagger(model, processor, TAGS, top_k=len(TAGS), template=template, batch_size=3)
    with torch.no_grad():
        # 1) CLIP's own forward (logits_per_image = logit_scale.exp() * cosine)
        inputs = processor(text=[template.format(t) for t in TAGS], images=ims, padding=True, return_tensors="pt")
        truth = model(**inputs).logits_per_image.softmax(-1)
        # 2) by hand from the projected features
        img = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        txt = txt.pooler_output  # transformers 5: projected embeddings live in pooler_output
        cos = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    by_hand = (cos * model.logit_scale.exp()).softmax(-1)
    assert torch.allclose(truth, by_hand, atol=1e-6)
    assert torch.allclose(tagger.scores(ims), truth, atol=1e-5)
    expected = [[TAGS[i] for i in torch.argsort(row, descending=True).tolist()] for row in cos]
    assert tagger.tag(ims) == expected
    top2 = CLIPTagger(model, processor, TAGS, top_k=2, user_prompt="clean")(ims)
    assert top2 == [f"{e[0]}, {e[1]}, clean," for e in expected]


def test_clip_tagger_text_embeddings_computed_once(tiny_clip, monkeypatch):
    model, processor = tiny_clip
    calls = []
    original = model.get_text_features

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "get_text_features", counting)
    tagger = CLIPTagger(model, processor, TAGS, batch_size=4)
    assert calls == []  # lazy
    first = tagger(noise_images(2))
    second = tagger(noise_images(2))
    assert first == second
    assert len(calls) == math.ceil(len(TAGS) / 4) and sum(calls) == len(TAGS)


def test_clip_tagger_from_pretrained_local_dir(tiny_clip, tmp_path):
    model, processor = tiny_clip
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    ims = noise_images(2, seed=3)
    expected = CLIPTagger(model, processor, TAGS, top_k=4, user_prompt="hq")(ims)
    loaded = CLIPTagger.from_pretrained(
        tmp_path, tags=TAGS, device="cpu", dtype=torch.float32, top_k=4, user_prompt="hq", local_files_only=True
    )
    assert loaded.top_k == 4 and loaded.tags == tuple(TAGS) and not loaded.model.training
    assert loaded(ims) == expected
    default_vocab = CLIPTagger.from_pretrained(tmp_path, local_files_only=True)
    assert default_vocab.tags == P.DEFAULT_TAGS and 100 <= len(P.DEFAULT_TAGS) <= 200
    assert [len(t) for t in default_vocab.tag(ims)] == [5, 5]


# --------------------------------------------------------------------------------------------
# CaptionPrompt
# --------------------------------------------------------------------------------------------


def test_caption_prompt_tiny_blip(tiny_blip):
    model, processor = tiny_blip
    ims = noise_images(3, seed=4, mode="L")
    captioner = CaptionPrompt(model, processor, max_new_tokens=5, batch_size=2)
    caps = captioner(ims)
    check_prompts(caps, 3)
    assert all(c == c.strip() and c and "[DEC]" not in c and "[SEP]" not in c for c in caps)
    assert all(len(c.split()) <= 5 for c in caps)  # <= one word per generated token
    assert CaptionPrompt(model, processor, max_new_tokens=5, batch_size=8)(ims) == caps  # batching invariant
    assert captioner([]) == []

    prefixed = CaptionPrompt(model, processor, max_new_tokens=4, prefix="a photo of")(ims)
    assert all(c.startswith("a photo of") and len(c.split()) <= 3 + 4 for c in prefixed)

    fmt = CaptionPrompt(model, processor, max_new_tokens=5, osediff_format=True, user_prompt="clean")(ims)
    assert fmt == [f"{c}, clean," for c in caps]

    with pytest.raises(ValueError, match="max_new_tokens"):
        CaptionPrompt(model, processor, max_new_tokens=0)
    with pytest.raises(ValueError, match="user_prompt"):
        CaptionPrompt(model, processor, user_prompt="clean")
    with pytest.raises(TypeError, match="generate"):
        CaptionPrompt(object(), processor)
    with pytest.raises(TypeError, match=r"images\[0\]"):
        captioner(["not an image"])


def test_caption_prompt_from_pretrained_local_dir(tiny_blip, tmp_path):
    model, processor = tiny_blip
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    ims = noise_images(2, seed=5)
    expected = CaptionPrompt(model, processor, max_new_tokens=4)(ims)
    loaded = CaptionPrompt.from_pretrained(tmp_path, device="cpu", max_new_tokens=4, local_files_only=True)
    assert type(loaded.model).__name__ == "BlipForConditionalGeneration"
    assert loaded.max_new_tokens == 4 and loaded(ims) == expected


# --------------------------------------------------------------------------------------------
# RAMTagger (the real package / checkpoints are not available here)
# --------------------------------------------------------------------------------------------


def test_ram_tagger_missing_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ram", None)  # import ram -> ImportError even if installed
    with pytest.raises(ImportError) as info:
        RAMTagger(tmp_path / "ram_swin_large_14m.pth")
    msg = str(info.value)
    assert "pip install git+https://github.com/xinyu1205/recognize-anything.git" in msg
    assert "ram_swin_large_14m.pth" in msg and "DAPE.pth" in msg


def _fake_ram(monkeypatch, with_lora: bool = True):
    """Install a fake `ram` package: records the builder's kwargs and the inference inputs."""
    record: dict = {}

    class FakeRAM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    def build(**kwargs):
        record["build"] = kwargs
        return FakeRAM()

    def inference_ram(image, model):
        record.setdefault("inputs", []).append(image)
        tags = ["cat, sofa", "dog"] if with_lora else (["cat | sofa", "dog"], ["c", "d"])
        return tags if with_lora else (tags[0][: image.shape[0]], tags[1][: image.shape[0]])

    ram = types.ModuleType("ram")
    ram.inference_ram = inference_ram
    models = types.ModuleType("ram.models")
    models.ram = build
    ram.models = models
    monkeypatch.setitem(sys.modules, "ram", ram)
    monkeypatch.setitem(sys.modules, "ram.models", models)
    if with_lora:
        lora = types.ModuleType("ram.models.ram_lora")
        lora.ram = build
        models.ram_lora = lora
        monkeypatch.setitem(sys.modules, "ram.models.ram_lora", lora)
    else:
        monkeypatch.setitem(sys.modules, "ram.models.ram_lora", None)
    return record


def test_ram_tagger_missing_checkpoints(monkeypatch, tmp_path):
    _fake_ram(monkeypatch)
    missing = tmp_path / "nope" / "ram_swin_large_14m.pth"
    with pytest.raises(FileNotFoundError, match="ram_path.*ram_swin_large_14m.pth"):
        RAMTagger(missing)
    ram_ckpt = tmp_path / "ram.pth"
    ram_ckpt.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="dape_path.*DAPE.pth"):
        RAMTagger(ram_ckpt, tmp_path / "DAPE.pth")


def test_ram_tagger_dape_needs_lora_variant(monkeypatch, tmp_path):
    _fake_ram(monkeypatch, with_lora=False)
    ckpt = tmp_path / "ram.pth"
    ckpt.write_bytes(b"")
    with pytest.raises(ImportError, match="ram_lora"):
        RAMTagger(ckpt, ckpt)


@pytest.mark.parametrize("with_lora", [True, False])
def test_ram_tagger_osediff_call_path_with_fake_package(monkeypatch, tmp_path, with_lora):
    record = _fake_ram(monkeypatch, with_lora=with_lora)
    ram_ckpt, dape_ckpt = tmp_path / "ram_swin_large_14m.pth", tmp_path / "DAPE.pth"
    ram_ckpt.write_bytes(b"")
    dape_ckpt.write_bytes(b"")
    tagger = RAMTagger(ram_ckpt, dape_ckpt if with_lora else None, user_prompt="clean")
    expected = {"pretrained": str(ram_ckpt), "image_size": 384, "vit": "swin_l"}
    if with_lora:
        expected["pretrained_condition"] = str(dape_ckpt)
    assert record["build"] == expected and not tagger.model.training
    gray = [Image.new("RGB", (50, 30), (128, 128, 128)), Image.new("L", (20, 20), 128)]
    assert tagger(gray) == ["cat, sofa, clean,", "dog, clean,"]
    (x,) = record["inputs"]
    assert x.shape == (2, 3, 384, 384) and x.dtype == torch.float32
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[:, :, 100, 100], ((128 / 255 - mean) / std).expand(2, 3), atol=1e-5)
    assert tagger([]) == []
