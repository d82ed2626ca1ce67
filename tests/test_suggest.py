"""Suggesting the anchor dictionary: the LLM route against a real OpenAI-compatible HTTP server on
loopback (the real `openai` client over real HTTP, scripted replies), and the offline route on the
embedded model with the demo corpus."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import ASSETS, run_cli
from engine.anchors import AnchorDictionary, load_anchors
from engine.errors import UserError
from engine.suggest import LLMConfig, accept_rows, parse_reply, split_chunks, suggest_llm
from helpers import KEY, FakeOpenAI, good_terms, llm_cfg as cfg, reply as _reply
from helpers import SUGGEST_CORPUS as CORPUS

def test_split_chunks_keeps_paragraphs_and_all_words():
    text = "\n\n".join(f"Paragraph {i} " + "word " * 30 + "end." for i in range(10))
    chunks = split_chunks(text, 80)
    assert len(chunks) == 5  # two 33-word paragraphs per chunk, never split in the middle
    assert all(c.startswith("Paragraph") and c.endswith("end.") for c in chunks)
    assert sum(len(c.split()) for c in chunks) == len(text.split())
    long = " ".join(f"Sentence {i} has five words." for i in range(100))  # one 500-word paragraph
    parts = split_chunks(long, 60)
    assert all(len(p.split()) <= 60 for p in parts) and sum(len(p.split()) for p in parts) == 500
    assert all(p.startswith("Sentence") for p in parts)


def test_parse_reply_is_strict_json_and_checks_the_text():
    chunk = "Harry went to Hogwarts."
    pairs, dropped = parse_reply('```json\n{"terms": [{"term": "Harry", "translation": "Jon"},'
                                 '{"term": "Gandalf", "translation": "x"}, {"term": 3}]}\n```', chunk)
    assert pairs == [("Harry", "Jon")] and dropped == 2
    for bad in ("", "not json", "{'terms': []}", '{"words": []}', "__import__('os').system('true')"):
        with pytest.raises(ValueError):
            parse_reply(bad, chunk)


def test_llm_route_merges_chunks_consolidates_and_reports_progress():
    with FakeOpenAI(lambda n, chunk, body: (200, _reply(json.dumps(good_terms(chunk)))), delay=0.05) as srv:
        seen = []
        result = suggest_llm(CORPUS, cfg(srv.url, chunk_words=15, concurrency=2), api_key=KEY,
                             progress=lambda d, t: seen.append((d, t, threading.current_thread())))
    n_chunks = len(split_chunks(CORPUS, 15))
    assert n_chunks == 4 and len(srv.calls) == 4
    assert [(d, t) for d, t, _ in seen] == [(i, 4) for i in range(5)]
    assert all(th is threading.main_thread() for _, _, th in seen)  # drawable by a UI
    assert srv.max_in_flight == 2  # bounded pool, and really concurrent
    assert all(a == f"Bearer {KEY}" for a in srv.auth)
    assert srv.calls[0]["response_format"] == {"type": "json_object"}
    by_term = {s.term: s for s in result.items}
    assert by_term["Harry"].candidates == ["Jon"] and by_term["Harry"].score == 2  # named in two chunks
    assert by_term["Harry"].count == 3 and "Hogwarts" in by_term["Harry"].example
    assert by_term["Hogwarts"].candidates == ["Mystic Academy"]
    assert "Snape" not in by_term  # not in the text
    # the reference's consolidation: possessive of a term, multi-word term made of terms
    assert "Hagrid's" not in by_term and "Harry Potter" not in by_term
    assert any("Harry Potter" in r for r in result.report) and any("Hagrid's" in r for r in result.report)
    assert "Forbidden Forest" in by_term and not result.failures


def test_malformed_reply_is_retried_once_then_reported_by_chunk():
    def script(n, chunk, body):
        if "Quidditch" in chunk:
            return 200, _reply("Sure! Here are the terms: Quidditch -> Skyball")
        if "Expelliarmus" in chunk and not getattr(script, "retried", False):
            script.retried = True  # malformed once, fine on the retry
            return 200, _reply('{"terms": [')
        return 200, _reply(json.dumps(good_terms(chunk)))

    with FakeOpenAI(script) as srv:
        result = suggest_llm(CORPUS, cfg(srv.url, chunk_words=15, concurrency=1), api_key=KEY)
    assert len(srv.calls) == 6  # 4 chunks + one retry each for the two bad ones
    assert len(result.failures) == 1 and result.failures[0].startswith("chunk 2 of 4")
    terms = {s.term for s in result.items}
    assert {"Hogwarts", "Expelliarmus", "Forbidden Forest"} <= terms  # the other chunks survive
    assert "Quidditch" not in terms


def test_401_is_a_clear_error_without_the_key(tmp_path):
    def script(n, chunk, body):
        return 401, {"error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error",
                               "code": "invalid_api_key"}}

    with FakeOpenAI(script) as srv:
        with pytest.raises(UserError) as e:
            suggest_llm(CORPUS, cfg(srv.url, chunk_words=15, concurrency=1), api_key=KEY)
        assert len(srv.calls) == 1  # the queued chunks never start after a fatal error
        out = tmp_path / "anchors.json"
        r = run_cli("anchors", "suggest", "--corpus", str(_corpus_file(tmp_path)), "--base-url", srv.url,
                    "--model", "m", "--out", str(out), env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": srv.url})
    assert "401" in str(e.value) and "OPENAI_API_KEY" in str(e.value) and KEY not in str(e.value)
    assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith("error: ") and "401" in r.stderr
    assert KEY not in r.stderr + r.stdout and not out.exists()  # no partial dictionary


def test_429_is_retried_with_backoff_then_a_clear_error():
    def flaky(n, chunk, body):  # the first two requests are rate limited, then fine
        if n < 2:
            return 429, {"error": {"message": "Rate limit reached", "type": "requests"}}
        return 200, _reply(json.dumps(good_terms(chunk)))

    with FakeOpenAI(flaky) as srv:
        result = suggest_llm(CORPUS, cfg(srv.url, chunk_words=1000, retries=3), api_key=KEY)
    assert len(srv.calls) == 3 and "Hogwarts" in {s.term for s in result.items}

    with FakeOpenAI(lambda n, c, b: (429, {"error": {"message": "Rate limit reached"}})) as srv:
        t0 = time.monotonic()
        with pytest.raises(UserError, match=r"429.*after 2 retries"):
            suggest_llm(CORPUS, cfg(srv.url, chunk_words=1000, retries=2, backoff=0.1), api_key=KEY)
        elapsed = time.monotonic() - t0
    assert len(srv.calls) == 3  # bounded: 1 + 2 retries
    assert 0.3 <= elapsed < 5  # slept 0.1 then 0.2: exponential backoff


def test_server_without_json_mode_and_timeouts():
    def no_json_mode(n, chunk, body):
        if "response_format" in body:
            return 400, {"error": {"message": "response_format is not supported"}}
        return 200, _reply(json.dumps(good_terms(chunk)))

    with FakeOpenAI(no_json_mode) as srv:
        result = suggest_llm(CORPUS, cfg(srv.url, chunk_words=1000), api_key=KEY)
    assert "Hogwarts" in {s.term for s in result.items} and "response_format" not in srv.calls[-1]

    with FakeOpenAI(lambda n, c, b: (200, _reply("{}")), delay=1.0) as srv:
        with pytest.raises(UserError, match="timeout"):
            suggest_llm(CORPUS, cfg(srv.url, chunk_words=1000, timeout=0.2, retries=1), api_key=KEY)
    assert len(srv.calls) == 2


def test_unreachable_endpoint_and_empty_corpus(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=r"cannot reach http://127\.0\.0\.1:\d+/v1") as e:
        suggest_llm(CORPUS, cfg(f"http://127.0.0.1:{port}/v1"), api_key=KEY)
    assert KEY not in str(e.value)
    with pytest.raises(UserError, match="corpus is empty"):
        suggest_llm(" \n\n ", cfg(f"http://127.0.0.1:{port}/v1"), api_key=KEY)
    with pytest.raises(UserError, match="base URL"):
        LLMConfig("127.0.0.1:8000", "m")


def test_replies_that_are_never_json_are_a_clear_error():
    with FakeOpenAI(lambda n, c, b: (200, "<html>proxy login</html>")) as srv:
        with pytest.raises(UserError, match=r"not a chat completion.*base URL"):
            suggest_llm(CORPUS, cfg(srv.url, chunk_words=1000), api_key=KEY)
    with FakeOpenAI(lambda n, c, b: (200, _reply("Here are some terms: Harry, Hogwarts."))) as srv:
        with pytest.raises(UserError, match=r"no usable reply.*chunk 1 of 1.*not JSON"):
            suggest_llm(CORPUS, cfg(srv.url, chunk_words=1000), api_key=KEY)
    assert len(srv.calls) == 2  # retried once


def _corpus_file(tmp_path: Path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(CORPUS, encoding="utf-8")
    return p


def test_cli_writes_the_dictionary_atomically_and_never_the_key(tmp_path):
    out = tmp_path / "suggested.json"
    with FakeOpenAI(lambda n, chunk, body: (200, _reply(json.dumps(good_terms(chunk))))) as srv:
        r = run_cli("anchors", "suggest", "--corpus", str(_corpus_file(tmp_path)), "--base-url", srv.url,
                    "--model", "m", "--chunk-words", "50", "--out", str(out), "--json",
                    env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": srv.url})
    assert r.returncode == 0, r.stderr
    assert srv.auth[0] == f"Bearer {KEY}"
    saved = load_anchors(out)
    assert saved.entries["Hogwarts"] == ["Mystic Academy"] and "Harry Potter" not in saved.entries
    report = json.loads(r.stdout)
    assert {row["term"] for row in report["suggestions"]} == set(saved.entries)
    assert KEY not in r.stdout + r.stderr + out.read_text()
    assert all(KEY not in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())


def test_accept_rows_merges_into_the_existing_dictionary():
    existing = AnchorDictionary({"Harry": ["Jon"], "Ron": ["Mark"]}, {"Ron"})
    rows = [{"accept": True, "term": "Harry", "translation": "Tom | Jon"},
            {"accept": True, "term": "Hogwarts", "translation": "Mystic Academy"},
            {"accept": False, "term": "Quidditch", "translation": "Skyball"},
            {"accept": True, "term": "Hedwig", "translation": ""}]
    merged, skipped = accept_rows(rows, existing)
    assert merged.entries == {"Harry": ["Jon", "Tom"], "Ron": ["Mark"], "Hogwarts": ["Mystic Academy"]}
    assert merged.disabled == {"Ron"} and existing.entries["Harry"] == ["Jon"]  # a copy
    assert len(skipped) == 1 and "Hedwig" in skipped[0]
    assert not merged.validate()


# -- offline route ----------------------------------------------------------------------------------
def test_candidates_are_names_not_sentence_starts():
    from engine.suggest.offline import _candidates

    text = ("The Dursleys lived on Privet Drive. When Voldemort came, the Dursleys hid. Harry Potter and "
            "Ron met Harry's owl in Diagon Alley. The Ministry of Magic sent Death Eaters; a death was "
            "feared. Buckbeak the Hippogriff flew over Privet Drive.")
    c = _candidates(text)
    assert {"Dursleys", "Privet Drive", "Voldemort", "Harry Potter", "Harry", "Potter", "Ron",
            "Diagon Alley", "Ministry of Magic", "Death Eaters", "Buckbeak", "Hippogriff"} <= set(c)
    assert not {"The", "When", "The Dursleys", "When Voldemort", "Death", "Harry Potter and Ron",
                "Buckbeak the Hippogriff"} & set(c)
    assert len(c["Harry"]) == 2 and len(c["Privet Drive"]) == 2  # "Harry's" counts, as "Harry"
    s, e = c["Diagon Alley"][0]
    assert text[s:e] == "Diagon Alley"
    assert "feared" in _candidates(text, with_lowercase=True)  # an expert judges every word


def test_token_rise_blocks_match_one_long_forward(tiny_wb, tiny_expert_dir):
    import torch

    from engine.suggest.offline import _token_rise

    expert = tiny_wb.add_adapter("expert", tiny_expert_dir)
    ids = tiny_wb.tokenizer(CORPUS, add_special_tokens=False)["input_ids"]
    ticks = []
    rise = _token_rise(tiny_wb, ids, expert, block=16, context=len(ids), tick=lambda: ticks.append(1))
    base, exp = tiny_wb.logits([(ids, None), (ids, expert)])
    tgt = torch.tensor(ids[1:])[:, None]
    want = (torch.log_softmax(exp[:-1], -1).gather(1, tgt) - torch.log_softmax(base[:-1], -1).gather(1, tgt))[:, 0]
    assert rise[0] == 0 and len(ticks) == -(-len(ids) // 16)
    assert torch.allclose(rise[1:], want, atol=1e-4)  # every block's positions land where they belong


def test_offline_with_an_expert_ranks_by_rise_with_evidence(tiny_wb, tiny_expert_dir):
    from engine.suggest import suggest_offline

    expert = tiny_wb.add_adapter("expert", tiny_expert_dir)
    seen = []
    r = suggest_offline(tiny_wb, CORPUS, expert=expert, top_k=5, translate=True, block=16,
                        progress=lambda d, t: seen.append((d, t)))
    assert len(r.items) == 5 and seen[-1][0] == seen[-1][1]
    assert [s.score for s in r.items] == sorted((s.score for s in r.items), reverse=True)
    for s in r.items:
        assert s.count >= 2 and s.term in s.example and s.source == "offline"
        assert all(c and c != s.term for c in s.candidates)  # a proposal, or blank for the user
    with pytest.raises(UserError, match="corpus is empty"):
        suggest_offline(tiny_wb, "  ", expert=expert)
    with pytest.raises(UserError, match="no adapter"):
        suggest_offline(tiny_wb, CORPUS, expert="nope")


def test_shared_prefix_continuations_match_plain_greedy(tiny_wb, tiny_expert_dir):
    """Prefix read once, rows padded between prefix and term: the same greedy tokens as reading each
    prompt alone, and from the baseline even when an adapter is loaded."""
    from engine.generation import complete
    from engine.suggest.offline import FEW_SHOT, propose_translations

    tiny_wb.add_adapter("expert", tiny_expert_dir)
    suffixes = ["Hogwarts ->", "Diagon Alley ->", "Harry ->", "Order of the Phoenix ->"]
    tok = tiny_wb.tokenizer
    got = tiny_wb.continue_after(tok(FEW_SHOT, add_special_tokens=False)["input_ids"],
                                 [tok(x, add_special_tokens=False)["input_ids"] for x in suffixes], 5, batch_size=3)
    want = complete(tiny_wb, [FEW_SHOT + x for x in suffixes], max_new_tokens=5)
    assert [g.split("\n")[0] for g in got] == [w[: len(g)].split("\n")[0] for g, w in zip(got, want)]
    proposals = propose_translations(tiny_wb, ["Hogwarts", "Harry"], max_new_tokens=5)
    assert set(proposals) == {"Hogwarts", "Harry"}
    assert all(p != t and t.lower() not in p.lower() for t, p in proposals.items())


@pytest.mark.slow
def test_offline_route_on_the_embedded_model_finds_demo_terms(embedded_wb, demo_anchors):
    from engine.suggest import suggest_offline

    # The corpus's opening overview (its first ~6,300 words): the whole 43k-word corpus takes 4x longer.
    corpus = (ASSETS / "demo_corpus.txt").read_text(encoding="utf-8")[:37_700]
    t0 = time.monotonic()
    r = suggest_offline(embedded_wb, corpus, top_k=20)
    elapsed = time.monotonic() - t0
    top = [s.term for s in r.items]
    hits = [t for t in top if t in demo_anchors.entries]
    print(f"offline route: {elapsed:.1f} s, {len(hits)}/20 demo terms in the top 20: {hits}")
    print("proposals:", {s.term: s.candidates for s in r.items})
    assert len(top) == 20 and len(hits) >= 5
    assert all(s.term in s.example for s in r.items)
    assert sum(bool(s.candidates) for s in r.items) >= 5  # the baseline proposes most translations


@pytest.mark.slow  # a subprocess or a whole run: `make test`, not `make test-fast`
def test_cli_offline_with_a_quick_reinforcement_and_validate(tmp_path, tiny_dir, capsys):
    from engine.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text((CORPUS + "\n\n") * 3, encoding="utf-8")
    out = tmp_path / "offline.csv"
    r = run_cli("anchors", "suggest", "--corpus", str(corpus), "--offline", "--model", str(tiny_dir),
                "--reinforce-steps", "2", "--top-k", "6", "--out", str(out), "--json",
                env={"OBLIVIATE_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["suggestions"]
    assert len(rows) == 6 and all(row["source"] == "offline" and row["count"] >= 2 for row in rows)
    expert = list((tmp_path / "home" / "runs").glob("suggest-reinforce-*/adapters/expert/adapter_config.json"))
    assert len(expert) == 1  # the quick expert is a real reinforce_only run
    written = AnchorDictionary.from_csv(out.read_text()) if out.exists() else AnchorDictionary()
    assert set(written.entries) == {row["term"] for row in rows if row["translation"]}
    bad = tmp_path / "bad.json"
    bad.write_text('{"Harry": ["Harry"], "Harry Potter": ["Jon"], "Potter": ["Smith"]}')
    assert main(["anchors", "validate", str(bad)]) == 2
    printed = capsys.readouterr().out
    assert "translation equals the term" in printed and "'Harry Potter'" in printed
    assert main(["anchors", "suggest", "--corpus", str(corpus), "--offline", "--expert", str(tmp_path),
                 "--reinforce-steps", "2", "--model", str(tiny_dir)]) == 2
    assert "not both" in capsys.readouterr().err


# -- the panel ---------------------------------------------------------------------------------------
PANEL = '''
import os
import streamlit as st
from app.suggest_panel import render_suggest_panel
from engine.anchors import AnchorDictionary
merged = render_suggest_panel(AnchorDictionary({"Harry": ["Tom"], "Ron": ["Mark"]}),
                              corpus=os.environ["SUGGEST_CORPUS"])
if merged is not None:
    st.session_state["merged"] = merged.entries
'''


def test_panel_suggests_reviews_and_returns_the_merged_dictionary(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest


    monkeypatch.setenv("SUGGEST_CORPUS", CORPUS)
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI(lambda n, chunk, body: (200, _reply(json.dumps(good_terms(chunk))))) as srv:
        monkeypatch.setenv("OBLIVIATE_ENDPOINTS", srv.url)  # the owner's list: no URL is typed in a page
        at = AppTest.from_string(PANEL, default_timeout=60).run()
        assert not at.exception
        at.selectbox(key="suggest_base_url").set_value(srv.url)
        at.text_input(key="suggest_model").input("m")
        at.text_input(key="suggest_api_key").input(KEY)
        at.button(key="suggest_llm").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert srv.auth[0] == f"Bearer {KEY}"
        assert "merged" not in at.session_state  # shown for review, nothing added yet
        at.button(key="suggest_add").click().run()
    merged = at.session_state["merged"]
    assert merged["Harry"] == ["Tom"] and merged["Ron"] == ["Mark"]  # already there: unticked, never overwritten
    assert merged["Hogwarts"] == ["Mystic Academy"] and "Harry Potter" not in merged
    assert not list(tmp_path.rglob("*"))  # nothing written: Save is the page's, and explicit
    # the key only ever sits in this session's memory
    assert all(KEY not in str(e.value) for e in (*at.error, *at.info, *at.markdown, *at.caption))


def test_panel_shows_a_clear_error_and_keeps_running(monkeypatch):
    from streamlit.testing.v1 import AppTest


    monkeypatch.setenv("SUGGEST_CORPUS", CORPUS)
    with FakeOpenAI(lambda n, c, b: (401, {"error": {"message": f"bad key {KEY}"}})) as srv:
        monkeypatch.setenv("OBLIVIATE_ENDPOINTS", srv.url)
        at = AppTest.from_string(PANEL, default_timeout=60).run()
        at.selectbox(key="suggest_base_url").set_value(srv.url)
        at.text_input(key="suggest_model").input("m")
        at.text_input(key="suggest_api_key").input(KEY)
        at.button(key="suggest_llm").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "401" in at.error[0].value and KEY not in at.error[0].value
    assert "merged" not in at.session_state


def test_proposals_never_reuse_the_texts_own_names(tiny_wb, monkeypatch):
    import engine.suggest.offline as S

    raw = {"Weasley ->": " Harry\nRon ->", "Hogwarts ->": " the old school\n", "Quidditch ->": " Quidditch match",
           "Azkaban ->": " the prison of Diagon\n", "Hedwig ->": "\n", "Gringotts ->": " the black bank\n",
           "Order of the Phoenix ->": " The Golden Circle\n"}
    tok = tiny_wb.tokenizer
    monkeypatch.setattr(type(tiny_wb), "continue_after", lambda wb, prefix, suffixes, n, stop, tick:
                        [raw[tok.decode(x)] for x in suffixes])
    got = S.propose_translations(tiny_wb, [x[:-3] for x in raw],
                                 avoid={"Harry Potter", "Diagon Alley", "Black", "The Quibbler"})
    assert got == {"Weasley": "", "Hogwarts": "the old school", "Quidditch": "", "Azkaban": "", "Hedwig": "",
                   "Gringotts": "the black bank", "Order of the Phoenix": "The Golden Circle"}
