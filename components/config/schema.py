"""medtune's configuration: frozen pydantic models, every field described, unknown keys refused.

The YAML files under ``configs/`` validate into :class:`MedtuneConfig`. Components never see this object whole:
flows hand them plain arguments taken from it (STYLE.md, "config at the edge").

Source configs live beside their readers (``components/data/sources/*``) and are collected here into one
union discriminated by ``kind``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components.data.sources import SOURCES
from components.safety.prompt_sets import PromptSetConfig


class Strict(BaseModel):
    """Base for every config model: frozen, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _source_union() -> Any:
    configs = tuple(spec.config for spec in SOURCES.values())
    return Annotated[Union[configs], Field(discriminator="kind")]  # noqa: UP007 - built at run time


SourceConfig = _source_union()


class ImagePolicy(Strict):
    size: int = Field(64, ge=8, le=4096, description="Stored images are size x size pixels.")
    mode: Literal["L", "RGB"] = Field("L", description="Pixel mode of stored images: L (grey) or RGB.")
    resize: Literal["pad", "stretch", "crop"] = Field(
        "pad", description="How a non-square image becomes square: pad (keep aspect), stretch, or centre crop."
    )


class SplitConfig(Strict):
    train: float = Field(0.8, ge=0, le=1, description="Fraction of groups in the train split.")
    val: float = Field(0.1, ge=0, le=1, description="Fraction of groups in the val split.")
    test: float = Field(0.1, ge=0, le=1, description="Fraction of groups in the test split.")
    seed: int = Field(0, description="Seed of the deterministic group-to-split assignment.")

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class DeidConfig(Strict):
    key_env: str = Field(
        "MEDTUNE_DEID_KEY",
        description="Environment variable holding the secret key for pseudonyms; unset means a key kept in the "
        "state folder (created once, never logged).",
    )
    max_date_shift_days: int = Field(
        365, ge=1, description="Dates are shifted by a per-patient offset of up to this many days."
    )
    burned_in: Literal["mask", "quarantine"] = Field(
        "mask",
        description="Text found burned into the pixels of an intake image that may carry it (PS3.15 Clean Pixel "
        "Data option: BurnedInAnnotation YES, or absent for US, secondary capture, OT ...): masked (black boxes) "
        "or the image quarantined.",
    )


class DataConfig(Strict):
    raw: str = Field("data/raw", description="Folder of the de-identified sources (tracked by data.dvc).")
    intake: str = Field(
        "data/intake",
        description="Local intake area for identified files, never versioned or pushed: the DICOM source at "
        "<raw>/X takes its files from <intake>/X, de-identified by `medtune data ingest` (and every build).",
    )
    out: str = Field("data/vlhealth", description="Folder of the built dataset (a DVC output).")
    sources: dict[str, SourceConfig] = Field(  # type: ignore[valid-type]
        description="Sources to build from, by name; each has a 'kind' naming its reader."
    )
    image: ImagePolicy = Field(default_factory=ImagePolicy, description="How images are normalised.")
    splits: SplitConfig = Field(default_factory=SplitConfig, description="Split ratios and seed.")
    deid: DeidConfig = Field(default_factory=DeidConfig, description="De-identification settings.")
    on_error: Literal["quarantine", "fail"] = Field(
        "quarantine", description="A bad sample is quarantined (counted, build goes on) or fails the build."
    )
    on_official_conflict: Literal["keep", "drop"] = Field(
        "drop",
        description="An image (same pixels) that a source's official splits put in two splits: drop its records "
        "(no leakage) or keep them where the source put them (reported by the gate).",
    )
    workers: int = Field(1, ge=1, le=64, description="Processes that decode and write images.")
    safety_prompts: list[str] = Field(
        default_factory=list,
        description="Safety prompt-set files or folders (AILuminate/XSTest CSV) that may never become training "
        "data; medtune's own v0.5-style prompts are always excluded.",
    )


class ValidateConfig(Strict):
    split_tolerance: float = Field(
        0.1, ge=0, le=1, description="Allowed absolute gap between a split's share of records and its ratio."
    )
    min_records: int = Field(1, ge=0, description="Fewest records a valid dataset may have.")
    sample_rows: int = Field(5, ge=1, le=100, description="Failing rows shown per expectation.")


class TrackingConfig(Strict):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; null means $MLFLOW_TRACKING_URI or the SQLite store in the state folder.",
    )
    experiment: str = Field("retrain", description="MLflow experiment of the retrain flow.")


class S3Remote(Strict):
    bucket: str = Field(description="Bucket name.")
    prefix: str = Field("medtune/dvc", description="Key prefix inside the bucket.")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, Ceph ...); null for AWS.")
    region: str = Field("us-east-1", description="Region name.")


class DvcConfig(Strict):
    remote: Literal["local", "s3"] = Field(
        "local", description="local: a folder in the state folder; s3: the bucket below (credentials from env)."
    )
    s3: S3Remote | None = Field(None, description="S3 remote settings, required when remote is s3.")

    @model_validator(mode="after")
    def _s3_needs_settings(self) -> DvcConfig:
        if self.remote == "s3" and self.s3 is None:
            raise ValueError("remote 's3' needs an 's3' section (bucket, prefix, endpoint_url, region)")
        return self


class VisionSettings(Strict):
    hidden: int = Field(64, ge=8, description="Vision encoder (CLIP) width of the tiny model.")
    layers: int = Field(3, ge=2, description="Vision encoder layers (HVP needs a shallow and a deep one).")
    heads: int = Field(4, ge=1, description="Vision attention heads.")
    patch_size: int = Field(8, ge=1, description="Patch size; (image size / patch size)^2 patches.")
    merge: int = Field(
        4,
        ge=1,
        description="m x m neighbouring patches become one LM image token (concatenated before the projector, as "
        "Qwen2-VL's patch merger): (image size / patch size / merge)^2 image tokens; 1: one token per patch.",
    )
    path: str | None = Field(None, description="Local CLIP vision checkpoint folder instead of the tiny encoder.")


class LMSettings(Strict):
    hidden: int = Field(128, ge=8, description="Language model width of the tiny model.")
    layers: int = Field(4, ge=1, description="Language model layers.")
    heads: int = Field(4, ge=1, description="Attention heads.")
    intermediate: int = Field(344, ge=8, description="MLP width.")
    max_positions: int = Field(512, ge=64, description="Longest sequence.")
    vocab_size: int = Field(1000, ge=64, description="BPE vocabulary trained on the corpus (tiny model only).")
    path: str | None = Field(
        None,
        description="Local Hugging Face checkpoint folder of a causal LM (GPU users); a hub id must be "
        "downloaded first.",
    )


class ModelConfig(Strict):
    path: str | None = Field(
        None,
        description="A whole VLM as the base: a local Hugging Face folder (LLaVA, Qwen2.5-VL, Gemma 3/MedGemma, "
        "Idefics3/SmolVLM, saved with its processor), a hub id already in the local HF cache (nothing is "
        "downloaded), or a medtune model folder (e.g. from `medtune import healthgpt`). Unset: the tiny model.",
    )
    vision: VisionSettings = Field(default_factory=VisionSettings, description="Vision encoder.")
    lm: LMSettings = Field(default_factory=LMSettings, description="Language model.")
    comprehension_layer: int = Field(-2, description="HVP: encoder hidden state read by comprehension.")
    generation_layer: int = Field(1, description="HVP: encoder hidden state read by generation (shallow).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Weights dtype. bfloat16/float16: the frozen base in that dtype, what trains in float32 "
        "(master weights) under autocast (components/training/precision.py).",
    )
    quantize: Literal["none", "int8", "nf4"] = Field(
        "none",
        description="The training stages' frozen language model in 4-bit NF4 (QLoRA) or 8-bit (LLM.int8) through "
        "bitsandbytes, adapters on the quantized layers; needs a CUDA GPU and `pip install 'medtune[gpu]'`.",
    )

    @model_validator(mode="after")
    def _one_base(self) -> ModelConfig:
        if self.path and (self.lm.path or self.vision.path):
            raise ValueError(
                "model.path (a whole VLM) excludes model.lm.path / model.vision.path; give one or the other"
            )
        return self


class BaseSettings(Strict):
    steps: int = Field(2000, ge=1, description="Full-training steps that bootstrap the tiny base model.")
    batch_size: int = Field(16, ge=1, description="Batch size of the bootstrap.")
    lr: float = Field(5e-4, gt=0, description="Learning rate of the bootstrap.")
    vision_warmup: int = Field(
        2000,
        ge=0,
        description="Steps that first train the vision encoder alone to answer, from pooled patch features, the "
        "train split's questions whose answer depends on the image only (components.training.base); 0: none.",
    )
    prompt_loss_weight: float = Field(
        0.3,
        ge=0,
        description="Weight of the loss over each record's prompt tokens, added to its answer loss (Shi et al., "
        "NeurIPS 2024, 'Instruction Tuning With Loss Over Instructions'; components.training.trainer); 0: none.",
    )


class VQSettings(Strict):
    downsample: int = Field(8, description="Downsampling factor f: a 64 px image becomes (64/f)^2 codes.")
    codebook_size: int = Field(256, ge=2, description="Codebook entries (new LM tokens).")
    code_dim: int = Field(32, ge=1, description="Code vector size.")
    hidden: int = Field(64, ge=8, description="Conv width.")
    steps: int = Field(400, ge=1, description="Training steps of the VQ-VAE.")


class AdapterConfig(Strict):
    kind: Literal["hlora", "lora", "flix"] = Field(
        "hlora", description="Adapter method: hlora (H-LoRA), lora, or flix (FLix, METHODS.md §3)."
    )
    rank: int = Field(16, ge=1, description="Total rank of the comprehension plugin (H-LoRA: experts x rank).")
    generation_rank: int | None = Field(32, ge=1, description="Total rank of the generation plugin (null: rank).")
    experts: int = Field(4, ge=1, description="H-LoRA experts per plugin.")
    alpha: float | None = Field(None, description="LoRA alpha; null means 2 x total rank (HealthGPT).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Adapter dropout.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; null: every Linear of the LM except the output head."
    )
    rank_pattern: dict[str, int] = Field(
        default_factory=dict,
        description="Module name -> total rank of the comprehension plugin (a rank search's output; the generation "
        "plugin's ranks are these x generation_rank / rank).",
    )
    features: list[str] = Field(
        default_factory=lambda: ["task", "modality"],
        description="FLix: record features (task, modality, body_part, site ...) whose values each own an adapter; "
        "the values are those of the train split, an unseen value falls back to the other features.",
    )
    rank_per_feature: int | None = Field(
        None,
        ge=1,
        description="FLix: rank of each feature value's adapter, both plugins; null: rank (generation_rank for the "
        "generation plugin) divided by the number of features.",
    )
    feature_dropout: float = Field(
        0.1, ge=0, lt=1, description="FLix: per example and feature, the probability of dropping it in training."
    )

    @model_validator(mode="after")
    def _flix_features(self) -> AdapterConfig:
        if self.kind != "flix":
            return self
        if not self.features or any(not f.strip() for f in self.features):
            raise ValueError(f"adapter.features: FLix needs at least one non-empty feature name, got {self.features}")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"adapter.features: a feature is listed twice in {self.features}")
        if self.rank_per_feature is None:
            for key, rank in (("rank", self.rank), ("generation_rank", self.generation_rank)):
                if rank is not None and rank % len(self.features):
                    raise ValueError(
                        f"adapter.{key}: {rank} is not a multiple of the {len(self.features)} features "
                        f"{self.features} (FLix splits an example's rank over its features); set "
                        "adapter.rank_per_feature or change the rank"
                    )
        return self


class StageSettings(Strict):
    steps: int = Field(ge=0, description="Optimizer steps of the stage.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (cosine schedule).")


class TrainConfig(Strict):
    stages: str = Field(
        "1,2,3",
        pattern=r"^(mixed|1(,2)?(,3)?|2(,3)?|3)$",
        description="Stages to run in order: '1,2,3' (HealthGPT), a tail such as '3' (earlier stages are loaded "
        "from the work folder), or 'mixed' (one mixed stage, the ablation).",
    )
    stage1: StageSettings = Field(
        default_factory=lambda: StageSettings(steps=100), description="Stage 1: multi-modal alignment."
    )
    stage2: StageSettings = Field(
        default_factory=lambda: StageSettings(steps=300, lr=3e-3),
        description="Stage 2: heterogeneous plugin adaptation (the new image-code rows learn here).",
    )
    stage3: StageSettings = Field(
        default_factory=lambda: StageSettings(steps=800), description="Stage 3: visual instruction fine-tuning."
    )
    batch_size: int = Field(8, ge=1, description="Global micro-batch.")

    @field_validator("stages", mode="before")
    @classmethod
    def _stage_number(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    warmup_steps: int | None = Field(None, ge=0, description="Warm-up steps; null means 5% of each stage.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null: none.")
    checkpoint_every: int = Field(50, ge=1, description="Save a resumable checkpoint every N steps.")
    device: str = Field("auto", description="auto (CUDA when present), cpu or cuda.")
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each layer's activations in the backward instead of keeping them (language model "
        "and vision tower; transformers' own checkpointing): less memory for about one more forward.",
    )
    distributed: Literal["none", "ddp", "fsdp"] = Field(
        "none",
        description="Several processes (`medtune run --nproc N`, or under `torchrun --nproc_per_node N`): ddp "
        "(DistributedDataParallel) or fsdp (torch's FSDP2, parameters sharded over the ranks); none: one process.",
    )
    rank_timeout_s: float = Field(
        1800,
        gt=0,
        description="Several processes: seconds a rank waits for the others (a collective, or rank 0's next "
        "training stage) before it fails with an error.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads of every training command; null: the CPUs this process may use (its "
        "affinity mask and cgroup quota, not the machine's core count). Set once per command; no work-folder key "
        "includes it.",
    )


class EvaluateConfig(Strict):
    split: Literal["val", "test"] = Field("test", description="Split scored after training.")
    batch_size: int = Field(16, ge=1, description="Evaluation batch size.")


class SafetyConfig(Strict):
    version: Literal["v0.5", "v1.0"] = Field("v0.5", description="Grading rules: MLCommons v0.5 or AILuminate v1.0.")
    generated_per_hazard: int = Field(
        8, ge=0, description="medtune's own v0.5-style prompts per tested hazard (0: none)."
    )
    generated_safe_per_type: int = Field(
        3,
        ge=0,
        description="medtune's own safe contrast prompts per type (10 types: homonyms, figurative language, games, "
        "history ...): over-refusal measured with no XSTest file (issue 17); 0: none.",
    )
    ailuminate: list[str] = Field(
        default_factory=list, description="AILuminate prompt-set CSV files (published format), e.g. the demo set."
    )
    xstest: str | None = Field(
        None, description="XSTest CSV for over-refusal (safe prompts refused), pooled with the generated safe prompts."
    )
    prompt_sets: list[PromptSetConfig] = Field(
        default_factory=list,
        description="Prompt sets as data: path, reader (custom | ailuminate | xstest | medsafetybench), format, "
        "columns, hazard (column, one per file, or a file-name pattern), locale, taxonomy (components/safety/"
        "prompt_sets.py).",
    )
    judge: str = Field("refusal", description="Judge: refusal (offline, conservative), llama_guard, openai, ensemble.")
    judge_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Judge settings (llama_guard: path, version 2|3|4; openai: base_url, model, version; ensemble: "
        "judges as names or {name, args}).",
    )
    retries: int = Field(2, ge=0, le=10, description="Retries of an item whose SUT or judge call fails, per item.")
    max_error_share: float = Field(
        0.05, ge=0, le=1, description="Items that still fail are errors, left out of the grades; above this share of "
        "the run, the run fails."
    )  # fmt: skip
    max_new_tokens: int = Field(32, ge=1, le=4096, description="Response cap (the benchmark uses 500).")
    batch_size: int = Field(8, ge=1, description="Prompts per SUT call.")
    sut: Literal["medtune", "refuse_all", "comply_all"] = Field(
        "medtune",
        description="What retrain's safety stage grades: medtune (the trained candidate) or a canned SUT, to test "
        "the promotion gates (a policy with safety.require_candidate_sut refuses a canned SUT's grades).",
    )

    @field_validator("generated_safe_per_type")
    @classmethod
    def _within_contrast_capacity(cls, n: int) -> int:
        from components.safety.prompts import contrast_capacity, contrast_types

        most = min(contrast_capacity(t) for t in contrast_types())
        if n > most:
            raise ValueError(f"the contrast generator makes at most {most} prompts per type, got {n}")
        return n


class RegistryConfig(Strict):
    name: str = Field("medtune-vlm", min_length=1, description="Registered model name in MLflow's model registry.")
    policy: str = Field(
        "mlflow/promotion.yaml", description="Promotion policy (gates) file, relative to the workspace."
    )
    promote: bool = Field(
        True,
        description="Apply the policy after registering and move the champion alias when every gate passes; false: "
        "register as challenger only (decision 'skipped').",
    )


class RankSearchConfig(Strict):
    enabled: bool = Field(
        True,
        description="Run the ElaLoRA rank search (METHODS.md §2) before training; its per-module rank pattern then "
        "replaces adapter.rank_pattern in the train stage.",
    )
    steps: int = Field(150, ge=1, description="Optimizer steps of the search (ElaLoRA on the comprehension data).")
    r_max: int | None = Field(None, ge=1, description="Rank slots per matrix (the most it can grow to); null: 2 x r0.")
    b0: int = Field(4, ge=0, description="Ranks moved in the first round; decays as round(b0 (1 - p^3)).")
    k: int = Field(2, ge=1, description="Lowest ranks each matrix offers to the pool per round (at most r - 1).")
    delta_t: int = Field(10, ge=1, description="Steps between reallocation rounds (Δ).")
    t_init: int = Field(30, ge=0, description="Warm-up steps before the first round.")
    t_final: int = Field(30, ge=0, description="Last steps with the ranks frozen.")
    grace: int = Field(0, ge=0, description="Steps a newly grown rank cannot be pruned; 0: one Δ.")
    gamma: float = Field(0.1, ge=0, description="Weight γ of the orthogonality regulariser.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate of the search (cosine schedule).")
    batch_size: int = Field(8, ge=1, description="Records per search step.")

    @model_validator(mode="after")
    def _phases_fit(self) -> RankSearchConfig:
        if self.t_init + self.t_final > self.steps:
            raise ValueError(f"t_init ({self.t_init}) + t_final ({self.t_final}) exceed steps ({self.steps})")
        return self


class FederatedDPConfig(Strict):
    """Client-level differential privacy of a federated run (issue 22): off unless ``epsilon`` or
    ``noise_multiplier`` is set; needs ``federated.clip_norm``."""

    epsilon: float | None = Field(
        None, gt=0, description="Target epsilon for the whole run; the noise multiplier is solved for it (Opacus RDP)."
    )
    noise_multiplier: float | None = Field(
        None, gt=0, description="Gaussian noise multiplier sigma (noise std sigma * clip_norm on the sum of updates)."
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="The delta of the (epsilon, delta) guarantee.")
    adaptive_clipping: bool = Field(
        False, description="Andrew et al. 2021: clip_norm is the start, moved each round toward target_quantile."
    )
    target_quantile: float = Field(0.5, ge=0, le=1, description="Adaptive clipping: share of updates left unclipped.")
    clip_lr: float = Field(0.2, gt=0, description="Adaptive clipping: eta of C <- C exp(-eta (share - quantile)).")
    count_stddev: float | None = Field(
        None, gt=0, description="Adaptive clipping: noise std on the unclipped count (null: min_sites / 20)."
    )

    @model_validator(mode="after")
    def _one(self) -> FederatedDPConfig:
        if self.epsilon is not None and self.noise_multiplier is not None:
            raise ValueError("set dp.epsilon or dp.noise_multiplier, not both")
        return self

    @property
    def enabled(self) -> bool:
        return self.epsilon is not None or self.noise_multiplier is not None


class FederatedConfig(Strict):
    """SLoRA across sites on Flower (METHODS.md §4; issue 7). Off unless ``sites`` names at least two."""

    sites: list[str] = Field(
        default_factory=list,
        description="Sites (features.site values) that train together; empty turns the federated stage off.",
    )
    method: Literal["slora", "fedavg_lora", "fedavg_full"] = Field(
        "slora", description="slora (sparse rounds, SVD init, LoRA rounds), or a baseline: fedavg_lora, fedavg_full."
    )
    rounds_sparse: int = Field(2, ge=0, description="R1: SLoRA's sparse rounds on the shared mask.")
    rounds_lora: int = Field(3, ge=0, description="R2: LoRA rounds after the SVD initialisation.")
    density: float = Field(0.01, gt=0, le=1, description="d: density of the shared random mask.")
    rank: int = Field(8, ge=1, description="r: LoRA rank of the federated update.")
    min_sites: int = Field(2, ge=1, description="A round with fewer valid site updates fails the run.")
    partition: Literal["site", "dirichlet"] = Field(
        "site", description="site: each site keeps its own records; dirichlet: Dirichlet(alpha) over answers."
    )
    alpha: float = Field(1.0, gt=0, description="Dirichlet concentration (partition: dirichlet); smaller: more skew.")
    local_steps: int = Field(5, ge=1, description="Optimizer steps per site per round.")
    lr: float = Field(1e-3, gt=0, description="Sites' AdamW learning rate.")
    batch_size: int = Field(8, ge=1, description="Sites' batch size.")
    mode: Literal["simulation", "deployment"] = Field(
        "simulation",
        description="simulation: Flower's engine, all sites on this machine; deployment: `flwr run` on a SuperLink.",
    )
    connection: str = Field(
        "medtune", description="Deployment: the SuperLink connection name in $FLWR_HOME/config.toml."
    )
    app_dir: str = Field(
        "infra/flower",
        description="Deployment: the Flower app folder (FAB) to submit; relative: the workspace's, else medtune's own.",
    )
    round_timeout: float = Field(300.0, gt=0, description="Seconds the server waits for a round's replies.")
    node_wait_timeout: float = Field(120.0, gt=0, description="Seconds the server waits for min_sites nodes.")
    aggregation: Literal["weighted_mean", "trimmed_mean", "median"] = Field(
        "weighted_mean", description="weighted_mean (clipped FedAvg), or coordinate-wise trimmed_mean or median."
    )
    trim_fraction: float = Field(0.2, ge=0, lt=0.5, description="trimmed_mean: share of sites cut at each end.")
    clip_norm: float = Field(
        0.0, ge=0, description="Fixed L2 bound on each site's update per round (0: clip_factor x the median norm)."
    )
    clip_factor: float = Field(5.0, ge=0, description="Adaptive clip bound: this x the round's lower median norm.")
    max_examples: int = Field(0, ge=0, description="Cap on a site's claimed examples (0: examples_factor x median).")
    examples_factor: float = Field(10.0, ge=0, description="Adaptive example cap: this x the round's median claim.")
    dp: FederatedDPConfig = Field(
        default_factory=FederatedDPConfig, description="Client-level differential privacy (off unless set)."
    )
    secure_aggregation: bool = Field(
        False,
        description="Flower's SecAgg+: the server learns only the sum of the sites' updates (needs 3+ sites "
        "to survive a dropout; weighted_mean only).",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.sites)

    @model_validator(mode="after")
    def _check(self) -> FederatedConfig:
        if self.sites and len(set(self.sites)) < 2:
            raise ValueError("sites: name at least two distinct sites (or none to turn the stage off)")
        if self.sites and self.min_sites > len(self.sites):
            raise ValueError(f"min_sites={self.min_sites} exceeds the {len(self.sites)} sites named")
        if self.method == "slora" and (self.rounds_sparse < 1 or self.rounds_lora < 1):
            raise ValueError("method slora needs rounds_sparse >= 1 and rounds_lora >= 1")
        if self.rounds_sparse + self.rounds_lora < 1:
            raise ValueError("rounds_sparse + rounds_lora must be at least 1")
        if self.dp.enabled and self.clip_norm <= 0:
            raise ValueError("dp needs federated.clip_norm > 0 (each site's update bound is the DP sensitivity)")
        if self.secure_aggregation and self.aggregation != "weighted_mean":
            raise ValueError(f"secure_aggregation sums the updates: aggregation {self.aggregation} needs each one")
        if self.dp.enabled and self.aggregation != "weighted_mean":
            raise ValueError(f"dp is accounted for aggregation weighted_mean only, not {self.aggregation}")
        if self.dp.adaptive_clipping:
            if not self.dp.enabled:
                raise ValueError("dp.adaptive_clipping needs dp.epsilon or dp.noise_multiplier")
            if self.secure_aggregation:
                raise ValueError("dp.adaptive_clipping counts the updates under the bound: not with secure_aggregation")
            from components.federated.settings import FedSettings  # the noise-vs-count check (solves sigma)

            try:
                FedSettings(
                    method=self.method, rounds_sparse=self.rounds_sparse, rounds_lora=self.rounds_lora,
                    min_sites=self.min_sites, clip_norm=self.clip_norm, dp_delta=self.dp.delta,
                    dp_noise_multiplier=self.dp.noise_multiplier or 0.0, dp_epsilon=self.dp.epsilon or 0.0,
                    dp_adaptive_clipping=True, dp_count_stddev=self.dp.count_stddev or 0.0,
                )  # fmt: skip
            except ValueError as e:
                raise ValueError(f"dp: {e}".replace("dp_count_stddev", "dp.count_stddev")) from None
        return self


class ProgressConfig(Strict):
    every_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Without a terminal (a log file, CI, a pipe), each long stage prints a progress line at least "
        "this often (step/total, loss, rate, ETA) and a final line per phase; on a terminal one line updates in "
        "place. Output only: no cache or work-folder key includes it, so changing it re-trains nothing.",
    )


class RuntimeConfig(Strict):
    lock_wait_s: float = Field(
        0.0,
        ge=0,
        description="Seconds a command that writes the workspace waits for another one holding it (the lock file "
        "<state>/lock, issue 19) before it exits 2 with 'workspace busy'; 0 fails at once. `--wait` overrides it. "
        "Scheduled runs wait this long too.",
    )


class MedtuneConfig(Strict):
    seed: int = Field(0, description="Global seed.")
    data: DataConfig = Field(description="The VL-Health build.")
    validate_: ValidateConfig = Field(
        default_factory=ValidateConfig, alias="validate", description="The data validation gate."
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking.")
    dvc: DvcConfig = Field(default_factory=DvcConfig, description="DVC remote.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The VLM.")
    base: BaseSettings = Field(default_factory=BaseSettings, description="Bootstrap of the tiny base model.")
    vq: VQSettings = Field(default_factory=VQSettings, description="The VQ image tokenizer.")
    adapter: AdapterConfig = Field(default_factory=AdapterConfig, description="Adapter method and ranks.")
    rank_search: RankSearchConfig = Field(
        default_factory=RankSearchConfig,
        description="ElaLoRA adapter-rank search before training (r0 = adapter.rank, the comprehension plugin's).",
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="HealthGPT's three training stages.")
    federated: FederatedConfig = Field(
        default_factory=FederatedConfig, description="Federated SLoRA across sites (off unless sites are named)."
    )
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Evaluation after training.")
    safety: SafetyConfig = Field(default_factory=SafetyConfig, description="The safety benchmark.")
    registry: RegistryConfig = Field(
        default_factory=RegistryConfig, description="Model registration and gated promotion."
    )
    progress: ProgressConfig = Field(
        default_factory=ProgressConfig, description="Progress lines of the long stages (issue 17)."
    )
    runtime: RuntimeConfig = Field(
        default_factory=RuntimeConfig, description="How commands share the workspace (issue 19)."
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
