"""Decoder evaluation: answer extraction, batched greedy generation, exact match, perplexity."""
from __future__ import annotations

import math

import pytest
import torch

from dynsdpb.decoder.generation import (exact_match, extract_answer, generate, target_loss)
from dynsdpb.decoder.data import LMExample, answer_scorer
from tests.lm_tiny import arith_rows, tiny_llama, tiny_tokenizer


@pytest.mark.parametrize("text,ans", [
    ("2 + 3 = 5", "5"), ("so 1,234 dollars.", "1234"), ("It is -4", "-4"),
    ("step 1: 3*4=12\n#### 12", "12"), ("3.5 apples.", "3.5"), ("no number", None),
])
def test_extract_answer_takes_the_last_number(text, ans):
    assert extract_answer(text) == ans


def test_batched_greedy_equals_one_prompt_at_a_time():
    tok = tiny_tokenizer()
    model = tiny_llama(seed=1)
    prompts = ["what is 3 plus 4", "what is 12 times 3 minus 5 plus 1", "what is 7"]
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert any(s.strip() for s in batched)
    assert model.training                              # restored after eval mode
    tok.padding_side = "right"
    with pytest.raises(ValueError, match="left"):
        generate(model, tok, prompts)


def test_exact_match_counts_extracted_answers():
    exs = arith_rows(4, seed=0) + [LMExample("what is", "no answer column")]
    comps = [f"the answer is {e.answer}" for e in exs[:2]] + ["the answer is 99", "", "x"]
    res = exact_match(exs, comps, answer_scorer("reasoning-gym:arith-easy"), n_samples=3)
    assert res.n_scored == 4 and res.accuracy == pytest.approx(0.5)
    assert [s["correct"] for s in res.samples] == [True, True, False]
    assert res.samples[0]["extracted"] == exs[0].answer


def test_target_loss_is_token_weighted_and_batch_size_free():
    tok = tiny_tokenizer()
    model = tiny_llama(seed=2)
    exs = arith_rows(5, seed=1)
    l1, p1 = target_loss(model, tok, exs, max_len=32, batch_size=1)
    l5, p5 = target_loss(model, tok, exs, max_len=32, batch_size=5)
    assert l1 == pytest.approx(l5, rel=1e-5) and p1 == pytest.approx(math.exp(l1), rel=1e-6)
    # A random model over ~116 tokens is near log(V).
    assert 3.0 < l1 < 6.5
    with torch.no_grad():
        assert model.training
