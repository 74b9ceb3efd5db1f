"""The unified VL-Health build: every configured source -> one folder of records and content-addressed images.

Steps, the same for every source: read samples (a bad one is quarantined or fails the build, per ``on_error``);
check each against the record contract (one ``<image>`` token per input image; a record has zero, one or several
input images, issue 16) and scan its question and answer for PHI; decode, normalise and PNG-encode every input
and target image once (a process pool when ``workers > 1``; the result is identical) and store it under
``images/<sha[:2]>/<sha>.png`` (exact duplicates share one file); merge records two sources publish alike
(same images, question, answer and target); split by group, where groups that share an image are split together;
write ``records.jsonl`` (sorted by id) and ``build_report.json``. Same inputs give byte-identical files, so DVC sees
no change. The build happens in a temporary sibling folder that replaces ``out_dir`` only on success; a failed
build leaves the previous dataset as it was. Unchanged inputs (config, source files, code, key) skip the work.

    report = build_dataset(cfg.data.sources, Path("data/vlhealth"), workspace=root, image_size=64,
                           image_mode="L", resize="pad", split_ratios=(0.8, 0.1, 0.1), split_seed=0,
                           on_error="quarantine", workers=2, deid_key=key, seed=0)
    records = load_records(Path("data/vlhealth"))
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from components.data.images import (
    IMAGE_MODES,
    RESIZE_POLICIES,
    ImageJob,
    prepare_job,
    prune_images,
    run_image_jobs,
    sha256_bytes,
)
from components.data.records import (
    GENERATION_KINDS,
    IMAGE_TOKEN,
    KINDS,
    MODALITIES,
    RECORDS_FILE,
    REPORT_FILE,
    SPLITS,
    TASKS,
    Record,
    record_image_shas,
    record_images,
)
from components.data.sources.base import DataError, SourceContext, SourceSample
from components.data.splits import check_ratios, official_splits, split_groups

Progress = Callable[[str, int, int | None], None]


@dataclass
class BuildReport:
    """What a build produced; ``build_report.json`` holds all of it except ``timing`` and ``skipped``, so the
    file stays byte-identical when nothing changed."""

    records: int = 0
    images: int = 0
    groups: int = 0
    per_source: dict[str, int] = field(default_factory=dict)
    per_modality: dict[str, int] = field(default_factory=dict)
    per_task: dict[str, int] = field(default_factory=dict)
    per_kind: dict[str, int] = field(default_factory=dict)
    per_split: dict[str, int] = field(default_factory=dict)
    groups_per_split: dict[str, int] = field(default_factory=dict)
    quarantined: list[dict[str, str]] = field(default_factory=list)
    duplicates_merged: int = 0
    duplicate_images: int = 0
    official_split_conflicts: int = 0
    inputs_stamp: str = ""
    records_sha256: str = ""
    timing: dict[str, float] = field(default_factory=dict)
    skipped: bool = False

    def to_json(self, *, volatile: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not volatile:
            data.pop("timing")
            data.pop("skipped")
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildReport:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class _Run:
    """State of one build: the policy, what was quarantined, progress."""

    on_error: str
    progress: Progress | None
    quarantined: list[dict[str, str]] = field(default_factory=list)

    def bad(self, source: str, key: str, reason: str) -> None:
        if self.on_error == "fail":
            raise DataError(f"source {source!r}: {key}: {reason}")
        self.quarantined.append({"source": source, "key": key, "reason": reason})

    def tick(self, stage: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)


def build_dataset(
    sources: Mapping[str, BaseModel],
    out_dir: Path,
    *,
    workspace: Path,
    image_size: int,
    image_mode: str,
    resize: str,
    split_ratios: tuple[float, float, float],
    split_seed: int,
    on_error: str,
    workers: int,
    deid_key: bytes,
    seed: int,
    progress: Progress | None = None,
    max_date_shift_days: int = 365,
    force: bool = False,
    safety_prompts: Sequence[Path] = (),
    min_records: int = 1,
    on_official_conflict: str = "drop",
    pseudonym_map: Path | None = None,
) -> BuildReport:
    """Build the dataset into ``out_dir`` atomically; return the report (see the module docstring).

    ``safety_prompts``: prompt-set files or folders (AILuminate / XSTest CSVs) that are evaluation data only: a
    sample whose question or answer matches one of their prompts, or one of medtune's own v0.5-style or safe
    contrast prompts (always included), is refused like any bad sample (issue 8: prompt sets never become training
    data).

    A build that yields fewer than ``min_records`` records fails (DataError) and keeps the previous dataset.
    ``on_official_conflict``: records whose image (same pixels) a source's official splits put in two splits are
    dropped (``drop``, quarantined with the reason) or kept where the source put them (``keep``; the gate's
    image-leakage check then reports them). ``pseudonym_map``: where readers keep the map from path pseudonyms
    back to file names (beside the key)."""
    import components.data.sources  # noqa: F401  (registers every reader)

    if on_error not in ("fail", "quarantine"):
        raise ValueError(f"on_error must be 'fail' or 'quarantine', got {on_error!r}")
    if on_official_conflict not in ("keep", "drop"):
        raise ValueError(f"on_official_conflict must be 'keep' or 'drop', got {on_official_conflict!r}")
    if image_mode not in IMAGE_MODES or resize not in RESIZE_POLICIES:
        raise ValueError(f"image mode must be one of {IMAGE_MODES} and resize one of {RESIZE_POLICIES}")
    check_ratios(split_ratios)
    started = time.perf_counter()
    out_dir, workspace = Path(out_dir).absolute(), Path(workspace)
    sources = {name: _with_deid_defaults(cfg, max_date_shift_days) for name, cfg in sources.items()}
    policy = {
        "size": image_size,
        "mode": image_mode,
        "resize": resize,
        "ratios": list(split_ratios),
        "split_seed": split_seed,
        "on_error": on_error,
        "seed": seed,
        "safety_prompts": [_file_digest(Path(p)) for p in safety_prompts],
        "min_records": min_records,
        "on_official_conflict": on_official_conflict,
    }
    stamp = inputs_stamp(sources, workspace, policy, deid_key)
    previous = None if force else stored_report(out_dir, stamp)
    if previous is not None:
        report = BuildReport.from_json(previous)
        report.skipped, report.timing = True, {"total_s": round(time.perf_counter() - started, 4)}
        return report
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        run = _Run(on_error, progress)
        guard = _safety_index(safety_prompts)
        report = _build(sources, tmp, workspace, policy, workers, deid_key, seed, run, guard, pseudonym_map)
        if report.records < min_records:
            raise DataError(_too_few(report, min_records, out_dir))
        report.inputs_stamp = stamp
        report.timing["total_s"] = round(time.perf_counter() - started, 4)
        text = json.dumps(report.to_json(volatile=False), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (tmp / REPORT_FILE).write_text(text, encoding="utf-8")
        swap_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _too_few(report: BuildReport, min_records: int, out_dir: Path) -> str:
    reasons = Counter(q["reason"].removeprefix(f"{q['key']}: ")[:120] for q in report.quarantined)
    top = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(3))
    kept = "the previous dataset was kept" if (out_dir / RECORDS_FILE).exists() else "nothing was written"
    return (
        f"the build produced {report.records} records, fewer than validate.min_records = {min_records} "
        f"({len(report.quarantined)} quarantined{': ' + top if top else ''}); {kept}"
    )


def _file_digest(path: Path) -> str:
    """Content hash of a prompt-set file or folder (part of the inputs stamp); a missing one is an error."""
    if not path.exists():
        raise DataError(f"safety prompt set {path} does not exist")
    files = sorted(p for p in path.rglob("*.csv")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _safety_index(paths: Sequence[Path]) -> set[str]:
    from components.safety.guard import generated_prompt_texts, safety_prompt_index

    return safety_prompt_index(paths, extra_texts=generated_prompt_texts())


def _with_deid_defaults(cfg: BaseModel, max_date_shift_days: int) -> BaseModel:
    if "max_date_shift_days" in type(cfg).model_fields and getattr(cfg, "max_date_shift_days", None) is None:
        return cfg.model_copy(update={"max_date_shift_days": max_date_shift_days})
    return cfg


def _build(
    sources: Mapping[str, BaseModel],
    tmp: Path,
    workspace: Path,
    policy: dict[str, Any],
    workers: int,
    deid_key: bytes,
    seed: int,
    run: _Run,
    guard: set[str] | None = None,
    pseudonym_map: Path | None = None,
) -> BuildReport:
    from components.data.sources.base import SOURCES, Quarantined
    from components.safety.guard import matches_safety_prompt

    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    samples: list[tuple[str, SourceSample]] = []
    for name, cfg in sources.items():
        kind = getattr(cfg, "kind", None)
        if kind not in SOURCES:
            raise DataError(f"source {name!r}: unknown kind {kind!r}; known kinds: {', '.join(sorted(SOURCES))}")
        ctx = SourceContext(name=name, root=workspace, deid_key=deid_key, seed=seed, pseudonym_map=pseudonym_map)
        seen: set[str] = set()
        n = 0
        for n, item in enumerate(SOURCES[kind].reader(cfg, ctx), 1):
            if isinstance(item, Quarantined):
                run.bad(name, item.key, item.reason)
            else:
                problem = _check(item, seen)
                if not problem and guard and any(matches_safety_prompt(t, guard) for t in (item.question, item.answer)):
                    problem = "text matches a safety benchmark prompt (prompt sets are evaluation data only)"
                if problem:
                    run.bad(name, f"record {name}/{item.uid}", problem)
                else:
                    samples.append((name, item))
                seen.add(item.uid)
            if n % 200 == 0:
                run.tick(f"read {name}", n, None)
        if n == 0:
            raise DataError(f"source {name!r} ({kind}) yielded no samples: check its path and settings")
        run.tick(f"read {name}", len(seen), len(seen))
    timing["read_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    jobs: list[ImageJob] = []
    job_of: dict[Any, int] = {}
    memo: dict[int, Any] = {}
    refs: list[tuple[list[int], int | None]] = []
    for _, s in samples:
        target = prepare_job(s.target_image, jobs, job_of, memo) if s.target_image is not None else None
        refs.append(([prepare_job(image, jobs, job_of, memo) for image in s.images], target))
    size, mode, resize = policy["size"], policy["mode"], policy["resize"]
    results = run_image_jobs(jobs, tmp / "images", size=size, mode=mode, resize=resize, workers=workers, tick=run.tick)
    timing["images_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    records: list[Record] = []
    for (name, s), (imgs, target) in zip(samples, refs, strict=True):
        failed = _image_failure(imgs, target, results)
        if failed:
            run.bad(name, f"record {name}/{s.uid}", failed)
            continue
        try:
            shas = [results[j][0] for j in imgs]
            records.append(_record(name, s, shas, results[target][0] if target is not None else None))
        except ValidationError as e:
            run.bad(name, f"record {name}/{s.uid}", f"does not fit the record contract: {e.errors()[0]['msg']}")
    records, merged = _dedupe(records)
    official = official_splits((s.group, s.split, f"{name}/{s.uid}") for name, s in samples)
    group_images: dict[str, set[str]] = {}
    for r in records:
        group_images.setdefault(r.group, set()).update(x for x in (*record_image_shas(r), r.target_image_sha256) if x)
    weights = Counter(r.group for r in records)
    split_of, conflicts = split_groups(group_images, weights, official, tuple(policy["ratios"]), policy["split_seed"])
    for r in records:
        r.split = split_of[r.group]  # type: ignore[assignment]
    if conflicts and policy["on_official_conflict"] == "drop":
        records = _drop_split_conflicts(records, run)
        weights = Counter(r.group for r in records)
    timing["records_s"] = time.perf_counter() - t0

    lines = [json.dumps(r.to_json(), ensure_ascii=False, sort_keys=True, separators=(",", ":")) for r in records]
    payload = ("\n".join(lines) + "\n" if lines else "").encode("utf-8")
    (tmp / RECORDS_FILE).write_bytes(payload)
    run.tick("write records", len(records), len(records))
    stored = {path for r in records for path in record_images(r)} | {r.target_image for r in records if r.target_image}
    prune_images(tmp / "images", stored)
    return BuildReport(
        records=len(records),
        images=len(stored),
        groups=len(weights),
        per_source=_count(r.source for r in records),
        per_modality=_count(r.modality for r in records),
        per_task=_count(r.task for r in records),
        per_kind=_count(r.kind for r in records),
        per_split={split: sum(1 for r in records if r.split == split) for split in SPLITS},
        groups_per_split={split: sum(1 for g in weights if split_of[g] == split) for split in SPLITS},
        quarantined=sorted(run.quarantined, key=lambda q: (q["source"], q["key"], q["reason"])),
        duplicates_merged=merged,
        duplicate_images=sum(1 for sha, _ in results if sha) - len({sha for sha, _ in results if sha}),
        official_split_conflicts=conflicts,
        records_sha256=sha256_bytes(payload),
        timing={k: round(v, 4) for k, v in timing.items()},
    )


def _drop_split_conflicts(records: list[Record], run: _Run) -> list[Record]:
    """Drop the records whose image (by content hash) also lies in another split: official splits that disagree
    (BreastMNIST's byte-identical train-00115 and test-00076). Each is quarantined with the reason."""
    splits_of: dict[str, set[str]] = {}
    for r in records:
        for sha in (*record_image_shas(r), r.target_image_sha256):
            if sha:
                splits_of.setdefault(sha, set()).add(r.split)
    kept = []
    for r in records:
        shared = [sha for sha in (*record_image_shas(r), r.target_image_sha256) if sha and len(splits_of[sha]) > 1]
        if not shared:
            kept.append(r)
            continue
        others = sorted(splits_of[shared[0]] - {r.split})
        run.quarantined.append(
            {
                "source": r.source,
                "key": f"record {r.id}",
                "reason": f"image {shared[0][:12]} is also in the official {', '.join(others)} split; dropped "
                "(data.on_official_conflict is 'drop')",
            }
        )
    return kept


def _check(s: SourceSample, seen: set[str]) -> str | None:
    """Why a sample cannot become a record (contract, duplicate id, PHI), or None."""
    from components.data.phi import find_phi

    if not s.uid or s.uid in seen:
        return f"duplicate or empty id {s.uid!r} within the source"
    checks = (("modality", s.modality, MODALITIES), ("task", s.task, TASKS), ("kind", s.kind, KINDS))
    for what, value, allowed in checks:
        if value not in allowed:
            return f"{what} {value!r} is not one of {', '.join(allowed)}"
    generation = s.kind in GENERATION_KINDS
    if generation != (s.task == "generation") or generation != (s.target_image is not None):
        return f"kind {s.kind!r}, task {s.task!r} and target image ({s.target_image is not None}) do not agree"
    if not s.question.replace(IMAGE_TOKEN, "").strip() or not s.answer.strip():
        return "empty question or answer"
    problem = _image_token_problem(s)
    if problem:
        return problem
    if not s.group:
        return "empty group"
    # the same text fields the validation gate scans (components/validation/frame.py), so a record the builder
    # writes never fails the gate's PHI expectation
    fields = [("question", s.question), ("answer", s.answer), ("body_part", s.body_part)]
    for section, values in (("meta", s.meta), ("features", s.features)):
        fields += [(f"{section}.{k}", v) for k, v in values.items() if isinstance(v, str)]
    hits = [f"{name}: {', '.join(found)}" for name, text in fields if (found := find_phi(text))]
    if hits:
        return f"PHI pattern in {'; '.join(hits)}; not written"
    return None


def _image_token_problem(s: SourceSample) -> str | None:
    """Why the sample's images and ``<image>`` tokens do not fit together (issue 16), or None.

    One image (a :class:`SourceImage`): any tokens in the question are dropped and one is put in front, as
    always. A list: the question holds one token per image. No image: no token. A generation sample needs an
    input image unless it is ``text_to_image``; an answer never holds a token (gpt turns mark no image)."""
    count, n = s.question.count(IMAGE_TOKEN), len(s.images)
    if isinstance(s.image, list) and count != n:
        return f"field question: {count} '{IMAGE_TOKEN}' token(s) for {n} images in field image (one per image)"
    if s.image is None and count:
        return f"field question: {count} '{IMAGE_TOKEN}' token(s) but the sample has no image (text-only)"
    if IMAGE_TOKEN in s.answer:
        return f"field answer holds '{IMAGE_TOKEN}' (only the question marks images)"
    if s.task == "generation" and s.kind != "text_to_image" and not n:
        return f"field image: a {s.kind!r} generation sample needs at least one input image"
    return None


def _image_failure(imgs: list[int], target: int | None, results: list[tuple[str, str]]) -> str:
    """The first image of a record that failed to process, named by its place in the record ('' if none)."""
    for i, j in enumerate(imgs):
        if results[j][1]:
            return results[j][1] if len(imgs) == 1 else f"field image[{i}] ({i + 1} of {len(imgs)}): {results[j][1]}"
    return results[target][1] if target is not None else ""


def _record(source: str, s: SourceSample, image_shas: list[str], target_sha: str | None) -> Record:
    paths = [f"images/{sha[:2]}/{sha}.png" for sha in image_shas]
    image: str | list[str] | None
    image_sha: str | list[str] | None
    if len(paths) == 1:  # one image: a string, the token in front (LLaVA's layout; byte-identical to before)
        question = f"{IMAGE_TOKEN}\n" + s.question.replace(IMAGE_TOKEN, "").strip()
        image, image_sha = paths[0], image_shas[0]
    else:  # several (tokens where they are, checked by _check) or none
        question = s.question.strip()
        image, image_sha = (paths, list(image_shas)) if paths else (None, None)
    features = {"task": s.task, "modality": s.modality, **{k: str(v) for k, v in s.features.items()}}
    meta = dict(s.meta)
    if s.split is not None:  # the source's official split: the gate leaves these out of the ratio check
        meta["official_split"] = s.split
    return Record.model_validate(
        {
            "id": f"{source}/{s.uid}",
            "source": source,
            "license": s.license,
            "image": image,
            "image_sha256": image_sha,
            "modality": s.modality,
            "body_part": s.body_part.lower() or "unknown",
            "task": s.task,
            "kind": s.kind,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": s.answer.strip()}],
            "target_image": f"images/{target_sha[:2]}/{target_sha}.png" if target_sha else None,
            "target_image_sha256": target_sha,
            "group": s.group,
            "split": "train",
            "features": features,
            "meta": meta,
        }
    )


def _dedupe(records: list[Record]) -> tuple[list[Record], int]:
    """Sort by id; merge records that two *different* sources publish alike (same image, question, answer and
    target), keeping the first by id.

    Within one source, rows the publisher gave distinct ids stay, even when their text repeats (VQA-RAD has four
    such "paraphrase" pairs whose paraphrase equals the original); merging them would silently change the
    published counts (2,248 QA pairs).
    """
    kept: dict[tuple[tuple[str, ...], str, str, str | None], Record] = {}
    out: list[Record] = []
    for r in sorted(records, key=lambda r: r.id):
        key = (tuple(record_image_shas(r)), r.question, r.answer, r.target_image_sha256)
        first = kept.setdefault(key, r)
        if first is r or first.source == r.source:
            out.append(r)
    return out, len(records) - len(out)


def _count(values: Iterable[str | None]) -> dict[str, int]:
    return dict(sorted(Counter(v for v in values if v is not None).items()))


def swap_folder(tmp: Path, out_dir: Path) -> None:
    """Move a finished folder (a build, an ingest) into place: old away, new in, old deleted (rolled back if the move fails)."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except BaseException:
        if old is not None:
            old.rename(out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale(out_dir: Path) -> None:
    """Delete temporary folders that builds killed mid-way left behind (their process no longer runs)."""
    for path in out_dir.parent.glob(f".{out_dir.name}.*-*-*"):
        parts = path.name.rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not (".tmp" in parts[0] or ".old" in parts[0]):
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by someone else


def load_records(path: Path) -> list[Record]:
    """Records of a built dataset (``path`` is the dataset folder or its records.jsonl); errors name the line."""
    path = Path(path)
    file = path / RECORDS_FILE if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"no records file at {file}; build the dataset first (medtune data build)")
    out = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Record.model_validate_json(line))
        except ValidationError as e:
            first = e.errors()[0]
            raise DataError(f"{file}:{n}: not a valid record ({first['loc']}: {first['msg']})") from None
    return out


# --- the inputs stamp: a no-op rebuild is skipped ------------------------------------------------------------


def inputs_stamp(sources: Mapping[str, BaseModel], workspace: Path, policy: Mapping[str, Any], key: bytes) -> str:
    """SHA-256 over everything a build depends on: source configs and the files they name, the image and
    split policy, this package's code, the decoding libraries' versions, and a fingerprint of the key."""
    doc = {
        "policy": dict(policy),
        "sources": {n: cfg.model_dump(mode="json") for n, cfg in sources.items()},
        "files": {n: _config_files_hash(cfg.model_dump(mode="json"), workspace) for n, cfg in sources.items()},
        "key": hmac.new(key, b"medtune-build-stamp", hashlib.sha256).hexdigest()[:16],
        "code": _tree_hash(Path(__file__).parent, "*.py"),
        "versions": _versions("numpy", "pillow", "pydicom", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg"),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def external_inputs_hash(sources: Mapping[str, BaseModel], workspace: Path, tracked: Path) -> str:
    """Content hash of the files source configs name outside ``tracked`` (the DVC-tracked raw tree): DVC does
    not see them, so ``medtune`` puts this hash in the build stage's params and an edit re-runs the build."""
    found: dict[str, dict[str, str]] = {}
    root = Path(tracked).resolve()
    for name, cfg in sources.items():
        files = _config_files_hash(cfg.model_dump(mode="json"), workspace)
        outside = {}
        for value, digest in files.items():
            path = Path(value).expanduser()
            target = (path if path.is_absolute() else workspace / path).resolve()
            if not target.is_relative_to(root):
                outside[value] = digest
        if outside:
            found[name] = outside
    return hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()[:16]


def stored_report(out_dir: Path, stamp: str) -> dict[str, Any] | None:
    """The report of the dataset in ``out_dir`` when it was built from the same inputs and is intact."""
    try:
        report = json.loads((out_dir / REPORT_FILE).read_text(encoding="utf-8"))
        payload = (out_dir / RECORDS_FILE).read_bytes()
    except (OSError, ValueError):
        return None
    if report.get("inputs_stamp") != stamp or report.get("records_sha256") != sha256_bytes(payload):
        return None
    if sum(1 for _ in (out_dir / "images").glob("*/*.png")) != report.get("images"):
        return None
    return dict(report)


def _config_files_hash(value: Any, workspace: Path) -> dict[str, str]:
    """Content hashes of the files and folders a source config names: string values that are existing paths,
    relative to the workspace, absolute, or outside it (``../shared/data/vqa_rad``), so that an edit anywhere
    rebuilds. Hashes are cached by (path, size, mtime, inode) in memory for the process."""
    found: dict[str, str] = {}
    if isinstance(value, dict):
        for v in value.values():
            found.update(_config_files_hash(v, workspace))
    elif isinstance(value, list):
        for v in value:
            found.update(_config_files_hash(v, workspace))
    elif isinstance(value, str) and value and "\n" not in value and len(value) < 4096:
        path = Path(value).expanduser()
        target = path if path.is_absolute() else workspace / path
        try:
            if target.is_file():
                found[value] = _file_hash(target)
            elif target.is_dir() and target.resolve() != Path(workspace).resolve():
                found[value] = _tree_hash(target, "*")
        except OSError as e:
            raise DataError(f"source file {value}: cannot be read ({e.strerror})") from None
    return found


_HASHES: dict[tuple[str, int, int, int], str] = {}


def _file_hash(path: Path) -> str:
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo in _HASHES:
        return _HASHES[memo]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    _HASHES[memo] = h.hexdigest()
    return _HASHES[memo]


def _tree_hash(folder: Path, pattern: str) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts):
        h.update(f"{path.relative_to(folder).as_posix()}\0{_file_hash(path)}\n".encode())
    return h.hexdigest()


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out
