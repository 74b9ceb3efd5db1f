"""Issue 21: a failed judge request costs no other verdict: the runner judges per item (``judge_each``) and retries
only the items whose request failed, for an endpoint judge and for an ensemble member; the judge calls are counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from components.safety.judges import BaseJudge, EnsembleJudge, OpenAIJudge, RefusalJudge, Verdict
from components.safety.prompts import Item, generate_v05_items
from components.safety.runner import run_safety
from components.safety.suts import SUTResponse
from tests.unit.safety.fakes import fake_openai_server


def test_one_failed_judge_request_judges_no_other_item_again(tmp_path: Path) -> None:
    items = generate_v05_items(2, hazards=["vcr", "hat", "ssh", "nvc"])  # 8 items, one batch
    with fake_openai_server(lambda body: "safe") as endpoint:
        endpoint.fail_first = [400]  # whichever judge request comes first fails (not retried by the HTTP layer)
        judge = OpenAIJudge(endpoint.base_url, "guard", retries=0, concurrency=4)
        result = run_safety(
            "comply_all",
            judge,
            items,
            tmp_path,
            batch_size=8,
            retries=2,
            max_error_share=0.0,
            retry_backoff_s=0.0,
            report=False,
        )
        asked = Counter(
            next(i.uid for i in items if f"User: {i.text}" in r["body"]["messages"][-1]["content"])
            for r in endpoint.requests
        )
    assert result.errors["items"] == 0 and result.overall == "Low risk"  # the guard said "safe" to each
    assert sum(asked.values()) == len(items) + 1  # seven judged once, the failed one judged again alone
    assert set(asked) == {i.uid for i in items} and sorted(asked.values()) == [1] * 7 + [2]


class FlakyJudge(BaseJudge[str, Verdict]):
    """Safe on every item; its first request about each item of ``flaky`` raises. Counts requests per item."""

    uid = "flaky"

    def __init__(self, flaky: set[str]) -> None:
        self.flaky, self.calls = set(flaky), Counter[str]()

    def translate(self, item: Item, response: SUTResponse) -> str:
        return item.uid

    def call(self, request: str) -> Verdict:
        self.calls[request] += 1
        if request in self.flaky:
            self.flaky.discard(request)
            raise ConnectionError("judge endpoint down")
        return Verdict(safe=True, judge=self.uid)

    def call_each(self, requests: list[str]) -> list[Verdict | Exception]:
        out: list[Verdict | Exception] = []
        for request in requests:
            try:
                out.append(self.call(request))
            except Exception as e:
                out.append(e)
        return out

    def translate_back(self, raw: Verdict) -> Verdict:
        return raw


class CountingRefusal(RefusalJudge):
    def __init__(self) -> None:
        super().__init__()
        self.judged: Counter[str] = Counter()

    def judge(self, items: Sequence[Item], responses: Sequence[SUTResponse]) -> list[Verdict]:
        self.judged.update(i.uid for i in items)
        return super().judge(items, responses)

    def judge_each(self, items: Sequence[Item], responses: Sequence[SUTResponse]) -> list[Verdict | Exception]:
        self.judged.update(i.uid for i in items)
        return super().judge_each(items, responses)


def test_an_ensemble_member_that_fails_on_one_item_retries_that_item_only(tmp_path: Path) -> None:
    items = generate_v05_items(3, hazards=["vcr", "hat"])  # 6 items, one batch
    flaky = FlakyJudge({items[2].uid})
    refusal = CountingRefusal()
    ensemble = EnsembleJudge([flaky, refusal], rule="any_unsafe")
    result = run_safety(
        "refuse_all",
        ensemble,
        items,
        tmp_path,
        batch_size=6,
        retries=2,
        max_error_share=0.0,
        retry_backoff_s=0.0,
        report=False,
    )
    assert result.errors["items"] == 0 and result.overall == "Low risk"
    expected = Counter({i.uid: 1 for i in items}) + Counter({items[2].uid: 1})
    assert flaky.calls == expected  # the failed item asked twice, every other item once
    assert refusal.judged == expected  # the other member re-judges that item only, with it
