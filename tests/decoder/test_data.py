"""Decoder data: built-in reasoning-gym splits, local files, tokenization and masking."""
from __future__ import annotations

import json

import pytest
import torch

from dynsdpb.errors import ConfigError
from dynsdpb.decoder.data import (IGNORE, LMExample, answer_scorer, collate, encode,
                             load_lm_splits, prompt_text)
from tests.lm_tiny import tiny_llama, tiny_tokenizer


def test_arith_easy_is_deterministic_and_splits_do_not_overlap():
    a = load_lm_splits("arith-easy", split_seed=0, n_train=100, n_val=20, n_test=40)
    b = load_lm_splits("arith-easy", split_seed=0, n_train=100, n_val=20, n_test=40)
    c = load_lm_splits("arith-easy", split_seed=1, n_train=100, n_val=20, n_test=40)
    assert a == b and a.train != c.train
    assert (len(a.train), len(a.val), len(a.test)) == (100, 20, 40)
    qs = [set(e.prompt for e in s) for s in (a.train, a.val, a.test)]
    assert not (qs[0] & qs[1]) and not (qs[0] & qs[2]) and not (qs[1] & qs[2])
    kinds = {("multiplication" in e.prompt) for e in a.train}
    assert kinds == {True, False}                     # both generators are in the mix
    assert all(e.target == e.answer and len(e.target) <= 3 for e in a.train)
    # A larger training set leaves the held-out sets unchanged.
    big = load_lm_splits("arith-easy", split_seed=0, n_train=150, n_val=20, n_test=40)
    assert big.test == a.test and big.val == a.val


def test_arith_easy_pool_is_finite():
    with pytest.raises(ConfigError) as e:
        load_lm_splits("arith-easy", n_val=200, n_test=400)
    assert e.value.problems[0].field == "val_size" and "distinct" in str(e.value)


def test_gsm_symbolic_targets_are_rationales():
    s = load_lm_splits("gsm-symbolic", split_seed=0, n_train=8, n_val=2, n_test=2)
    for e in s.train:
        assert "####" in e.target
        # rationales may end "#### 8.0" for the answer "8": the scorer compares numbers.
        assert float(e.target.rsplit("####", 1)[1]) == float(e.answer)


def test_reasoning_gym_scorer():
    score = answer_scorer("reasoning-gym:arith-easy")
    assert score("7", "7") == 1.0 and score("8", "7") < 1.0 and score(None, "7") == 0.0
    assert score("-4", "-4") == 1.0


def test_local_jsonl_and_csv(tmp_path):
    rows = [{"prompt": f"what is {i} plus 1", "target": f"the answer is {i + 1}",
             "answer": str(i + 1)} for i in range(20)]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows))
    s = load_lm_splits(str(jl), split_seed=0, n_val=4, n_test=4)
    assert (len(s.train), len(s.val), len(s.test)) == (12, 4, 4)
    assert s.scorer == "last-number"
    assert sorted(e.prompt for e in s.train + s.val + s.test) == sorted(r["prompt"] for r in rows)
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,target\n" + "\n".join(f"q {i},t {i}" for i in range(10)))
    s = load_lm_splits(str(csv), n_val=2, n_test=2)
    assert all(e.answer is None for e in s.train)
    assert answer_scorer("last-number")("1,000", "1000") == 1.0


def test_local_file_problems_name_the_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "target": "t"}) + "\n")
    with pytest.raises(ConfigError, match="no `prompt` column"):
        load_lm_splits(str(bad))
    with pytest.raises(ConfigError, match="no such file"):
        load_lm_splits(str(tmp_path / "missing.jsonl"))


def test_hub_dataset_fails_cleanly_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="built-in"):
        load_lm_splits("someone/not-a-real-dataset-xyz")


def test_encode_masks_the_prompt_and_appends_eos():
    tok = tiny_tokenizer()
    ex = LMExample("what is 3 plus 4", "the answer is 7", "7")
    e = encode(tok, ex, max_len=64)
    p = tok(prompt_text(tok, ex.prompt), add_special_tokens=False)["input_ids"]
    t = tok(ex.target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert e["input_ids"] == p + t
    assert e["labels"] == [IGNORE] * len(p) + t
    assert tok.decode(e["input_ids"][:len(p)]).endswith("<bot>")


def test_encode_truncates_target_first_then_prompt_start():
    tok = tiny_tokenizer()
    ex = LMExample("what is 3 plus 4", "so the answer is 7 so the answer is 7", "7")
    full = encode(tok, ex, 64)
    n_prompt = full["labels"].count(IGNORE)
    e = encode(tok, ex, n_prompt + 2)
    assert len(e["input_ids"]) == n_prompt + 2 and e["labels"][-2:] == full["labels"][n_prompt:n_prompt + 2]
    e = encode(tok, ex, 4)                            # prompt cut from its start
    assert len(e["input_ids"]) == 4 and e["input_ids"][:3] == full["input_ids"][n_prompt - 3:n_prompt]
    assert sum(x != IGNORE for x in e["labels"]) == 1
    with pytest.raises(ConfigError, match="max_len"):
        encode(tok, ex, 1)


def test_left_padded_batch_gives_each_sequence_its_own_logits():
    tok = tiny_tokenizer()
    model = tiny_llama().eval()
    exs = [LMExample("what is 3 plus 4", "the answer is 7"),
           LMExample("what is 12 times 3 minus 5 plus 1", "the answer is 32 so 32")]
    enc = [encode(tok, e, 64) for e in exs]
    b = collate(enc, tok.pad_token_id)
    assert b["input_ids"][0, 0] == tok.pad_token_id and b["labels"][0, 0] == IGNORE
    assert b["attention_mask"][1].all()
    with torch.no_grad():
        both = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                     position_ids=b["position_ids"]).logits
        for i, e in enumerate(enc):
            n = len(e["input_ids"])
            one = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
            assert torch.allclose(both[i, -n:], one, atol=1e-5)


def test_decoder_files_are_deduplicated_by_prompt_before_splitting():
    from dynsdpb.decoder.data import splits_from_records
    recs = [{"prompt": f"what is {i} plus 1", "target": f"so {i + 1}", "answer": str(i + 1)}
            for i in range(20)]
    # each prompt again (case and spacing differ), some with another target, same answer
    recs += [{"prompt": f"What is  {i} PLUS 1", "target": f"the answer is {i + 1}",
              "answer": str(i + 1)} for i in range(20)]
    # a prompt with two different answers: dropped with all its rows
    recs += [{"prompt": "what is x", "target": "1", "answer": "1"},
             {"prompt": "what is x", "target": "2", "answer": "2"}]
    sp = splits_from_records(recs, "f.jsonl", split_seed=0, n_val=4, n_test=6)
    key = lambda e: " ".join(e.prompt.split()).casefold()     # noqa: E731
    tr, held = {key(e) for e in sp.train}, {key(e) for e in sp.val + sp.test}
    assert not tr & held
    assert len(sp.train) + len(sp.val) + len(sp.test) == 20
    assert "what is x" not in tr | held
    assert sp.dedup == {"rows": 42, "repeats_dropped": 20, "conflicting_texts": 1,
                        "conflicting_rows_dropped": 2, "kept": 20}
