"""Registration and gated promotion: the ``register`` stage of retrain and the ``medtune promote`` command.

    medtune promote                      # the newest registered version against the policy in mlflow/promotion.yaml
    medtune promote --version 3          # a given version
    medtune promote --run <retrain run>  # the version a retrain run registered

The register stage logs the trained folder as a pyfunc model on its child run, registers a version (tags: data
version, git commit, config hash, headline metrics, safety grades, parent run), logs the evidence the gates read
(``promotion/evidence.json``) and the model card, then applies the policy (:mod:`components.tracking.promotion`)
against the current champion.

A decision is carried out as a journal (:mod:`components.tracking.journal`, issue 19): the record (policy text and
sha256, gates, previous champion, candidate, time, user@host and command) is appended to
``<state>/registry/<model>/journal.jsonl`` (fsync'd) and mirrored to MLflow (``decisions/<id>.json`` on the
candidate's run, version tag ``medtune.decision.<id>``); then the aliases move; then a ``committed`` mark is
appended. :func:`recover_promotions` (:mod:`components.tracking.recovery`) runs first in every promote and register
(and after the workspace lock is taken): an entry without its mark is finished or rolled back from its record (the
rule is in the journal's docstring), and a version registered without a decision is noted in the journal.
``medtune promote`` evaluates the newest registered version by default: a register stage killed after "Created
version N" leaves the challenger alias on the version before, which is not the one the user wants judged.

Within one process, the alias moves and the decision record are also one Prefect transaction (:func:`apply_decision`):
each step is a task whose ``on_rollback`` hook restores what it changed (the alias's previous version, or no alias;
the previous run and version tags), so an exception between steps leaves the registry as it was and the entry is
closed ``rolled back``. Only the new version itself stays (without an alias): a registered version is a record,
not a promotion. ``medtune promote`` records its decision on the version (tags, card, journal), never over the
retrain run's own decision.

Test hook: ``MEDTUNE_TEST_KILL_AT=after_journal`` (the entry written and mirrored, nothing moved) or
``after_alias`` (the aliases moved, no tags, no mark) SIGKILLs the process at exactly that point
(:func:`kill_point`); tests/integration/test_registry.py uses it. Nothing else reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction, transaction

from pipelines.context import Context, resolve
from pipelines.stages import Echo, StageFailed, connect


def quiet(_: str) -> None:
    return None


def _client(uri: str) -> Any:
    from components.tracking.registry import connect_client

    return connect_client(uri)


KILL_ENV = "MEDTUNE_TEST_KILL_AT"


def kill_point(step: str) -> None:
    """Test hook: SIGKILL this process here when ``$MEDTUNE_TEST_KILL_AT`` names ``step`` (``after_journal``,
    ``after_alias``), so a test can stop a promotion at exactly one step, as a power cut or the OOM killer would."""
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


# -- transaction steps ----------------------------------------------------------------------------------------------
@task(name="move-alias", cache_policy=NO_CACHE, retries=0)
def move_alias(uri: str, name: str, alias: str, version: str) -> str | None:
    """Point ``alias`` at ``version``; remember the previous target for the rollback."""
    from components.tracking import registry

    client = _client(uri)
    before = registry.alias_version(client, name, alias)
    txn = get_transaction()
    if txn is not None:
        txn.set("undo", {"uri": uri, "name": name, "alias": alias, "before": before})
    registry.set_alias(client, name, alias, version)
    return before


@move_alias.on_rollback
def _restore_alias(txn: Transaction) -> None:
    from components.tracking import registry

    undo = txn.get("undo")
    registry.set_alias(_client(undo["uri"]), undo["name"], undo["alias"], undo["before"])


@dataclass(frozen=True)
class Record:
    """Where a decision is written: the retrain run (tags + decision.json) and the version (tags + card)."""

    uri: str
    name: str
    version: str
    parent_run: str | None
    version_run: str
    card: str


@task(name="tag-decision", cache_policy=NO_CACHE, retries=0)
def tag_decision(record: Record, decision: Any) -> None:
    """The decision as tags on the retrain run (what the report page reads) and on the version; a failure part way
    restores the tags already written, a later failure in the transaction restores them through the rollback."""
    from components.tracking import registry

    client = _client(record.uri)
    tags = registry.decision_tags(record.name, decision)
    version_tags = {k: tags[k] for k in ("medtune.promotion.decision", "medtune.promotion.failed_gates")}
    current = dict(client.get_model_version(record.name, record.version).tags or {})
    undo: dict[str, Any] = {"uri": record.uri, "name": record.name, "version": record.version,
                            "version_tags": {k: current.get(k) for k in version_tags}}  # fmt: skip
    if record.parent_run:
        undo["run"] = (record.parent_run, registry.run_tags(client, record.parent_run, list(tags)))
    txn = get_transaction()
    if txn is not None:
        txn.set("undo", undo)
    try:
        if record.parent_run:
            registry.write_run_tags(client, record.parent_run, tags)
        registry.write_version_tags(client, record.name, record.version, version_tags)
    except BaseException:
        _undo_tags(undo)  # a failed task gets no rollback call of its own
        raise


def _undo_tags(undo: dict[str, Any]) -> None:
    from components.tracking import registry

    client = _client(undo["uri"])
    if "run" in undo:
        run_id, tags = undo["run"]
        registry.write_run_tags(client, run_id, tags)
    registry.write_version_tags(client, undo["name"], undo["version"], undo["version_tags"])


@tag_decision.on_rollback
def _restore_tags(txn: Transaction) -> None:
    _undo_tags(txn.get("undo"))


@task(name="log-decision", cache_policy=NO_CACHE, retries=0)
def log_decision(record: Record, decision: Any) -> None:
    """The model card on the version's run and decision.json on the retrain run: the last step, because MLflow
    cannot delete an artifact (a failure here still rolls back the aliases and tags)."""
    write_artifacts(_client(record.uri), record, decision)


def write_artifacts(client: Any, record: Record, decision: Any) -> None:
    from components.tracking import registry

    client.log_text(record.version_run, record.card, registry.CARD_FILE)
    if record.parent_run:
        registry.log_json(client, record.parent_run, decision.to_json(), registry.DECISION_FILE)


def apply_decision(uri: str, decision: Any, record: Record, *, challenger: bool) -> None:
    """One transaction: ``challenger`` -> the version (when ``challenger``), ``champion`` -> the version (when
    promoted), the decision tags, the decision artifacts. Any failure rolls every completed step back and re-raises."""
    from components.tracking.registry import CHALLENGER, CHAMPION

    with transaction():
        if challenger:
            move_alias(uri, record.name, CHALLENGER, record.version)
        if decision.decision == "promoted" and decision.champion_before != record.version:
            move_alias(uri, record.name, CHAMPION, record.version)
        kill_point("after_alias")
        tag_decision(record, decision)
        log_decision(record, decision)


def carry_out(
    stage: str, state_root: Path, decision: Any, record: Record, policy: Mapping[str, str], *, challenger: bool
) -> str:
    """Journal first (fsync'd, then mirrored to MLflow), then the aliases and tags (:func:`apply_decision`), then
    the commit mark; returns the decision id. A failure is rolled back and closed ``rolled back``; one that cannot
    be is left open for the next start."""
    from components.tracking import journal, registry

    client = _client(record.uri)
    moves = [journal.move(registry.CHALLENGER, registry.alias_version(client, record.name, registry.CHALLENGER),
                          record.version)] if challenger else []  # fmt: skip
    if decision.decision == "promoted":
        moves.append(journal.move(registry.CHAMPION, decision.champion_before, record.version))
    entry = journal.decision_record(model=record.name, decision=decision, policy=policy, moves=moves, stage=stage,
                                    version_run=record.version_run, parent_run=record.parent_run)  # fmt: skip
    book = journal.Journal(journal.journal_path(state_root, record.name))
    book.append(entry)
    try:
        registry.mirror_decision(client, record.name, record.version_run, entry)
        kill_point("after_journal")
        apply_decision(record.uri, decision, record, challenger=challenger)
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        where = f"{record.name} version {record.version} (decision {entry['id']})"
        try:
            restored = all(registry.alias_version(client, record.name, m["alias"]) == m["before"]
                           for m in entry["moves"])  # fmt: skip
        except Exception:
            restored = False
        if not restored:
            raise StageFailed(stage, f"recording the decision for {where} failed part way: {reason}; the next medtune "
                              "command finishes or rolls it back from the journal") from e  # fmt: skip
        book.append(journal.mark(entry["id"], journal.ROLLED_BACK, champion=decision.champion_before, reason=reason))
        raise StageFailed(stage, f"recording the decision for {where} failed and was rolled back (aliases and tags "
                          f"as before; the version stays registered): {reason}") from e  # fmt: skip
    closing = journal.mark(entry["id"], journal.COMMITTED, champion=decision.champion_after)
    book.append(closing)
    with contextlib.suppress(Exception):  # committed: the journal file is the record, the mark's copy a convenience
        registry.mirror_mark(client, record.version_run, closing)
    return str(entry["id"])


# -- recovery on start ----------------------------------------------------------------------------------------------
def recover_promotions(
    state_root: Path, tracking_uri: str, *, model: str | None = None, orphans: bool = False, echo: Echo = print
) -> list[str]:
    """Finish or roll back every promotion the journals hold open (``model``: that model's only), one console line
    each; with ``orphans``, also note in the journal each version registered without a decision. The rule
    (:func:`components.tracking.journal.plan_recovery`): an entry is finished (its remaining alias moves made, its
    tags and card written, ``completed`` appended) when every alias it moves is still at its recorded before or
    after and the candidate still exists; otherwise it is rolled back (an alias still at the candidate goes back to
    the recorded previous version, or is removed when there was none; ``rolled back`` appended). Idempotent. Cheap
    when nothing is open and ``orphans`` is off: the journal files are read, MLflow is not touched. Call it after
    taking the workspace lock; the promote command and the register stage call it themselves. Raises
    :class:`StageFailed` (stage ``recover``) naming the entry when MLflow refuses; the entry then stays open."""
    from components.tracking.recovery import RecoveryError, recover

    try:
        return recover(state_root, tracking_uri, model=model, orphans=orphans, echo=echo)
    except RecoveryError as e:
        raise StageFailed("recover", str(e)) from None


# -- evaluating a version -------------------------------------------------------------------------------------------
def _trained_info(model_dir: Path) -> dict[str, Any]:
    file = model_dir / "trained.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def load_policy_or_fail(path: Path, stage: str) -> tuple[Any, dict[str, str]]:
    """The policy and its journal record (path, text, sha256)."""
    from components.tracking.journal import policy_record
    from components.tracking.promotion import PolicyError, read_policy

    try:
        policy, text = read_policy(path)
    except PolicyError as e:
        raise StageFailed(stage, str(e)) from None
    return policy, policy_record(path, text)


def decide(ctx: Context, client: Any, name: str, version: str, evidence: Any, policy: Any, *, auto: bool) -> Any:
    """The policy's decision for ``version`` against the current champion; ``auto`` (the register stage) obeys
    ``registry.promote`` (off: "skipped"), ``medtune promote`` always decides. A champion without recorded evidence
    (registered by hand) is compared on nothing: its regression gates say so."""
    from components.tracking import registry
    from components.tracking.promotion import Decision, Evidence, evaluate_policy

    champion = registry.alias_version(client, name, registry.CHAMPION)
    champion_evidence = None
    if champion is not None and champion != version:
        run_id = registry.version_run(client, name, champion)[0]
        champion_evidence = registry.load_evidence(client, run_id) or Evidence()
    decision = evaluate_policy(policy, evidence, champion_evidence, version=version, champion_version=champion)
    if champion == version and decision.decision == "promoted":
        decision = Decision("promoted", decision.gates, version, champion, champion)
    if auto and not ctx.config.registry.promote:
        decision = Decision("skipped", decision.gates, version, champion, champion)
    return decision


def _example_image(ctx: Context) -> Path:
    """A test-split image of the built dataset for the input example (any record's image if there is no test)."""
    dataset = ctx.path(ctx.config.data.out)
    first = None
    with (dataset / "records.jsonl").open() as fh:
        for line in fh:
            record = json.loads(line)
            first = first or record
            if record.get("split") == "test" and record.get("image"):
                return dataset / record["image"]
    if first is None or not first.get("image"):
        raise StageFailed("register", f"{dataset}/records.jsonl has no record with an image for the input example")
    return dataset / first["image"]


def register_stage(
    ctx: Context,
    parent: str,
    echo: Echo = quiet,
    *,
    model_dir: str,
    metrics: str | None = None,
    safety_result: str | None = None,
    validation_report: str | None = None,
) -> dict[str, Any]:
    """Log + register the trained model as a challenger, apply the promotion policy, move champion if it passes."""
    from components.tracking import registry
    from components.tracking.model_card import render_card
    from components.tracking.promotion import collect_evidence

    session = connect(ctx)
    name = ctx.config.registry.name
    policy, policy_rec = load_policy_or_fail(ctx.path(ctx.config.registry.policy), "register")  # before any logging
    recover_promotions(
        ctx.state.root, ctx.tracking_uri, model=name, orphans=True, echo=lambda s: echo(f"register: {s}")
    )
    with session.child(parent, "register") as run_id:
        parent_tags = session.client.get_run(parent).data.tags
        lineage = {k: parent_tags.get(k, "") for k in ("data_version", "git_commit", "config_hash")}
        evidence = collect_evidence(metrics, safety_result, validation_report, {**lineage, "parent_run": parent})
        registry.log_json(session.client, run_id, evidence.to_json(), registry.EVIDENCE_FILE)
        model_info = _trained_info(Path(model_dir))
        registry.log_json(session.client, run_id, model_info, registry.MODEL_INFO_FILE)
        model_uri = registry.log_model(run_id, model_dir, example_image=_example_image(ctx),
                                       blob_store=ctx.state.root / "blobs")  # fmt: skip
        version = registry.register_version(session.client, name, model_uri, run_id, registry.version_tags(evidence))
        decision = decide(ctx, session.client, name, version, evidence, policy, auto=True)
        card = render_card(name, version, evidence, decision=decision, model_info=model_info,
                           created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))  # fmt: skip
        record = Record(ctx.tracking_uri, name, version, parent, run_id, card)
        decision_id = carry_out("register", ctx.state.root, decision, record, policy_rec, challenger=True)
        session.set_tags(run_id, {"medtune.model_version": version, "medtune.promotion.decision": decision.decision})
        for gate in decision.gates:
            echo(f"register: {gate.line()}")
        echo(f"register: {name} {decision.summary()}")
        return {
            "name": name,
            "version": version,
            "model_uri": model_uri,
            "decision": decision.decision,
            "failed_gates": [g.name for g in decision.failed],
            "champion": decision.champion_after,
            "run_id": run_id,
            "decision_id": decision_id,
        }


# -- medtune promote -------------------------------------------------------------------------------------------------
def promote_version(
    ctx: Context, *, version: str | None = None, run: str | None = None, policy: Path | None = None, echo: Echo = print
) -> Any:
    """Apply the policy to a registered version (default: the newest) and move champion if it passes."""
    from components.tracking import registry
    from components.tracking.model_card import render_card

    session = connect(ctx)
    client, name = session.client, ctx.config.registry.name
    rules, policy_rec = load_policy_or_fail(policy or ctx.path(ctx.config.registry.policy), "promote")
    recover_promotions(ctx.state.root, ctx.tracking_uri, model=name, orphans=True, echo=echo)
    if version is None and run is not None:
        try:
            version = registry.find_version(client, name, parent_run=run)
        except LookupError as e:
            raise StageFailed("promote", str(e)) from None
    if version is None:
        version = registry.newest_version(client, name)
        if version is None:
            raise StageFailed("promote", f"{name!r} has no registered version: run `medtune run` first")
    try:
        version_run, _ = registry.version_run(client, name, version)
    except LookupError as e:
        raise StageFailed("promote", str(e)) from None
    evidence = registry.load_evidence(client, version_run)
    if evidence is None:
        raise StageFailed("promote", f"{name} v{version}: its run {version_run} has no {registry.EVIDENCE_FILE}")
    decision = decide(ctx, client, name, version, evidence, rules, auto=False)
    model_info = registry.load_json(client, version_run, registry.MODEL_INFO_FILE)
    card = render_card(name, version, evidence, decision=decision, model_info=model_info)
    record = Record(ctx.tracking_uri, name, version, None, version_run, card)  # the retrain run keeps its decision
    challenger = registry.alias_version(client, name, registry.CHALLENGER)
    newer = challenger is None or int(version) > int(challenger)  # a register killed before it moved challenger
    for gate in decision.gates:
        echo(gate.line())
    carry_out("promote", ctx.state.root, decision, record, policy_rec, challenger=newer)
    echo(f"{name} {decision.summary()}")
    return decision


@flow(name="promote", validate_parameters=False)
def promote(
    workspace: str, config: str, overrides: list[str], version: str | None, run: str | None, policy: str | None
) -> dict[str, Any]:
    """``medtune promote`` as a Prefect flow (the transaction's tasks show in the UI)."""
    from prefect import get_run_logger

    def echo(line: str) -> None:
        print(line, flush=True)
        get_run_logger().debug(line)

    ctx = resolve(Path(config), overrides, workspace=Path(workspace))
    decision = promote_version(ctx, version=version, run=run, policy=Path(policy) if policy else None, echo=echo)
    result: dict[str, Any] = decision.to_json()
    return result
