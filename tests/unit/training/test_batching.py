"""Length-grouped batches and answer-only logits (issue 17, item 1): the two changes that cut the step's work
without changing what a step learns from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from components.training.data import EpochSampler, record_length
from components.training.trainer import answer_loss_sum, answer_positions, record_loss_sum, token_loss_sum

# a skewed pool, like the embedded default's: many short questions, some long captions and requests
LENGTHS = [30] * 300 + [55] * 60 + [90] * 40


def _padded_tokens(sampler: EpochSampler, batch: int, steps: int) -> tuple[int, int]:
    real = padded = 0
    for _ in range(steps):
        lengths = [LENGTHS[i] for i in sampler.take(batch)]
        real += sum(lengths)
        padded += max(lengths) * len(lengths)
    return real, padded


def test_grouped_epochs_visit_every_record_once_and_cut_padding() -> None:
    grouped = EpochSampler(len(LENGTHS), seed=0, lengths=LENGTHS, group=16)
    plain = EpochSampler(len(LENGTHS), seed=0)
    for epoch in range(3):
        assert sorted(grouped.order(epoch)) == list(range(len(LENGTHS)))
    real, padded = _padded_tokens(grouped, 16, 75)  # 3 epochs, crossing epoch boundaries (400 = 25 x 16)
    plain_real, plain_padded = _padded_tokens(plain, 16, 75)
    assert real == plain_real  # the same records, three times each
    assert padded / real < 1.15 < plain_padded / plain_real  # random batches of 16 pad to ~2x here


def test_grouping_stays_aligned_across_epoch_boundaries() -> None:
    """A pool that is not a multiple of the batch: the batch straddling two epochs is the only mixed one."""
    lengths = LENGTHS[:-7]  # 393 records
    sampler = EpochSampler(len(lengths), seed=1, lengths=lengths, group=8)
    mixed = 0
    for _ in range(200):  # ~4 epochs
        batch = [lengths[i] for i in sampler.take(8)]
        mixed += len(set(batch)) > 1
    # per epoch (one window here): one batch per boundary between lengths (2) and the one straddling the epochs
    assert mixed <= 3 * 4


def test_grouped_sampler_resumes_exactly() -> None:
    a = EpochSampler(len(LENGTHS), seed=2, lengths=LENGTHS, group=4)
    a.take(4 * 130)
    b = EpochSampler(len(LENGTHS), seed=2, lengths=LENGTHS, group=4)
    b.load_state_dict(a.state_dict())
    assert [a.take(4) for _ in range(150)] == [b.take(4) for _ in range(150)]
    with pytest.raises(ValueError, match="3 lengths for a pool of 400"):
        EpochSampler(400, seed=0, lengths=[1, 2, 3], group=4)


def test_record_length_counts_text_and_images() -> None:
    turns = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "yes"}]
    assert record_length({"conversations": turns, "image": "a.png"}) == len("<image>\nQ?") + 3 + 64
    assert record_length({"conversations": turns, "image": ["a.png", "b.png"]}) == len("<image>\nQ?") + 3 + 128
    assert record_length({"conversations": turns, "image": None}) == len("<image>\nQ?") + 3


@pytest.mark.parametrize("per", ["token", "record"])
def test_answer_only_logits_give_the_full_loss_and_gradient(per: str) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 97, (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0  # a padded row
    labels = torch.full_like(ids, -100)
    labels[0, 8:] = ids[0, 8:]  # a long answer
    labels[1, 11] = ids[1, 11]  # a one-token answer
    labels[2, 7:9] = ids[2, 7:9]
    inputs = {"input_ids": ids, "attention_mask": mask}
    assert answer_positions(labels).tolist() == [6, 7, 8, 9, 10]

    full = (record_loss_sum if per == "record" else token_loss_sum)(model(**inputs).logits, labels)
    full.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    kept = answer_loss_sum(model, inputs, labels, per=per)
    kept.backward()
    torch.testing.assert_close(kept, full)
    for name, grad in grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-4, atol=1e-6)
    assert np.isfinite(float(kept.detach()))


def test_text_only_records_get_batches_of_their_own() -> None:
    from components.training.trainer import _text_only_apart

    records = [{"image": "a.png"}] * 300 + [{"image": None}] * 60
    keys = _text_only_apart(records)
    assert keys is not None and sum(keys) == 60
    assert _text_only_apart([{"image": "a.png"}] * 5) is None  # one kind: plain random batches
    sampler = EpochSampler(len(records), seed=0, lengths=keys, group=8)
    batches = [[keys[i] for i in sampler.take(8)] for _ in range(45)]  # one epoch
    mixed = [b for b in batches if len(set(b)) > 1]
    assert len(mixed) <= 1 and sum(sum(b) == 8 for b in batches) >= 6  # 60 text-only records: 7 batches of 8, 1 mixed


def test_prompt_loss_adds_each_records_weighted_prompt_mean_to_its_answer_loss() -> None:
    """TrainArgs.prompt_loss_weight: the prompt term is each record's mean cross-entropy over its attended,
    non-image prompt tokens, computed here by hand from the full logits."""
    from components.training.trainer import TrainArgs, prompt_labels

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(config)
    image = 5
    ids = torch.randint(10, 97, (2, 10))
    ids[:, 1:3] = image  # two image placeholders after the first token
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # padding
    labels = torch.full_like(ids, -100)
    labels[0, 8:] = ids[0, 8:]
    labels[1, 7] = ids[1, 7]
    prompt = prompt_labels(ids, mask, labels, [image])
    assert (prompt[0] != -100).tolist() == [False, False, False, True, True, True, True, True, False, False]
    assert (prompt[1] != -100).tolist() == [False, False, False, True, True, True, True, False, False, False]
    assert torch.equal(prompt[prompt != -100], ids[prompt != -100])

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), dim=-1)

    def row_means(targets: torch.Tensor) -> torch.Tensor:
        t = targets[:, 1:]
        nll = -logp.gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (t != -100)
        return nll.sum(dim=1) / (t != -100).sum(dim=1)

    expected = (row_means(labels) + 0.3 * row_means(prompt)).sum()
    got = answer_loss_sum(model, {"input_ids": ids, "attention_mask": mask}, labels, per="record",
                          prompt=prompt, prompt_weight=0.3)  # fmt: skip
    torch.testing.assert_close(got, expected)
    plain = answer_loss_sum(model, {"input_ids": ids, "attention_mask": mask}, labels, per="record")
    torch.testing.assert_close(plain, row_means(labels).sum())  # weight 0: the answer loss alone
    with pytest.raises(ValueError, match="needs loss='record'"):
        TrainArgs(steps=1, lr=1e-3, prompt_loss_weight=0.3)
    with pytest.raises(ValueError, match="prompt_loss_weight must be >= 0"):
        TrainArgs(steps=1, lr=1e-3, loss="record", prompt_loss_weight=-1)
