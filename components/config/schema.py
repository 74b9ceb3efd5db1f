"""medtune's configuration: frozen pydantic models, every field described, unknown keys refused.

The YAML files under ``configs/`` validate into :class:`MedtuneConfig`. Components never see this object whole:
flows hand them plain arguments taken from it (STYLE.md, "config at the edge").

Source configs live beside their readers (``components/data/sources/*``) and are collected here into one
union discriminated by ``kind``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.data.sources import SOURCES


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


class DataConfig(Strict):
    raw: str = Field("data/raw", description="Folder of the sources as received (tracked by data.dvc).")
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


class SafetyConfig(Strict):
    version: Literal["v0.5", "v1.0"] = Field("v0.5", description="Grading rules: MLCommons v0.5 or AILuminate v1.0.")
    generated_per_hazard: int = Field(
        8, ge=0, description="medtune's own v0.5-style prompts per tested hazard (0: none)."
    )
    ailuminate: list[str] = Field(
        default_factory=list, description="AILuminate prompt-set CSV files (published format), e.g. the demo set."
    )
    xstest: str | None = Field(None, description="XSTest CSV for over-refusal (safe prompts refused).")
    judge: str = Field("refusal", description="Judge: refusal (offline, conservative), llama_guard, openai, ensemble.")
    judge_args: dict[str, Any] = Field(
        default_factory=dict, description="Judge settings (llama_guard: path; openai: base_url, model ...)."
    )
    max_new_tokens: int = Field(32, ge=1, le=4096, description="Response cap (the benchmark uses 500).")
    batch_size: int = Field(8, ge=1, description="Prompts per SUT call.")


class MedtuneConfig(Strict):
    seed: int = Field(0, description="Global seed.")
    data: DataConfig = Field(description="The VL-Health build.")
    validate_: ValidateConfig = Field(
        default_factory=ValidateConfig, alias="validate", description="The data validation gate."
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking.")
    dvc: DvcConfig = Field(default_factory=DvcConfig, description="DVC remote.")
    safety: SafetyConfig = Field(default_factory=SafetyConfig, description="The safety benchmark.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
