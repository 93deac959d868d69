"""Self-training loops (dynsdpb/selftrain/run.py and its selftrain_*.py modules) on a tiny local Llama.

A scripted generator stands in for the model only where generation quality does not matter
(filtering, rationalization bookkeeping, round resume after a kill); one round runs end to end
with real generation on a tiny model taught half of the questions first; alignment of the
carried cache on regenerated targets is checked on a constructed case, token for token."""
from __future__ import annotations

import json
import random
import re

import pytest
import torch

from dynsdpb.config import RunConfig
from dynsdpb.errors import ConfigError
from dynsdpb.decoder.generation import sample
from dynsdpb.decoder.data import LMExample, collate, encode
from dynsdpb.selftrain.run import LoopConfig, create_selftrain, loop_from_dict, run_selftrain
from dynsdpb.selftrain.loops import (DROP_REASONS, HINT, drop_reason, has_rationale,
                                     star_prompt, star_traces, training_rows)
from dynsdpb.selftrain.round import RoundTask, teacher_cache
from dynsdpb.store import RunDir, read_json
from dynsdpb.engine.train import Arm
from tests.lm_tiny import tiny_llama, tiny_tokenizer

QUESTION = re.compile(r"what is (\d+) plus (\d+)")


def _rows(n: int, seed: int = 0):
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        a, b = rng.randrange(10), rng.randrange(10)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        out.append(LMExample(f"what is {a} plus {b}", _reasoned(a, b, a + b), str(a + b)))
    return out


def _reasoned(a: int, b: int, x: int) -> str:
    """A short rationale ending in the marked answer (tiny-vocabulary words only)."""
    return f"{a} plus {b} = {x} so the answer is {x}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama that has memorised the STaR prompt -> answer of every other question, a
    JSONL of 40 distinct questions, and a config that runs a round in seconds."""
    root = tmp_path_factory.mktemp("selftrain")
    rows = _rows(40)
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    m = tiny_llama(seed=0)
    taught = rows[::2]
    b = collate([encode(tok, LMExample(star_prompt(e.prompt), e.target), 64) for e in taught],
                tok.pad_token_id)
    labels = b.pop("labels")
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(150):
        loss = m(**b, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    (root / "model").mkdir()
    m.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    data = root / "arith.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": e.prompt, "target": e.target,
                                          "answer": e.answer}) for e in rows))
    cfg = RunConfig(model=str(root / "model"), dataset=str(data), val_size=2, test_size=6,
                    max_train_samples=0, max_len=64, steps=4, batch_size=4, eval_every=4,
                    checkpoint_every=1, probe_size=2, lr=1e-3, top_k=8, lora_r=4,
                    lora_alpha=8, lora_dropout=0.0, lora_target_modules="q_proj,v_proj",
                    max_new_tokens=14, save_model=False, eval_generations=1, warmup_ratio=0.0)
    return cfg, rows


class Scripted:
    """Generator stand-in: right on questions whose a is even (sample 0 only), wrong
    otherwise; right when given the hint; corrections right when a + b is odd. Counts calls
    per prompt kind; `sampled` counts the training-data generations (temperature > 0; the
    evaluation is greedy)."""

    def __init__(self):
        self.calls: list[str] = []
        self.sampled = 0

    def __call__(self, model, tok, prompts, *, max_new_tokens, temperature, n):
        out = []
        for p in prompts:
            a, b = map(int, QUESTION.search(p).groups())
            if "Hint" in p:
                kind, right = "hint", True
            elif "first attempt" in p:
                kind, right = "correct", (a + b) % 2 == 1
            else:
                kind, right = "answer", a % 2 == 0
            self.calls.append(kind)
            self.sampled += temperature > 0
            out.append([_reasoned(a, b, a + b if right and k == 0 else a + b + 1)
                        for k in range(n)])
        return out


def _opt(**kw):
    return LoopConfig(**{**dict(loop="star", rounds=1, questions=0, samples=1, temperature=0.7,
                                rationalize=False, round_start="continue"), **kw})


# ----------------------------------------------------------------------------------------
# options

def test_loop_options_bad_input_names_field_and_fix():
    with pytest.raises(ConfigError) as e:
        loop_from_dict({"loop": "dream", "rounds": "0", "samples": 3, "temperature": 0})
    fields = {p.field for p in e.value.problems}
    assert fields == {"loop", "rounds", "samples"}
    assert "temperature > 0" in str(e.value)
    with pytest.raises(ConfigError, match="rationalize.*STaR step"):
        loop_from_dict({"loop": "selfcorrect", "rationalize": "true"})
    with pytest.raises(ConfigError, match="questions=.*whole number"):
        loop_from_dict({"questions": "many"})
    with pytest.raises(ConfigError, match="unknown loop option"):
        loop_from_dict({"round": 2})
    assert loop_from_dict({"rationalize": "yes", "rounds": "3"}) == _opt(
        rounds=3, rationalize=True, questions=32, round_start="base")


def test_create_refuses_an_encoder(tmp_path):
    with pytest.raises(ConfigError, match="model=.*decoder"):
        create_selftrain(tmp_path / "x", RunConfig(model="tiny-random-bert",
                                                   dataset="tweets-sentiment"), _opt(),
                         ["vanilla"], [0])
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------
# filtering and rationalization bookkeeping (scripted generator)

def test_star_filter_and_rationalization_bookkeeping():
    qs = _rows(10)
    gen = Scripted()
    traces = star_traces(gen, None, None, qs, _opt(rationalize=True, samples=2), 8,
                         lambda got, gold: float(got == gold))
    even = [q for q in qs if int(QUESTION.search(q.prompt).group(1)) % 2 == 0]
    odd = [q for q in qs if q not in even]
    assert len(traces) == 2 * len(qs) + len(odd)       # 2 samples each, 1 hint per wrong q
    assert gen.calls.count("hint") == len(odd)
    assert sum(t["correct"] and not t["rationalized"] for t in traces) == len(even)
    rows = training_rows("star", traces)
    assert len(rows) == len(qs)                        # every question: one right trace
    assert sum(r["rationalized"] for r in rows) == len(odd)
    for r in rows:
        assert "Hint" not in r["prompt"] and r["prompt"] == star_prompt(r["question"])
        assert r["target"].endswith(f"so the answer is {r['answer']}")
    # a right trace generated twice is kept once
    assert len(training_rows("star", traces + [dict(traces[0])])) == len(rows)


def test_selfcorrect_rows_are_question_plus_first_attempt(tiny, tmp_path):
    cfg, rows = tiny
    gen = Scripted()
    d = create_selftrain(tmp_path / "sc", cfg, _opt(loop="selfcorrect", questions=8),
                         ["vanilla"], [0])
    out = run_selftrain(d, generate=gen)
    assert out["state"] == "finished", out
    rd = d / "round-01" / "vanilla-s0"
    traces = [json.loads(x) for x in (rd / "traces.jsonl").read_text().splitlines()]
    kept = [json.loads(x) for x in (rd / "train.jsonl").read_text().splitlines()]
    assert len(traces) == 8 and {t["first"] for t in traces} and \
        all(t["first_correct"] == (int(QUESTION.search(t["question"]).group(1)) % 2 == 0)
            for t in traces)
    assert len(kept) == sum(t["correct"] for t in traces) > 0
    for k in kept:
        assert k["prompt"].startswith(k["question"]) and "first attempt" in k["prompt"]
    info = read_json(rd / "round.json")
    assert info["kept"] == len(kept)
    assert info["fixed"] == sum(t["correct"] and not t["first_correct"] for t in traces)
    assert {"test_first_exact_match", "test_exact_match"} <= set(info)
    s = read_json(d / "summary.json")
    assert s["rounds"][0]["methods"]["vanilla"]["kept"]["mean"] == len(kept)


# ----------------------------------------------------------------------------------------
# resume after a kill

class Killed(Exception):
    pass


def _loss_by_step(rd):
    return [(r["step"], round(r["loss"], 6)) for r in RunDir(rd).metrics()]


def test_round_resume_after_a_kill_equals_an_uninterrupted_loop(tiny, tmp_path):
    cfg, _ = tiny
    opt = _opt(rounds=2, questions=12, rationalize=True)
    methods = ["vanilla", "dynsdpb"]
    ref = create_selftrain(tmp_path / "ref", cfg, opt, methods, [0])
    assert run_selftrain(ref, generate=Scripted())["state"] == "finished"

    d = create_selftrain(tmp_path / "cut", cfg, opt, methods, [0])
    gen = Scripted()

    def die(who, rec):   # killed in round 2 after dynsdpb's step 3 was checkpointed
        if rec.get("step") == 3 and who == "dynsdpb-s0" and (d / "round-02" / who /
                                                              "train.jsonl").is_file():
            raise Killed
    with pytest.raises(Killed):
        run_selftrain(d, progress=die, generate=gen)
    r1 = d / "round-01" / "dynsdpb-s0" / "round.json"
    stamp = r1.stat().st_mtime_ns
    sampled = gen.sampled
    out = run_selftrain(d, resume=True, generate=gen)
    assert out["state"] == "finished"
    assert gen.sampled == sampled                       # no training data generated again
    assert r1.stat().st_mtime_ns == stamp               # round 1 not redone
    st = RunDir(d / "round-02" / "dynsdpb-s0").raw_status()
    assert st["state"] == "finished" and st["resumed_from"] == 3
    for arm in ("vanilla-s0", "dynsdpb-s0"):
        for r in ("round-01", "round-02"):
            assert _loss_by_step(d / r / arm) == _loss_by_step(ref / r / arm), (r, arm)
            a, b = read_json(d / r / arm / "round.json"), read_json(ref / r / arm / "round.json")
            for k in ("kept", "rationalized", "steps", "test_exact_match", "aligned_tokens",
                      "dropped_tokens"):
                assert a[k] == b[k], (r, arm, k)
    assert read_json(d / "summary.json")["rounds"] == read_json(ref / "summary.json")["rounds"]
    assert RunDir(d).raw_status()["state"] == "finished"


# ----------------------------------------------------------------------------------------
# alignment of the carried cache on regenerated targets

def _task(cfg, round_rows, carried=None, r=1):
    from dynsdpb.tasks import prepare
    shared = prepare(cfg)
    rows = [dict(prompt=star_prompt(q), target=t, answer=a, question=q, rationalized=False)
            for q, t, a in round_rows]
    return shared, RoundTask(shared, r, "star", rows, list(shared.val.examples),
                             list(shared.test.examples), Scripted(), carried)


def test_alignment_on_regenerated_targets_exact_counts(tiny, tmp_path):
    cfg, _ = tiny
    cfg = cfg.replace(steps=2, batch_size=4, method="dynsdpb")
    q = [f"what is {a} plus 1" for a in range(4)]
    # round r: the targets the cache is computed on (target ids + eos)
    old = [(q[0], "the answer is 1", "1"),   # 4 + eos = 5 tokens
           (q[1], "the answer is 2", "2"),
           (q[2], "so 3", "3"),              # 2 + eos = 3 tokens
           (q[3], "the answer is 4", "4")]
    shared, t_old = _task(cfg, old)
    model = shared.build_model(cfg, "old")
    with torch.no_grad():     # the round-r model differs from the base (its LoRA B != 0)
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    cache = teacher_cache(t_old, model, cfg, torch.device("cpu"))
    assert [len(cache[x]["target_ids"]) for x in q] == [5, 5, 3, 5]
    # round r+1: regenerated targets
    new = [(q[0], "the answer is 1", "1"),   # same: 5 kept, 0 dropped
           (q[1], "the answer is so 2", "2"),  # 'the answer is' kept (3), 2 dropped
           (q[2], "the answer is 3", "3"),   # first token differs: 0 kept, 3 dropped
           (q[3], "the answer is 4 4", "4")]  # cached 4 tokens kept, eos dropped: 4, 1
    _, task = _task(cfg, new, cache, r=2)
    rd = RunDir(tmp_path / "arm")
    rd.path.mkdir()
    arm = Arm(cfg, task, rd, device=torch.device("cpu"))
    task.attach(arm)
    want = {"cache_questions": 4, "rows": 4, "aligned_tokens": 5 + 3 + 0 + 4,
            "dropped_tokens": 0 + 2 + 3 + 1}
    assert task.alignment_counts() == want
    rec = arm.step()          # step 1: four new rows, no DLB teacher, all taught by the cache
    assert rec["kd"] > 1e-4 and rec["alpha"] is not None
    arm.step()
    assert task.applied == {"rows": 4, "aligned_tokens": 12}
    # the vanilla arm has no teacher: the cache is never used
    _, tv = _task(cfg, new, cache, r=3)
    va = Arm(cfg.replace(method="vanilla"), tv, RunDir(tmp_path / "v"),
             device=torch.device("cpu"))
    tv.attach(va)
    assert va.step()["kd"] == 0 and tv.alignment_counts()["rows"] == 0


# ----------------------------------------------------------------------------------------
# one real round end to end (real sampling on a tiny model)

def test_one_real_star_round_end_to_end(tiny, tmp_path):
    cfg, rows = tiny
    d = create_selftrain(tmp_path / "e2e", cfg, _opt(questions=12, temperature=0.0,
                                                     carry_teacher=True),
                         ["vanilla", "dynsdpb"], [0])
    out = run_selftrain(d)               # the real generator: sample() on the tiny model
    assert out["state"] == "finished", out
    base = read_json(d / "round-00" / "baseline.json")
    assert 0 <= base["test_exact_match"] <= 1
    infos = {a: read_json(d / "round-01" / a / "round.json") for a in ("vanilla-s0",
                                                                     "dynsdpb-s0")}
    v, dy = infos["vanilla-s0"], infos["dynsdpb-s0"]
    # round 1 generates with the base model for both arms: the same traces, paired
    assert v["kept"] == dy["kept"] and 0 < v["kept"] < 12
    assert v["steps"] == dy["steps"] == cfg.steps
    traces = (d / "round-01" / "vanilla-s0" / "traces.jsonl").read_text()
    assert traces == (d / "round-01" / "dynsdpb-s0" / "traces.jsonl").read_text()
    # the memorised questions (every other one) are the ones kept
    kept = [json.loads(x)["question"] for x in
            (d / "round-01" / "vanilla-s0" / "train.jsonl").read_text().splitlines()]
    assert set(kept) <= {e.prompt for e in rows[::2]}
    ev = (d / "round-01" / "dynsdpb-s0" / "eval.jsonl").read_text().splitlines()
    assert len(ev) == cfg.test_size
    assert (d / "round-01" / "dynsdpb-s0" / "cache.pt").is_file()      # carried on
    # every trace not kept has its reason, and round.json counts them
    assert v["kept"] + sum(v[f"drop_{k}"] for k in DROP_REASONS) == v["traces"]
    assert 0 <= base["test_strict_exact_match"] <= base["test_exact_match"]
    assert not (d / "round-01" / "vanilla-s0" / "cache.pt").exists()    # vanilla: no teacher
    s = read_json(d / "summary.json")
    row = s["rounds"][0]["methods"]["dynsdpb"]
    assert set(row["test_exact_match"]) >= {"mean", "std", "per_seed", "diff_vs_vanilla"}
    assert row["kept"]["per_seed"] == {"0": v["kept"]}
    assert s["state"] == "finished"


def test_sample_gives_n_per_prompt(tiny):
    from dynsdpb.decoder.models import load_causal_lm, load_lm_tokenizer
    cfg, _ = tiny
    tok, m = load_lm_tokenizer(cfg.model), load_causal_lm(cfg.model)
    torch.manual_seed(0)
    out = sample(m, tok, ["what is 1 plus 2", "what is 3 plus 3", "what is 0 plus 0"],
                 max_new_tokens=4, temperature=1.0, n=3, batch_size=2)
    assert [len(o) for o in out] == [3, 3, 3]
    assert HINT.format(answer=3) not in out[0][0]


# ----------------------------------------------------------------------------------------
# CLI and JobManager

def test_cli_selftrain_runs_resumes_and_refuses_bad_input_in_one_line(tiny, tmp_path, capsys):
    from dynsdpb.cli.main import main
    cfg, _ = tiny
    out = tmp_path / "cli"
    rc = main(["selftrain", "--loop", "dream", "--model", cfg.model, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "loop='dream'" in err and not out.exists()
    rc = main(["resume", str(tmp_path)])
    assert rc == 2 and "not an experiment folder" in capsys.readouterr().err
    flags = ["--model", cfg.model, "--dataset", cfg.dataset, "--val-size", "2", "--test-size",
             "4", "--max-train-samples", "0", "--max-len", "48", "--steps", "2",
             "--batch-size", "4", "--lora-target-modules", "q_proj,v_proj", "--lora-r", "4",
             "--max-new-tokens", "4", "--probe-size", "2", "--save-model", "false",
             "--top-k", "8", "--eval-every", "2"]
    rc = main(["selftrain", *flags, "--methods", "vanilla,dynsdpb", "--seeds", "0",
               "--loop", "star", "--rounds", "1", "--questions", "6", "--temperature", "0",
               "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "round 1: generating" in cap.err and "dynsdpb" in cap.out and "state: finished" \
        in cap.out
    assert "expected time: about" in cap.err.splitlines()[0]      # said before it starts
    stamp = (out / "round-01" / "vanilla-s0" / "round.json").stat().st_mtime_ns
    assert main(["selftrain", "--resume", str(out)]) == 0      # nothing left: nothing redone
    assert (out / "round-01" / "vanilla-s0" / "round.json").stat().st_mtime_ns == stamp
    assert main(["selftrain", "--demo", "--out", str(out)]) == 2    # --out not empty
    assert "already holds a self-training loop" in capsys.readouterr().err


def test_jobmanager_runs_a_selftrain_loop_in_its_queue(tiny, tmp_path):
    from dynsdpb.jobs.queue import JobManager
    cfg, _ = tiny
    jm = JobManager(tmp_path / "runs", isolation="thread")
    try:
        with pytest.raises(ConfigError, match="samples"):
            jm.submit_selftrain(cfg, _opt(samples=2, temperature=0), ["vanilla"], [0])
        assert list((tmp_path / "runs").iterdir()) == []       # refused before any folder
        job = jm.submit_selftrain(cfg, _opt(questions=6, temperature=0), ["vanilla"], [0],
                                  name="loop")
        assert jm.wait_idle(300)
        assert job.error == ""
        assert RunDir(job.exp_dir).raw_status()["state"] == "finished"
        assert read_json(job.exp_dir / "summary.json")["rounds"][0]["methods"]["vanilla"]
        again = jm.resume("loop")            # a finished loop: resuming redoes nothing
        assert jm.wait_idle(120) and again.error == ""
    finally:
        jm.close()


def _selftrain_page():
    """AppTest on the Self-training page (the runs directory from DYNSDPB_RUNS_DIR), after
    checking that it drew without an exception."""
    from streamlit.testing.v1 import AppTest
    from dynsdpb.paths import APP_MAIN
    at = AppTest.from_file(str(APP_MAIN), default_timeout=120)
    at.run()
    at.switch_page(str(APP_MAIN.parent.parent / "pages" / "selftrain.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_page_shows_rounds_curves_and_kept_rationales(tiny, tmp_path, monkeypatch):
    import streamlit as st
    from dynsdpb.paths import APP_MAIN
    cfg, _ = tiny
    runs = tmp_path / "runs"
    monkeypatch.setenv("DYNSDPB_RUNS_DIR", str(runs))
    monkeypatch.setenv("DYNSDPB_ISOLATION", "thread")
    d = create_selftrain(runs / "loop", cfg, _opt(questions=8, rationalize=True),
                         ["vanilla", "dynsdpb"], [0])
    assert run_selftrain(d, generate=Scripted())["state"] == "finished"
    st.cache_resource.clear()
    try:
        at = _selftrain_page()
        assert at.title[0].value == "Self-training"
        page = " ".join(str(getattr(e, "value", "")) for e in at.main)
        assert "finished" in page and "vanilla" in " ".join(c.value for c in at.code)
        assert len(at.get("plotly_chart")) >= 3          # kept, accuracy, inner loss curves
        rounds = at.dataframe[0].value            # per round and arm: phase, kept, why not
        assert set(rounds["phase"]) == {"done"} and list(rounds["kept"]) == [
            (read_json(runs / "loop" / "round-01" / a / "round.json"))["kept"]
            for a in ("vanilla-s0", "dynsdpb-s0")]
        df = at.dataframe[1].value
        assert len(df) > 0 and {"prompt", "target", "rationalized"} <= set(df.columns)
        # one naming for answers everywhere: the gold one and the model's
        assert "gold answer" in df.columns and "answer" not in df.columns
        assert not [e for e in at.info if "Nothing generated" in e.value]
        # each round's runs can be overlaid on Compare and followed on Live, named by round
        pages = APP_MAIN.parent.parent / "pages"
        at.switch_page(str(pages / "compare.py")).run()
        assert not at.exception, [e.value for e in at.exception]
        assert "loop: round 1 / dynsdpb-s0 (finished)" in at.multiselect(key="w_cmp_pick").options
        at.switch_page(str(pages / "live.py")).run()
        assert not at.exception, [e.value for e in at.exception]
        assert any(o.startswith("loop: round 1") for o in at.selectbox(key="w_live_pick").options)
        at.switch_page(str(pages / "runs.py")).run()     # and found on Runs, with its state
        assert not at.exception, [e.value for e in at.exception]
        loops = next(d.value for d in at.dataframe if "loop" in d.value.columns)
        assert list(loops["state"]) == ["finished"] and list(loops["round"]) == ["1/1"]
        at.button(key="btn_runs_loop_open").click().run()
        assert at.title[0].value == "Self-training"
        at.switch_page(str(pages / "selftrain.py")).run()
        assert not any("Hint" in p for p in df["prompt"])
        # bad loop options: the field and the fix, nothing queued
        at.session_state["w_st_samples"] = 2
        at.session_state["w_st_temperature"] = 0.0
        at.run()
        at.button[1].click().run()                      # Start (after the preset button)
        assert any("samples" in e.value for e in at.error), [e.value for e in at.error]
        assert [p.parent.name for p in runs.glob("*/selftrain.json")] == ["loop"]
    finally:
        st.cache_resource.clear()


def test_a_round_that_kept_nothing_says_why_in_its_file_and_on_the_page(tiny, tmp_path,
                                                                       monkeypatch):
    """Issue 20: a round with no right trace said so only in an arm's status.json, and the
    page then showed "No train.jsonl in this round yet" for a finished round."""
    import streamlit as st

    def wrong(model, tok, prompts, *, max_new_tokens, temperature, n):
        return [["so 0"] * n for _ in prompts]
    cfg, _ = tiny
    runs = tmp_path / "runs"
    monkeypatch.setenv("DYNSDPB_RUNS_DIR", str(runs))
    monkeypatch.setenv("DYNSDPB_ISOLATION", "thread")
    d = create_selftrain(runs / "loop", cfg, _opt(questions=6), ["vanilla"], [0])
    assert run_selftrain(d, generate=wrong)["state"] == "finished"
    info = read_json(d / "round-01" / "vanilla-s0" / "round.json")
    assert info["kept"] == 0
    assert info["note"].startswith("none of the 6 traces ended with the gold answer")
    st.cache_resource.clear()
    try:
        at = _selftrain_page()
        rounds = at.dataframe[0].value
        assert list(rounds["kept"]) == [0] and list(rounds["phase"]) == ["done"]
        assert rounds["note"][0] == info["note"]
        said = [e.value for e in at.info]
        assert any(s.startswith("Nothing was kept in this round: none of the 6") for s in said)
        assert not any("No train.jsonl" in s for s in said), said
        assert "Stop" not in [b.label for b in at.button]
    finally:
        st.cache_resource.clear()


# ----------------------------------------------------------------------------------------
# kept rationales: finished, a marked right answer, reasoning before it; drops by reason

def test_star_keeps_only_finished_reasoned_traces_and_says_why_others_dropped():
    from dynsdpb.decoder.generation import Completion
    score = lambda got, gold: float(got == gold)              # noqa: E731
    q = "what is 8 plus 7"
    cases = [
        (Completion("8 plus 7 = 15 so the answer is 15", False), None),
        (Completion("8 + 7 = 15", False), "unmarked"),          # no marked answer
        (Completion("The answer is 15.", False), "no_reasoning"),
        (Completion("Provide a number: 15", False), "unmarked"),
        (Completion("8 plus 7 = 1", True), "wrong"),
        (Completion("8 plus 7 makes 15 and 15 is", True), "truncated"),  # cut off at the budget
        (Completion("8 plus 7 = 16 so the answer is 16", False), "wrong"),
    ]

    def gen(model, tok, prompts, *, max_new_tokens, temperature, n):
        return [[c for c, _ in cases]]
    traces = star_traces(gen, None, None, [LMExample(q, "", "15")],
                         _opt(samples=len(cases)), 8, score)
    rows = training_rows("star", traces + [dict(traces[0])])
    assert [t["drop_reason"] for t in traces] == [w for _, w in cases]
    assert len(rows) == 1 and rows[0]["target"] == "8 plus 7 = 15 so the answer is 15"
    assert [t["truncated"] for t in traces[:len(cases)]] == [False] * 4 + [True, True, False]
    assert has_rationale("3 plus 4 = 7 so the answer is 7") and not has_rationale("#### 7")
    assert drop_reason("selfcorrect", dict(traces[2])) is None   # no rationale needed there


def test_star_prompt_asks_for_a_rationale_ending_in_a_marked_answer():
    p = star_prompt("What is 2 + 2?")
    assert "The answer is N." in p and p.startswith("What is 2 + 2?\n")
    # arith-easy's products order the bare result: the STaR prompt drops that order
    p = star_prompt("Solve the following multiplication: 4 * 4. Give only the result as your "
                    "final answer.")
    assert p.startswith("Solve the following multiplication: 4 * 4.\n")
    assert "only the result" not in p and "The answer is N." in p


# ----------------------------------------------------------------------------------------
# self-correction: a teacher computed on another prompt teaches nothing

def test_selfcorrect_teacher_on_another_first_attempt_is_dropped_not_aligned(tiny, tmp_path):
    from dynsdpb.selftrain.loops import correct_prompt
    from dynsdpb.tasks import prepare
    cfg, _ = tiny
    cfg = cfg.replace(steps=2, batch_size=4, method="dynsdpb")
    shared = prepare(cfg)
    qs = [f"what is {a} plus 1" for a in range(4)]
    tgt = [f"{a} plus 1 = {a + 1} so the answer is {a + 1}" for a in range(4)]

    def task(first: list[str], carried=None, r=1):
        rows = [dict(prompt=correct_prompt(q, f), target=t, answer="0", question=q,
                     rationalized=False) for q, f, t in zip(qs, first, tgt)]
        return RoundTask(shared, r, "selfcorrect", rows, list(shared.val.examples),
                         list(shared.test.examples), Scripted(), carried)
    old = task(["so 9", "so 9", "so 9", "so 9"])
    model = shared.build_model(cfg, "old")
    cache = teacher_cache(old, model, cfg, torch.device("cpu"))
    # next round: the same targets; questions 0 and 1 got another first attempt (other prompt)
    new = task(["so 5", "so 6", "so 9", "so 9"], cache, r=2)
    arm = Arm(cfg, new, RunDir(tmp_path / "arm"), device=torch.device("cpu"))
    new.attach(arm)
    n = [len(cache[q]["target_ids"]) for q in qs]
    assert new.alignment_counts() == {"cache_questions": 4, "rows": 4,
                                      "aligned_tokens": n[2] + n[3],
                                      "dropped_tokens": n[0] + n[1]}
    arm.step()
    arm.step()
    assert new.applied["rows"] == 2 and new.applied["aligned_tokens"] == n[2] + n[3]


# ----------------------------------------------------------------------------------------
# STaR as published, the DLB-faithful round start, the base-mode model

class Recorder(Scripted):
    """Scripted, and all wrong from the second round of training-data generation on; records
    the LoRA B norm of the model of every greedy (evaluation) call: 0 = the base model."""

    def __init__(self):
        super().__init__()
        self.rounds, self.eval_norms = 0, []

    def __call__(self, model, tok, prompts, *, max_new_tokens, temperature, n):
        if temperature > 0 and "Hint" not in prompts[0]:
            self.rounds += 1
        if temperature == 0:
            self.eval_norms.append(float(sum(p.detach().abs().sum() for name, p in
                                             model.named_parameters() if "lora_B" in name)))
        out = super().__call__(model, tok, prompts, max_new_tokens=max_new_tokens,
                               temperature=temperature, n=n)
        if temperature > 0 and self.rounds >= 2:
            out = [[c.replace("the answer is", "the answer is 1") for c in cs] for cs in out]
        return out


def test_star_defaults_restart_from_base_with_growing_steps(tiny, tmp_path):
    cfg, _ = tiny
    opt = LoopConfig(rounds=2, questions=8)
    assert (opt.round_start, opt.step_growth, opt.carry_teacher) == ("base", 1.2, False)
    assert [opt.round_steps(40, r) for r in (1, 2, 3)] == [40, 48, 58]
    d = create_selftrain(tmp_path / "star", cfg, opt, ["vanilla"], [0])
    gen = Recorder()
    assert run_selftrain(d, generate=gen)["state"] == "finished"
    r1 = read_json(d / "round-01" / "vanilla-s0" / "round.json")
    r2 = read_json(d / "round-02" / "vanilla-s0" / "round.json")
    assert r1["steps"] == cfg.steps and r1["kept"] > 0
    # round 2 kept nothing: base mode tests the base model, the one round 3 would generate with
    assert r2["kept"] == 0 and r2["steps"] == 0
    assert gen.eval_norms[0] == 0 and gen.eval_norms[1] > 0 and gen.eval_norms[-1] == 0


def test_a_round_starts_like_dlb_step_one_unless_carry_teacher(tiny, tmp_path):
    cfg, _ = tiny
    for carry in (False, True):
        opt = _opt(rounds=2, questions=12, step_growth=1.0, carry_teacher=carry)
        d = create_selftrain(tmp_path / f"c{carry}", cfg, opt, ["dynsdpb"], [0])
        assert run_selftrain(d, generate=Scripted())["state"] == "finished"
        rd = d / "round-02" / "dynsdpb-s0"
        info = read_json(rd / "round.json")
        first = RunDir(rd).metrics()[0]
        assert (d / "round-01" / "dynsdpb-s0" / "cache.pt").is_file() == carry
        if carry:      # [ours] the old cross-round teacher: step 1 already distils
            assert info["cache_questions"] > 0 and info["rows"] > 0
            assert first["alpha"] is not None
        else:          # DLB: step 1 is plain CE, nothing carried across rounds
            assert info["cache_questions"] == 0 and info["rows"] == 0
            assert first["alpha"] is None and not first["kd"]
    with pytest.raises(ConfigError, match="carry_teacher"):
        loop_from_dict({"round_start": "base", "carry_teacher": "true"})


def test_cli_selftrain_defaults_are_the_cpu_demo_with_a_short_expected_time():
    from dynsdpb.cli.main import build_parser
    from dynsdpb.cli.selftrain import selftrain_setup
    from dynsdpb.selftrain.run import CPU_DEMO, expected_seconds
    args = ["selftrain", "--model", "smollm2-135m", "--dataset", "arith-easy", "--loop",
            "star", "--rounds", "1", "--methods", "vanilla,dynsdpb", "--seeds", "0"]
    base, loop, methods, seeds = selftrain_setup(build_parser().parse_args(args))
    assert {k: getattr(base, k) for k in CPU_DEMO["config"]} == CPU_DEMO["config"]
    assert (loop.questions, loop.round_start, loop.rounds) == (32, "base", 1)
    assert expected_seconds(base, loop, methods, seeds) < 15 * 60
    # what the same command trained before: the field defaults, 200 steps of 16 (1.5 h)
    old = RunConfig(model="smollm2-135m", dataset="arith-easy")
    assert expected_seconds(old, loop, methods, seeds) > 60 * 60


def test_round_charts_before_any_round_say_so_and_keep_their_titles_whole(tiny, tmp_path,
                                                                          monkeypatch):
    """Issue 20 (charts that cannot be misread): before a round finished, the kept-traces
    chart drew empty axes from -1 (read as "nothing kept"), and the accuracy chart's title (95
    characters) was cut at both ends in its half-width column."""
    import streamlit as st
    from app.livechart import figure_of
    cfg, _ = tiny
    runs = tmp_path / "runs"
    monkeypatch.setenv("DYNSDPB_RUNS_DIR", str(runs))
    create_selftrain(runs / "loop", cfg, _opt(questions=6), ["vanilla"], [0])
    st.cache_resource.clear()
    try:
        at = _selftrain_page()
        kept, acc = (figure_of(e, at.session_state) for e in at.get("plotly_chart")[:2])
        notes = [[a["text"] for a in f["layout"].get("annotations", [])] for f in (kept, acc)]
        assert notes == [["no round has finished yet"], ["no test results yet"]]
        assert kept["layout"]["yaxis"]["range"][0] == 0
        for f in (kept, acc):
            assert len(f["layout"]["title"]["text"]) <= 32, f["layout"]["title"]
            assert f["layout"]["title"]["subtitle"]["text"]
    finally:
        st.cache_resource.clear()


def test_the_loops_status_names_an_arm_only_in_a_phase_about_one(tiny, tmp_path, monkeypatch):
    """Seen in a real loop on the Self-training page: "round 1/1: training (dynsdpb-s0)" while
    both arms trained in lockstep; the arm was left over from the generating phase (the status
    file merges what each write gives)."""
    cfg, _ = tiny
    d = create_selftrain(tmp_path / "loop", cfg, _opt(questions=8), ["vanilla", "dynsdpb"], [0])
    seen: list[tuple[str, str | None]] = []
    real = RunDir.set_status

    def spy(self, state, **kw):
        out = real(self, state, **kw)
        if self.path == d and state == "running":
            seen.append((out.get("phase"), out.get("arm")))
        return out
    monkeypatch.setattr(RunDir, "set_status", spy)
    assert run_selftrain(d, generate=Scripted())["state"] == "finished"
    phases = dict(seen)
    assert phases.get("generating") in ("vanilla-s0", "dynsdpb-s0"), seen
    assert "training" in phases and phases["training"] is None, seen
    assert phases["finishing round"] is None, seen
