"""Decoder evaluation: answer extraction, batched greedy generation, exact match, perplexity."""
from __future__ import annotations

import math

import pytest
import torch

from dynsdpb.decoder.generation import (Completion, echo_share, exact_match, extract_answer,
                                         generate, strict_answer, target_loss)
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


# -- strict and flexible exact match (lm-eval-harness style) -------------------------------

@pytest.mark.parametrize("text,trunc,ans", [
    ("7", False, "7"), (" 7.", False, "7"), ("the answer is 7", False, "7"),
    ("So 3 + 4 = 7. The answer is 7.", False, "7"), ("step 1\n#### 1,234", False, "1234"),
    ("The final answer to this arithmetic problem is 8.", False, "8"), ("5 * 9 = 45", False, None),
    ("The answer is 7, not 8", False, None),
    ("7", True, None),                                  # cut off: never strict
    ("1 * 5", False, None), ("1. 4", False, None),      # echoes of the question
    ("To solve 0 * 4 we use the concept of", False, None),
])
def test_strict_answer_needs_a_finished_generation_and_a_marked_answer(text, trunc, ans):
    assert strict_answer(text, trunc) == ans


def test_exact_match_reports_strict_flexible_and_truncated():
    exs = [LMExample("What is 1 * 5?", "5", "5"), LMExample("What is 2 + 2?", "4", "4"),
           LMExample("What is 3 + 3?", "6", "6")]
    comps = [Completion("1 * 5", truncated=True),        # an echo, cut off: flexible only
             Completion("4", truncated=False),           # right both ways
             Completion("The answer is 6.", truncated=False)]
    res = exact_match(exs, comps, answer_scorer("reasoning-gym:arith-easy"), n_samples=3)
    assert res.accuracy == pytest.approx(1.0)
    assert res.strict_accuracy == pytest.approx(2 / 3)
    assert res.truncated == pytest.approx(1 / 3)
    assert [s["truncated"] for s in res.samples] == [True, False, False]
    assert [s["strict_correct"] for s in res.samples] == [False, True, True]


def test_sample_marks_completions_cut_off_at_max_new_tokens():
    tok = tiny_tokenizer()
    model = tiny_llama(seed=1)
    prompts = ["what is 3 plus 4", "what is 7"]
    first = generate(model, tok, prompts, max_new_tokens=4)
    # the same model with eos = the first word it says: it ends by itself after one token
    word = first[0].split()[0]
    tok2 = tiny_tokenizer()
    tok2.eos_token = word
    done = generate(model, tok2, prompts[:1], max_new_tokens=4)
    assert isinstance(done[0], Completion) and not done[0].truncated
    # an eos it never says within 4 tokens: every completion is cut off
    tok3 = tiny_tokenizer()
    tok3.eos_token = next(w for w in ("####", "minus", "so", "=") if w not in " ".join(first))
    cut = generate(model, tok3, prompts, max_new_tokens=4)
    assert all(c.truncated for c in cut) and cut == first


def test_echo_share_counts_items_an_echo_of_the_question_solves():
    exs = [LMExample("What is 1 * 5?", "5", "5"), LMExample("What is 0 * 4?", "0", "0"),
           LMExample("What is 2 + 3?", "5", "5"), LMExample("no answer", "x")]
    assert echo_share(exs, answer_scorer("reasoning-gym:arith-easy")) == pytest.approx(2 / 3)
