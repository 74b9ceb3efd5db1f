"""``medtune import healthgpt`` on a synthetic release (issue 16 acceptance "HealthGPT import"). Run::

    .venv/bin/pytest tests/unit/models/test_healthgpt_import.py -q

A tiny Phi-3 (``Phi3Config``, padded vocabulary like the real one) with its tokenizer and a tiny CLIP (a whole
``CLIPModel`` folder, as openai/clip-vit-large-patch14-336 is) are saved; ``com_hlora_weights.bin``,
``gen_hlora_weights.bin`` and ``fusion_layer_weights.bin`` are written in the release's exact key layout (a plain
dict of random tensors, ``torch.save``). medtune's forward (``prepare_model`` on the imported folder, the plugin of
the task active) must equal :func:`release_logits`, a re-implementation of the release's forward written here from
its code (HealthGPT ``llava/peft/tuners/lora.py`` ``Linear.forward``, ``utils.add_special_tokens_and_resize_model``,
``load_weights``, LLaVA's CLIP tower and ``mlp2x_gelu`` projector): within 1e-5 on the release's vocabulary, both
plugins. Bad inputs give one line naming the option and the path, exit 2, and leave no folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionModel,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
)
from typer.testing import CliRunner

from components.models.healthgpt import PREFIX, import_healthgpt, release_tokens
from components.training.plugins import AdapterArgs, prepare_model

torch.set_num_threads(2)

CODES = 16  # vq_idx_nums of the synthetic release (8192 in the real one)
COM, GEN, EXPERTS = 8, 16, 4  # total ranks (hlora_r) and experts (hlora_nums); alpha = 2 x total rank
CORPUS = ["<|user|> Is there a lesion? <|end|> <|assistant|> yes no", "What modality is this? CT MRI X-ray"] * 20
TARGETS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
TOL = 1e-5


# -- a synthetic release --------------------------------------------------------------------------------------------
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with Phi-3's kind of specials and no <image> token (the converter adds it)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<unk>", "<s>", "</s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def release_files(lm: Any, vision_width: int, seed: int, *, projector: bool = True) -> dict[str, Tensor]:
    """One plugin file in the release's layout: H-LoRA on every LM linear layer but lm_head, and mm_projector."""
    g = torch.Generator().manual_seed(seed)
    total = COM if seed % 2 == 0 else GEN
    out: dict[str, Tensor] = {}
    for i, layer in enumerate(lm.model.layers):
        for name in TARGETS:
            module = layer.get_submodule(name)
            key = f"{PREFIX}model.layers.{i}.{name}"
            out[f"{key}.lora_A.weight"] = torch.randn(total, module.in_features, generator=g) * 0.1
            out[f"{key}.lora_B.weight"] = torch.randn(module.out_features, total, generator=g) * 0.02
            out[f"{key}.lora_route.weight"] = torch.randn(EXPERTS, module.in_features, generator=g)
    if projector:
        hidden = lm.config.hidden_size
        out[f"{PREFIX}model.mm_projector.0.weight"] = torch.randn(hidden, vision_width, generator=g) * 0.2
        out[f"{PREFIX}model.mm_projector.0.bias"] = torch.randn(hidden, generator=g) * 0.1
        out[f"{PREFIX}model.mm_projector.2.weight"] = torch.randn(hidden, hidden, generator=g) * 0.2
        out[f"{PREFIX}model.mm_projector.2.bias"] = torch.randn(hidden, generator=g) * 0.1
    return out


def vocabulary(rows: int, hidden: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"{PREFIX}model.embed_tokens.weight": torch.randn(rows, hidden, generator=g),
            f"{PREFIX}lm_head.weight": torch.randn(rows, hidden, generator=g)}  # fmt: skip


def make_release(root: Path) -> dict[str, Path]:
    """lm/ (tiny Phi-3 + tokenizer), clip/ (tiny CLIPModel + processor) and the three .bin files, plus variants."""
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    cfg = Phi3Config(vocab_size=len(tok) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1,
                     eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)  # fmt: skip
    lm = Phi3ForCausalLM(cfg)
    lm.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    clip = CLIPModel(CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
    ))  # fmt: skip
    clip.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    rows = len(tok) + CODES + 3
    shared = vocabulary(rows, 32, seed=7)
    paths = {"lm": root / "lm", "vision": root / "clip"}
    bins = {
        "com": {**release_files(lm, 24, seed=0), **shared},  # com carries the stage-2 vocabulary too: both exact
        "com_plain": release_files(lm, 24, seed=0),  # no vocabulary: the comprehension demo's Phi-3 + mean rows
        "gen": release_files(lm, 24, seed=1),
        "fusion": shared,
    }
    for name, tensors in bins.items():
        torch.save(tensors, root / f"{name}.bin")
        paths[name] = root / f"{name}.bin"
    return paths


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_release(tmp_path_factory.mktemp("healthgpt"))


@pytest.fixture(scope="module")
def imported(release: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "healthgpt-tiny"
    import_healthgpt(lm=release["lm"], vision=release["vision"], hlora=release["com"], gen_hlora=release["gen"],
                     fusion=release["fusion"], out=out)  # fmt: skip
    return out


# -- the release's forward, re-implemented from its code ------------------------------------------------------------
class ReleaseHLoraLinear(nn.Module):
    """HealthGPT/llava/peft/tuners/lora.py ``Linear.forward`` (eval: lora_dropout off)."""

    def __init__(self, base: nn.Linear, a: Tensor, b: Tensor, route: Tensor, alpha: float, nums: int) -> None:
        super().__init__()
        self.base, self.a, self.b, self.route = base, a, b, route
        self.times = a.shape[0] // nums  # int(self.r / lora_nums)
        self.scaling = alpha / a.shape[0] * nums  # lora_alpha / r * lora_num

    def forward(self, x: Tensor) -> Tensor:
        result = F.linear(x, self.base.weight, self.base.bias)
        route_weight = torch.softmax(F.linear(x, self.route), dim=-1).to(result.dtype)
        output_a = F.linear(x, self.a) * self.scaling
        router_expand = route_weight.repeat_interleave(self.times, dim=-1)
        return result + F.linear(router_expand * output_a, self.b)


def release_model(release: dict[str, Path], files: list[str]) -> tuple[Any, nn.Module, Any, int]:
    """The release's model of one task: Phi-3 + H-LoRA (files[0]) + the files loaded in order (strict=False)."""
    tok = AutoTokenizer.from_pretrained(str(release["lm"]))
    lm = AutoModelForCausalLM.from_pretrained(str(release["lm"]), dtype=torch.float32).eval()
    n = len(tok)
    tok.add_tokens(release_tokens(CODES), special_tokens=True)  # add_special_tokens_and_resize_model
    lm.resize_token_embeddings(len(tok))
    new = len(tok) - n
    for emb in (lm.get_input_embeddings().weight.data, lm.get_output_embeddings().weight.data):
        emb[-new:] = emb[:-new].mean(dim=0, keepdim=True)
    states = [torch.load(release[f], weights_only=True) for f in files]
    plugin, total = states[0], None
    for i, layer in enumerate(lm.model.layers):
        for name in TARGETS:
            key = f"{PREFIX}model.layers.{i}.{name}"
            a = plugin[f"{key}.lora_A.weight"]
            total = a.shape[0]
            parent, child = name.split(".")
            wrapped = ReleaseHLoraLinear(layer.get_submodule(name), a, plugin[f"{key}.lora_B.weight"],
                                         plugin[f"{key}.lora_route.weight"], 2.0 * a.shape[0], EXPERTS)  # fmt: skip
            setattr(layer.get_submodule(parent), child, wrapped)
    projector = nn.Sequential(nn.Linear(24, 32), nn.GELU(), nn.Linear(32, 32))
    for state in states:  # load_weights: load_state_dict(strict=False), file after file
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            if PREFIX + name in state:
                lm.get_parameter(name).data.copy_(state[PREFIX + name])
        if f"{PREFIX}model.mm_projector.0.weight" in state:
            projector.load_state_dict({k.removeprefix(f"{PREFIX}model.mm_projector."): v for k, v in state.items()
                                       if "mm_projector" in k})  # fmt: skip
    vision = CLIPVisionModel.from_pretrained(str(release["vision"])).eval()
    assert total is not None
    return lm, projector, vision, len(tok)


@torch.no_grad()
def release_logits(
    parts: tuple[Any, nn.Module, Any, int], before: Tensor, after: Tensor, pixels: Tensor, layer: int
) -> Tensor:
    """LLaVA's prepare_inputs_labels_for_multimodal for one <image>: text | projected patches | text."""
    lm, projector, vision, _ = parts
    feats = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[layer][:, 1:]  # select_feature patch
    embed = lm.get_input_embeddings()
    embeds = torch.cat([embed(before), projector(feats), embed(after)], dim=1)
    return lm(inputs_embeds=embeds).logits


@torch.no_grad()
def medtune_logits(model: Any, task: str, before: Tensor, after: Tensor, pixels: Tensor) -> Tensor:
    model.lm.set_adapter(task)
    image = torch.full((before.shape[0], model.num_image_tokens), model.image_token_id)
    ids = torch.cat([before, image, after], dim=1)
    mask = torch.ones_like(ids)
    return model(input_ids=ids, attention_mask=mask, pixel_values=pixels, tasks=[task] * len(ids)).logits


def inputs(n_rel: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Two rows: text ids before/after the image (including the release's image-code tokens), and pixels."""
    g = torch.Generator().manual_seed(seed)
    before = torch.randint(0, n_rel - CODES - 3, (2, 5), generator=g)
    after = torch.cat([torch.randint(0, n_rel, (2, 6), generator=g), torch.tensor([[n_rel - 3], [n_rel - 1]])], dim=1)
    return before, after, torch.randn(2, 3, 32, 32, generator=g)


def adapter(**changes: Any) -> AdapterArgs:
    return AdapterArgs(**{"kind": "hlora", "rank": COM, "generation_rank": GEN, "num_experts": EXPERTS, "dropout": 0.0,
                          **changes})  # fmt: skip


# -- forward equality -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "files", "layer"), [("comprehension", ["com"], -2), ("generation", ["gen", "fusion"], 1)]
)
def test_medtune_forward_equals_the_release_forward(
    release: dict[str, Path], imported: Path, task: str, files: list[str], layer: int
) -> None:
    reference = release_model(release, files)
    n_rel = reference[3]
    torch.manual_seed(0)
    model = prepare_model(imported, codebook_size=4, adapter=adapter()).eval()
    before, after, pixels = inputs(n_rel)
    want = release_logits(reference, before, after, pixels, layer)
    got = medtune_logits(model, task, before, after, pixels)[..., :n_rel]
    assert got.shape == want.shape
    diff = (got - want).abs().max().item()
    assert diff < TOL, f"{task}: max |medtune - release| = {diff:.3g}"
    # the plugin matters (not a vacuous equality): without it the logits move far more than the tolerance
    with model.lm.disable_adapter():
        plain = medtune_logits(model, task, before, after, pixels)[..., :n_rel]
    assert (plain - want).abs().max().item() > 1e-2
    meta = json.loads((imported / "import.json").read_text())
    assert meta["exact"] == {"comprehension": True, "generation": True} and meta["lossless"] is True


def test_comprehension_only_import_uses_phi3_rows_and_copies_the_projector(
    release: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "com-only"
    meta = import_healthgpt(lm=release["lm"], vision=release["vision"], hlora=release["com_plain"], out=out,
                            vq_codes=CODES)  # fmt: skip
    assert meta["exact"] == {"comprehension": True} and meta["vocabulary"]["shared_from"] == ["--lm (mean rows)"]
    assert sorted(p.name for p in (out / "plugins").iterdir()) == ["comprehension"]
    projectors = load_file(str(out / "projectors.safetensors"))
    for key in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert torch.equal(projectors[f"generation.{key}"], projectors[f"comprehension.{key}"])
    reference = release_model(release, ["com_plain"])
    model = prepare_model(out, codebook_size=4, adapter=adapter()).eval()
    before, after, pixels = inputs(reference[3], seed=1)
    want = release_logits(reference, before, after, pixels, -2)
    got = medtune_logits(model, "comprehension", before, after, pixels)[..., : reference[3]]
    assert (got - want).abs().max().item() < TOL


def test_a_comprehension_file_without_the_shared_vocabulary_is_reported_not_exact(
    release: dict[str, Path], tmp_path: Path
) -> None:
    from pipelines.cli import app

    out = tmp_path / "mixed"
    args = ["import", "healthgpt", "--lm", str(release["lm"]), "--vision", str(release["vision"]), "--hlora",
            str(release["com_plain"]), "--gen-hlora", str(release["gen"]), "--fusion", str(release["fusion"]),
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "import.json").read_text())
    assert meta["exact"] == {"comprehension": False, "generation": True}
    assert meta["vocabulary_max_abs_difference"]["comprehension"] > 0.1
    assert "note: the comprehension plugin's forward differs" in result.output


# -- every imported tensor equals its source ------------------------------------------------------------------------
def test_every_imported_tensor_equals_its_source(release: dict[str, Path], imported: Path) -> None:
    com, gen = (torch.load(release[n], weights_only=True) for n in ("com", "gen"))
    fusion = torch.load(release["fusion"], weights_only=True)
    checked = 0
    for task, source in (("comprehension", com), ("generation", gen)):
        plugin = load_file(str(imported / "plugins" / task / "adapter_model.safetensors"))
        config = json.loads((imported / "plugins" / task / "adapter_config.json").read_text())
        assert config["peft_type"] == "HLORA" and config["num_experts"] == EXPERTS
        assert config["r"] * EXPERTS == (COM if task == "comprehension" else GEN)
        names = {".lora_A.weight": ".hlora_A", ".lora_B.weight": ".hlora_B", ".lora_route.weight": ".hlora_router"}
        mapped = {}
        for key, value in source.items():
            for theirs, ours in names.items():
                if key.endswith(theirs):
                    mapped[key.removesuffix(theirs) + ours] = value
        assert mapped.keys() == plugin.keys()
        for key, value in mapped.items():
            assert torch.equal(plugin[key], value), key
            checked += 1
        projectors = load_file(str(imported / "projectors.safetensors"))
        for key in ("0.weight", "0.bias", "2.weight", "2.bias"):
            assert torch.equal(projectors[f"{task}.{key}"], source[f"{PREFIX}model.mm_projector.{key}"])
            checked += 1
    lm = AutoModelForCausalLM.from_pretrained(str(imported / "lm"), dtype=torch.float32)
    src = AutoModelForCausalLM.from_pretrained(str(release["lm"]), dtype=torch.float32)
    ours = dict(lm.named_parameters())
    n_rel = fusion[f"{PREFIX}lm_head.weight"].shape[0]
    for name, value in src.named_parameters():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(ours[name][:n_rel], fusion[PREFIX + name]), name
            assert ours[name].shape[0] == n_rel + 1  # + medtune's <image> row
        else:
            assert torch.equal(ours[name], value), name
        checked += 1
    vision = CLIPVisionModel.from_pretrained(str(imported / "vision"))
    source_vision = CLIPVisionModel.from_pretrained(str(release["vision"]))
    for (name, value), (_, theirs) in zip(vision.named_parameters(), source_vision.named_parameters(), strict=True):
        assert torch.equal(value, theirs), name
        checked += 1
    assert (imported / "vision" / "preprocessor_config.json").is_file()
    processor = CLIPImageProcessor.from_pretrained(str(release["vision"]))
    args = json.loads((imported / "vlm.json").read_text())["args"]
    assert args["image_mean"] == list(processor.image_mean) and args["image_std"] == list(processor.image_std)
    assert (args["comp_layer"], args["gen_layer"], args["merge"], args["channels"]) == (-2, 1, 1, 3)
    tok = AutoTokenizer.from_pretrained(str(imported))
    assert tok.convert_tokens_to_ids("<start_index>") == n_rel - CODES - 3
    assert tok.convert_tokens_to_ids(f"<idx_{CODES - 1}>") == n_rel - 3
    assert tok.convert_tokens_to_ids("<image>") == n_rel
    meta = json.loads((imported / "import.json").read_text())
    assert meta["sources"]["hlora"]["file"] == "com.bin" and len(meta["sources"]["fusion"]["sha256"]) == 64
    assert meta["release"]["plugins"]["generation"]["hlora_r"] == GEN and meta["release"]["vq_idx_nums"] == CODES
    assert checked > 100


def test_the_plugin_folders_are_plain_peft_adapters(release: dict[str, Path], imported: Path) -> None:
    from peft import PeftModel

    import components.adapters  # noqa: F401  (registers hlora)
    from components.models.vlm import MedVLM

    base = MedVLM.load(imported)
    peft_lm = PeftModel.from_pretrained(base.lm, str(imported / "plugins" / "generation"), adapter_name="generation")
    gen = torch.load(release["gen"], weights_only=True)
    key = "base_model.model.model.layers.1.mlp.down_proj.hlora_router.generation"
    source = gen[f"{PREFIX}model.layers.1.mlp.down_proj.lora_route.weight"]
    assert torch.equal(dict(peft_lm.named_parameters())[key], source)


# -- prepare_model takes the plugin settings; a contradiction names the key -----------------------------------------
@pytest.mark.parametrize(
    ("changes", "key"),
    [({"rank": 16}, "adapter.rank"), ({"generation_rank": 32}, "adapter.generation_rank"),
     ({"num_experts": 2}, "adapter.experts"), ({"alpha": 3.0}, "adapter.alpha"), ({"kind": "lora"}, "adapter.kind"),
     ({"rank_pattern": {"qkv_proj": 4}}, "adapter.rank_pattern"),
     ({"target_modules": ["o_proj"]}, "adapter.target_modules")],
)  # fmt: skip
def test_prepare_model_rejects_settings_that_contradict_the_imported_plugins(
    imported: Path, changes: dict[str, Any], key: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{key}=") as info:
        prepare_model(imported, codebook_size=4, adapter=adapter(**changes))
    assert "plugins" in str(info.value)


def test_prepare_model_trains_the_imported_plugins_and_fresh_rows(imported: Path) -> None:
    model = prepare_model(imported, codebook_size=4, adapter=adapter(dropout=0.05))
    config = model.lm.peft_config
    assert config["generation"].r * EXPERTS == GEN and config["comprehension"].r * EXPERTS == COM
    assert config["comprehension"].lora_dropout == 0.05  # the run's dropout, not the release's inference 0
    gen = load_file(str(imported / "plugins" / "generation" / "adapter_model.safetensors"))
    params = dict(model.lm.named_parameters())
    assert all(torch.equal(params[f"{k}.generation"], v) for k, v in gen.items())
    assert all(params[f"{k}.generation"].requires_grad is False for k in gen)  # comprehension is the active one
    assert len(model.tokenizer) == json.loads((imported / "import.json").read_text())["vocabulary"]["release_rows"] + 7


# -- bad inputs: one line, exit 2, nothing written -----------------------------------------------------------------
def _corrupt(release: dict[str, Path], tmp: Path, how: str) -> Path:
    state = torch.load(release["com"], weights_only=True)
    first = f"{PREFIX}model.layers.0.self_attn.qkv_proj.lora_A.weight"
    if how == "extra":
        state[f"{PREFIX}model.vision_tower.weight"] = torch.zeros(1)
    elif how == "missing":
        del state[first]
    elif how == "shape":
        state[first] = state[first][:, :-1]
    elif how == "object":
        state = {first: PreTrainedTokenizerFast}  # a class: weights_only refuses to unpickle it
    path = tmp / f"{how}.bin"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("case", "option", "words"),
    [
        ("no-hlora", "--hlora", "no such file"),
        ("no-lm", "--lm", "no such model folder"),
        ("vision-is-lm", "--vision", "not a CLIP vision model (model_type 'phi3')"),
        ("extra", "--hlora", f"unexpected key '{PREFIX}model.vision_tower.weight'"),
        ("missing", "--hlora", f"missing key '{PREFIX}model.layers.0.self_attn.qkv_proj.lora_A.weight'"),
        ("shape", "--hlora", "model.layers.0.self_attn.qkv_proj.lora_A.weight has shape"),
        ("object", "--hlora", "torch.load(weights_only=True)"),
        ("gen-without-fusion", "--fusion", "required with --gen-hlora"),
    ],
)
def test_bad_inputs_give_one_line_exit_2_and_write_nothing(
    release: dict[str, Path], tmp_path: Path, case: str, option: str, words: str
) -> None:
    from pipelines.cli import app

    args = {"--lm": str(release["lm"]), "--vision": str(release["vision"]), "--hlora": str(release["com"])}
    if case == "no-hlora":
        args["--hlora"] = str(tmp_path / "com_hlora_weights.bin")
    elif case == "no-lm":
        args["--lm"] = str(tmp_path / "Phi-3-mini-4k-instruct")
    elif case == "vision-is-lm":
        args["--vision"] = str(release["lm"])
    elif case == "gen-without-fusion":
        args["--gen-hlora"] = str(release["gen"])
    else:
        args["--hlora"] = str(_corrupt(release, tmp_path, case))
    out = tmp_path / "out" / "model"
    argv = ["import", "healthgpt", *[x for kv in args.items() for x in kv], "--out", str(out)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {option}") and words in lines[0], lines[0]
    if option != "--fusion":
        assert args[option] in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_a_failure_while_writing_leaves_nothing(
    release: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import PeftModel

    from pipelines.cli import app

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PeftModel, "save_pretrained", full_disk)
    out = tmp_path / "models" / "healthgpt"
    argv = ["import", "healthgpt", "--lm", str(release["lm"]), "--vision", str(release["vision"]), "--hlora",
            str(release["com"]), "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "nothing was written" in lines[0]
    assert not out.parent.exists()  # no half-written folder, no hidden temp folder, not even the parent it made


@pytest.mark.parametrize(
    ("dtype", "sources", "want", "lossless"),
    [
        ("auto", [torch.bfloat16, torch.bfloat16], torch.bfloat16, True),
        ("auto", [torch.bfloat16, torch.float16], torch.float32, True),
        ("auto", [torch.float32, torch.float16], torch.float32, True),
        ("bfloat16", [torch.bfloat16, torch.float16], torch.bfloat16, False),
        ("float32", [torch.float16], torch.float32, True),
    ],
)
def test_auto_dtype_keeps_every_source_tensor_exact(
    dtype: str, sources: list[torch.dtype], want: torch.dtype, lossless: bool
) -> None:
    from components.models.healthgpt import _resolve_dtype

    assert _resolve_dtype(dtype, sources) == (want, lossless)


def test_suffix_target_names_that_cover_the_imported_modules_agree(imported: Path) -> None:
    model = prepare_model(imported, codebook_size=4, adapter=adapter(target_modules=list(TARGETS)))
    assert sorted(model.lm.peft_config["comprehension"].target_modules) == sorted(
        f"model.layers.{i}.{name}" for i in range(2) for name in TARGETS
    )


def test_the_imported_model_talks_in_the_releases_phi3_instruct_format(imported: Path) -> None:
    """HealthGPT's conversation template (llava/conversation.py conv_phi3_instruct, SeparatorStyle.MPT): training
    prompts, evaluation and safety prompts of the imported model are the release's; <|end|> ends and stops an answer."""
    from components.models.vlm import MedVLM

    model = MedVLM.load(imported)
    assert model.args.chat_format == "phi3_instruct"
    collate = model.collator(lambda _: torch.zeros(model.channels, model.image_size, model.image_size))
    record = {"id": "r", "task": "comprehension", "image": "x.png",
              "conversations": [{"from": "human", "value": "<image>\nIs there a lesion?"},
                                {"from": "gpt", "value": "yes"}]}  # fmt: skip
    enc = collate.encode(record)
    tok = model.tokenizer
    assert tok is not None
    text = tok.decode([t for t in enc.ids if t != model.image_token_id])
    expected = (
        "<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\n\nIs there a lesion?<|end|>\n<|assistant|>\n"
        "yes<|end|>"
    )
    assert text.removeprefix(tok.bos_token or "") == expected
    learned = [t for t, lab in zip(enc.ids, enc.labels, strict=True) if lab != -100]
    assert tok.decode(learned) == "yes<|end|>" and collate.eos == tok.convert_tokens_to_ids("<|end|>")
