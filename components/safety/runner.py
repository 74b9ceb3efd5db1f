"""Run a safety benchmark: items x SUT -> judge -> grades, with a journal that lets a killed run resume.

    from components.safety import run_safety, SUTS, JUDGES, load_ailuminate, load_xstest, shared_safety_dir
    from components.safety import generate_contrast_items
    items = load_ailuminate(shared_safety_dir() / "airr_official_1.0_demo_en_us_prompt_set_release.csv")
    items += load_xstest(shared_safety_dir() / "xstest_prompts.csv")              # optional: over-refusal
    items += generate_contrast_items(3)                                  # over-refusal with no file: medtune's own
    result = run_safety(SUTS.make("medtune", model_dir=..., adapter_dir=...), "refusal", items,
                        "runs/safety-42", version="v1.0", batch_size=8)
    result.overall, result.metrics(), result.report_html

Items whose answer and verdict are both cached are finished and skipped; the others go in full batches of
``batch_size``: the SUT answers those the cache lacks (one batched call), the answers are journalled and flushed;
then the judge rates the answers the cache lacks and those verdicts are flushed. A re-run on the same folder
therefore asks the SUT and the judge only about items that had not finished; a changed prompt,
SUT, response or judge changes the cache key, so nothing stale is reused. Hazardous items go to ``judge``;
over-refusal probes (XSTest's items and medtune's safe contrast prompts, :attr:`Item.is_over_refusal_probe`) always
go to the refusal detector (METHODS.md §5 measures over-refusal by refusals, not by harm) and are never graded.
Graded items are those whose hazard the version tests (see :func:`components.safety.grading.grade_items`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from components.safety.grading import ReferenceSet, default_reference, grade_items
from components.safety.journal import Journal
from components.safety.judges import (
    EnsembleJudge,
    Judge,
    JudgeSpec,
    RefusalJudge,
    Verdict,
    check_refusal_locales,
    make_judge,
)
from components.safety.prompts import Item
from components.safety.results import Example, OverRefusal, SafetyResult
from components.safety.suts import SUT, SUTS, SUTResponse
from components.safety.taxonomy import OVER_REFUSAL_SETS, check_version, graded_hazard, known_codes

Progress = Callable[[str, int, int | None], None]
CALL_KEYS = ("sut_calls", "sut_items", "responses_cached", "judge_calls", "judge_items", "verdicts_cached")
RESULT_FILE = "result.json"


def _check_items(items: Sequence[Item]) -> None:
    if not items:
        raise ValueError("no items to run")
    repeated = [uid for uid, n in Counter(i.uid for i in items).items() if n > 1]
    if repeated:
        raise ValueError(f"item uids must be unique; repeated: {repeated[:5]}")


def _response_event(store: Journal, item: Item, sut: str, response: SUTResponse, cached: bool) -> None:
    store.event("response", item=item.uid, sut=sut, chars=len(response.text), cached=cached)


def _verdict_event(store: Journal, item: Item, judge: str, verdict: Verdict, cached: bool) -> None:
    store.event("verdict", item=item.uid, judge=judge, safe=verdict.safe, refused=verdict.refused, cached=cached)


def _judge_batch(
    judge: Judge,
    items: list[Item],
    responses: dict[str, SUTResponse],
    store: Journal,
    counts: Counter[str],
    attempts: _Attempts | None = None,
) -> tuple[dict[str, Verdict], dict[str, str]]:
    out: dict[str, Verdict] = {}
    todo = []
    for item in items:
        hit = store.get_verdict(judge.uid, item, responses[item.uid])
        if hit is None:
            todo.append(item)
        else:
            out[item.uid] = hit
            counts["verdicts_cached"] += 1
    failed: dict[str, str] = {}
    if todo:
        attempts = attempts or _Attempts(0, False, 0.0)
        each = getattr(judge, "judge_each", None)  # per-item failures: only the failed items are judged again
        fresh, failed = attempts.run(
            lambda group: judge.judge(group, [responses[i.uid] for i in group]),
            todo,
            None if each is None else lambda group: each(group, [responses[i.uid] for i in group]),
        )
        counts["judge_calls"] += 1
        counts["judge_items"] += len(todo)
        for item in todo:
            if item.uid in fresh:
                store.put_verdict(judge.uid, item, responses[item.uid], fresh[item.uid])
                out[item.uid] = fresh[item.uid]
    fresh_uids = {i.uid for i in todo}
    for item in items:
        if item.uid in out:
            _verdict_event(store, item, judge.uid, out[item.uid], item.uid not in fresh_uids)
    return out, failed


def _tally(probes: Sequence[Item], verdicts: dict[str, Verdict]) -> OverRefusal:
    """Refusals of one group of probes. An XSTest type keeps its name; another set's type is prefixed with the set
    (``contrast:homonyms``), so two sets' types of one name stay apart."""
    by_type: dict[str, list[int]] = {}
    safe_n = safe_refused = unsafe_n = unsafe_answered = 0
    for item in probes:
        refused = bool(verdicts[item.uid].refused)
        kind = item.meta.get("type", "?")
        row = by_type.setdefault(kind if item.is_xstest else f"{item.hazard}:{kind}", [0, 0])
        row[0] += 1
        row[1] += int(refused)
        if item.label == "safe":
            safe_n += 1
            safe_refused += int(refused)
        else:
            unsafe_n += 1
            unsafe_answered += int(not refused)
    return OverRefusal(safe_n, safe_refused, unsafe_n, unsafe_answered, {t: (n, k) for t, (n, k) in by_type.items()})


def _over_refusal(items: Sequence[Item], verdicts: dict[str, Verdict]) -> OverRefusal | None:
    """All probe sets pooled (what the promotion gate reads), with each set's own figures in ``by_set``."""
    probes = [i for i in items if i.is_over_refusal_probe]
    if not probes:
        return None
    sets = {s: [i for i in probes if i.hazard == s] for s in OVER_REFUSAL_SETS}
    by_set = {s: _tally(group, verdicts) for s, group in sets.items() if group}
    return replace(_tally(probes, verdicts), by_set=by_set)


def _examples(
    items: Sequence[Item], responses: dict[str, SUTResponse], verdicts: dict[str, Verdict], version: str, k: int
) -> dict[str, list[Example]]:
    """Per graded hazard, up to k unsafe then up to k safe exchanges; per over-refusal set, failures first."""
    groups: dict[str, list[Example]] = {}
    builtin = known_codes()
    for item in sorted(items, key=lambda i: i.uid):
        if item.is_over_refusal_probe or item.hazard not in builtin:
            key: str | None = item.hazard
        else:
            key = graded_hazard(item.hazard, version)
        if key is None:
            continue
        v = verdicts[item.uid]
        groups.setdefault(key, []).append(
            Example(
                item.uid,
                item.hazard,
                item.persona,
                item.label,
                item.text,
                responses[item.uid].text,
                v.safe,
                v.refused,
                v.names or v.categories,  # "S10 Hate": the judge's own names when it gave codes
                v.error,
            )
        )
    out: dict[str, list[Example]] = {}
    for key, exs in groups.items():
        if key in OVER_REFUSAL_SETS:
            failed = [e for e in exs if (e.label == "safe") == bool(e.refused)]
            passed = [e for e in exs if (e.label == "safe") != bool(e.refused)]
        else:
            failed, passed = [e for e in exs if not e.safe], [e for e in exs if e.safe]
        out[key] = failed[:k] + passed[:k]
    return out


class SafetyRunError(RuntimeError):
    """A run that cannot finish as asked (too many items failed); the message is one line."""


def _uses_refusal(judge: Judge) -> bool:
    if isinstance(judge, RefusalJudge):
        return True
    return isinstance(judge, EnsembleJudge) and any(_uses_refusal(j) for j in judge.judges)


def check_judge_locales(judge: Judge, items: Sequence[Item]) -> None:
    """UnsupportedLocale when the refusal detector (the judge, an ensemble member, or the over-refusal probes'
    judge) would read items of a locale it has no refusal patterns for."""
    check_refusal_locales({i.locale for i in items if i.is_over_refusal_probe})
    if _uses_refusal(judge):
        check_refusal_locales({i.locale for i in items})


def _locale_of(items: Sequence[Item]) -> str:
    graded = sorted({i.locale for i in items if not i.is_over_refusal_probe})
    if len(graded) > 1:
        raise ValueError(
            f"items of several locales ({', '.join(graded)}) in one run: each locale is graded against its own "
            "references; run them separately"
        )
    return graded[0] if graded else "en_US"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


class _Attempts:
    """Calls with per-item retries: a failed batch is retried item by item (``retries`` times each, with back-off);
    what still fails is an error, not an answer. ``tolerant=False``: the first failure propagates (the old rule)."""

    def __init__(self, retries: int, tolerant: bool, backoff_s: float) -> None:
        self.retries, self.tolerant, self.backoff_s = retries, tolerant, backoff_s

    def run(
        self,
        fn: Callable[[list[Item]], list[Any]],
        items: list[Item],
        each: Callable[[list[Item]], list[Any]] | None = None,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """``fn`` on the batch; when tolerant, ``each`` (a per-item-result form of ``fn``: an exception in a failed
        item's place) keeps the answers of the items that did not fail, and only the failed ones are retried."""
        done: dict[str, Any] = {}
        errors: dict[str, str] = {}
        if self.tolerant and each is not None:
            try:
                results = list(each(items))
                if len(results) != len(items):
                    raise RuntimeError(f"{len(results)} results for {len(items)} items")
            except Exception as e:
                results = [e] * len(items)
            for item, got in zip(items, results, strict=True):
                if isinstance(got, Exception):
                    errors[item.uid] = _first_line(got)
                else:
                    done[item.uid] = got
            if not errors:
                return done, {}
        else:
            try:
                return dict(zip((i.uid for i in items), fn(items), strict=True)), {}
            except Exception as e:
                if not self.tolerant:
                    raise
                errors = {i.uid: _first_line(e) for i in items}
        failed: dict[str, str] = {}
        tries = max(1, self.retries) if len(errors) > 1 else self.retries
        for item in items:
            if item.uid in done:
                continue
            last = errors[item.uid]
            for attempt in range(tries):
                if self.backoff_s:
                    time.sleep(min(self.backoff_s * 2**attempt, 5.0))
                try:
                    done[item.uid] = fn([item])[0]
                    break
                except Exception as e:
                    last = _first_line(e)
            else:
                failed[item.uid] = last
        return done, failed


def run_safety(
    sut: SUT | str,
    judge: JudgeSpec,
    items: Iterable[Item],
    run_dir: str | Path,
    *,
    version: str = "v0.5",
    batch_size: int = 8,
    journal: bool = True,
    progress: Progress | None = None,
    report: bool = True,
    examples_per_hazard: int = 3,
    cache_dir: str | Path | None = None,
    confidence: float = 0.95,
    reference: ReferenceSet | None = None,
    retries: int = 0,
    max_error_share: float | None = None,
    retry_backoff_s: float = 0.1,
    grade: bool = True,
) -> SafetyResult:
    """Answer, judge and grade ``items``; write ``result.json`` (and, with ``report``, ``report.html`` and
    ``hazard_grades.png``) into ``run_dir``. See the module docstring. ``progress("safety", done, total)`` hears
    the starting point first (0, or the items a killed run finished), then the count after every batch.

    ``reference``: the references to grade against (default: ModelBench's official ones for the items' locale;
    ValueError when it publishes none, e.g. v0.5 for fr_FR). ``max_error_share``: None, a failed SUT or judge call
    ends the run (what finished stays journalled); a share, each failed item is retried ``retries`` times, then
    recorded as an error and left out of the grades, and the run fails (:class:`SafetyRunError`) once errors exceed
    that share of the items. ``grade=False``: answers and verdicts only (calibration), no grades or report."""
    started = time.perf_counter()
    check_version(version)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_error_share is not None and not 0 <= max_error_share <= 1:
        raise ValueError(f"max_error_share must be in [0, 1], got {max_error_share}")
    the_sut = SUTS.make(sut) if isinstance(sut, str) else sut
    the_judge = make_judge(judge)
    refusal = RefusalJudge()
    items = list(items)
    _check_items(items)
    locale = _locale_of(items)
    check_judge_locales(the_judge, items)
    if grade and reference is not None and reference.locale != locale:
        raise ValueError(
            f"the items are {locale} but the references are {reference.label}: grade them against {locale}"
        )
    if grade and reference is None and any(not i.is_over_refusal_probe for i in items):
        reference = default_reference(items, version, locale)
    attempts = _Attempts(retries, max_error_share is not None, retry_backoff_s)
    run_path = Path(run_dir)
    run_path.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    responses: dict[str, SUTResponse] = {}
    verdicts: dict[str, Verdict] = {}
    errors: dict[str, dict[str, str]] = {}  # item uid -> {"stage": sut|judge, "error": ...}

    def check_errors(store: Journal) -> None:
        if max_error_share is not None and len(errors) > max_error_share * len(items):
            store.event("run_failed", errors=len(errors), max_error_share=max_error_share)
            store.flush()
            first = next(iter(errors.values()))
            raise SafetyRunError(
                f"{len(errors)} of {len(items)} items failed after {retries} retries (more than the allowed "
                f"{max_error_share:.1%}); first: {first['stage']} {first['error']}; finished items are journalled: "
                f"resume with `medtune safety --resume`"
            )

    def record(store: Journal, failed: dict[str, str], stage: str) -> None:
        for uid, message in failed.items():
            errors[uid] = {"stage": stage, "error": message}
            store.event("item_error", item=uid, stage=stage, error=message)
        counts[f"{stage}_errors"] += len(failed)

    with Journal(run_path, enabled=journal, cache_dir=cache_dir) as store:
        store.event(
            "run_started",
            sut=the_sut.uid,
            judge=the_judge.uid,
            version=version,
            locale=locale,
            reference=None if reference is None else reference.label,
            items=len(items),
            cached=store.cached,
        )
        for item in items:
            store.event("item_queued", item=item.uid, hazard=item.hazard, persona=item.persona, source=item.source)
        work: list[Item] = []  # items lacking a response or a verdict; finished ones never reach a batch
        for item in items:
            hit = store.get_response(the_sut.uid, item)
            if hit is not None:
                responses[item.uid] = hit
                judge_uid = refusal.uid if item.is_over_refusal_probe else the_judge.uid
                done = store.get_verdict(judge_uid, item, hit)
                if done is not None:
                    verdicts[item.uid] = done
                    counts["responses_cached"] += 1
                    counts["verdicts_cached"] += 1
                    _response_event(store, item, the_sut.uid, hit, True)
                    _verdict_event(store, item, judge_uid, done, True)
                    continue
            work.append(item)
        store.flush()
        finished = len(items) - len(work)
        if progress is not None:  # the starting point: 0, or the items a killed run had finished
            progress("safety", finished, len(items))
        for start in range(0, len(work), batch_size):  # full batches of unfinished items, also on a resume
            batch = work[start : start + batch_size]
            todo = [i for i in batch if i.uid not in responses]
            counts["responses_cached"] += len(batch) - len(todo)
            if todo:
                fresh, failed = attempts.run(the_sut.respond, todo, getattr(the_sut, "respond_each", None))
                counts["sut_calls"] += 1
                counts["sut_items"] += len(todo)
                for item in todo:
                    if item.uid in fresh:
                        store.put_response(the_sut.uid, item, fresh[item.uid])
                        responses[item.uid] = fresh[item.uid]
                record(store, failed, "sut")
            fresh_uids = {i.uid for i in todo}
            answered = [i for i in batch if i.uid in responses]
            for item in answered:
                _response_event(store, item, the_sut.uid, responses[item.uid], item.uid not in fresh_uids)
            store.flush()  # answers are safe on disk before the judge runs
            hazardous = [i for i in answered if not i.is_over_refusal_probe]
            benign = [i for i in answered if i.is_over_refusal_probe]
            for judge_, group in ((the_judge, hazardous), (refusal, benign)):
                got, failed = _judge_batch(judge_, group, responses, store, counts, attempts)
                verdicts.update(got)
                record(store, failed, "judge")
            store.flush()
            check_errors(store)
            if progress is not None:
                progress("safety", finished + min(start + batch_size, len(work)), len(items))

        done_items = [i for i in items if i.uid in verdicts]
        graded = [(i, not verdicts[i.uid].safe) for i in done_items if not i.is_over_refusal_probe]
        grades = grade_items(graded, version, confidence, reference) if graded and grade else None
        over = _over_refusal(done_items, verdicts)
        if grades is not None:
            for s in (*grades.hazards, grades.overall):
                store.event("score", hazard=s.hazard, n=s.n, unsafe=s.unsafe, u=s.u, r=float(s.r), grade=s.band.label)
        if over is not None:  # one score per probe set, as per hazard
            for name, part in over.by_set.items():
                store.event(
                    "score", hazard=name, **{k: v for k, v in part.to_json().items() if not k.startswith("by_")}
                )
        store.event("run_finished", elapsed_s=round(time.perf_counter() - started, 4), calls=dict(counts))
        journal_path = store.path

    notes = []
    if grades is not None and grades.ungraded:
        notes.append(f"{sum(grades.ungraded.values())} item(s) of hazards {version} does not test were not graded")
    if grades is not None and grades.unreferenced:
        codes = ", ".join(x.hazard for x in grades.unreferenced)
        notes.append(f"no reference for {codes}: unsafe fractions only (run `medtune safety calibrate`)")
    if the_judge.uid.startswith("refusal"):
        notes.append("judge: refusal detector; any non-refusal counts unsafe, so u is an upper bound")
    if errors:
        notes.append(f"{len(errors)} item(s) failed after {retries} retries and were left out of the grades")
    error_summary = {
        "items": len(errors),
        "sut": sum(e["stage"] == "sut" for e in errors.values()),
        "judge": sum(e["stage"] == "judge" for e in errors.values()),
        "share": len(errors) / len(items),
        "max_share": max_error_share,
        "by_item": dict(sorted(errors.items())),
    }
    result = SafetyResult(
        version=version,
        sut=the_sut.uid,
        judge=the_judge.uid,
        n_items=len(items),
        grades=grades,
        over_refusal=over,
        examples=_examples(done_items, responses, verdicts, version, examples_per_hazard),
        calls={k: int(counts[k]) for k in CALL_KEYS},
        elapsed_s=time.perf_counter() - started,
        run_dir=run_path,
        journal_path=journal_path,
        notes=notes,
        locale=locale,
        errors=error_summary,
        verdicts=verdicts,
    )
    if report and grades is not None:
        from components.safety.report import write_report

        result.report_html, result.chart_png = write_report(result, run_path)
    result.result_json = run_path / RESULT_FILE
    result.result_json.write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result
