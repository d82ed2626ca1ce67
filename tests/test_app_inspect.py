"""The Inspect page through streamlit's AppTest, on the tiny model (no browser).

The token strip is an st.components.v2 component: AppTest cannot click it (tests/test_browser.py
does), but its HTML travels in the component's data, which these tests read.
"""
from __future__ import annotations

import html
import json
import re
import shutil

import pytest

from conftest import ROOT

PROMPT = "Harry Potter's two best friends are Ron and"


def _app(prompt: str | None = None, query: dict | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60)
    if prompt is not None:
        at.session_state["inspect_prompt"] = prompt
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at


def strip(at) -> dict:
    """The token strip's data (app/inspect_views.strip_data: the arrays its script draws)."""
    comps = [c for c in at.get("bidi_component") if c.proto.component_name == "obliviate_token_strip"]
    return json.loads(comps[0].proto.json) if comps else {}


CELL = re.compile(r'data-model="(\w+)" data-rank="(\d+)" data-token="([^"]*)" data-p="([\d.e-]+)"')


def _tables(at) -> dict:
    """The top-k table at the selected position: model -> [(token repr, p)] in rank order."""
    table = next(h.value for h in at.html if 'class="obl-topk"' in h.value)
    out: dict = {}
    for model, _rank, token, p in CELL.findall(table):
        out.setdefault(model, []).append((html.unescape(token), float(p)))
    return out


def _finished_demo(home, model_dir, expert_dir, unlearned_dir):
    """OBLIVIATE_HOME/runs/demo as a finished demo run of `model_dir` with these two adapters."""
    demo = home / "runs" / "demo"
    shutil.copytree(expert_dir, demo / "adapters" / "expert")
    shutil.copytree(unlearned_dir, demo / "adapters" / "unlearned")
    (demo / "config.json").write_text(json.dumps({"method": "whp", "model": {"name": str(model_dir)}}))
    (demo / "status.json").write_text(json.dumps({"state": "finished", "kind": "run", "created": "2026-01-01"}))
    return demo


def _count_forwards(monkeypatch) -> list:
    from engine.models import Workbench

    calls = []
    real = Workbench.logits

    def counted(self, batch):
        calls.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(Workbench, "logits", counted)
    return calls


def test_renders_without_a_prompt(app_env, tiny_dir):
    at = _app().run()
    assert not at.exception, at.exception
    assert [t.value for t in at.main.title] == ["Inspect"]
    assert any("Type a prompt" in i.value for i in at.info)
    assert any("Start here" in m.value for m in at.markdown), "the first-open line says what to look at"
    assert at.sidebar.text_input(key="model").value == str(tiny_dir), "OBLIVIATE_MODEL is the default"
    assert "MiB of weights" in " ".join(c.value for c in at.sidebar.caption)
    assert any("Build the demo adapters" in b.label for b in at.sidebar.button), "no demo yet: offered, not started"


def test_shows_the_engine_top_token_and_alpha_reuses_the_forward(app_env, monkeypatch, tiny_dir,
                                                                   tiny_expert_dir):
    from engine.anchors import load_anchors
    from engine.inspection import inspect
    from engine.models import ModelConfig, Workbench

    # The expected answer straight from the engine, with the dictionary the page will use.
    anchors = load_anchors(ROOT / "assets" / "demo_anchors.json")
    ref_wb = Workbench.load(ModelConfig(str(tiny_dir)))
    ref_wb.add_adapter("expert", tiny_expert_dir)
    ref = inspect(ref_wb, PROMPT, anchors, expert="expert", top_k=5)

    calls = _count_forwards(monkeypatch)
    at = _app(PROMPT)
    at.session_state["expert"] = "a path…"
    at.session_state["expert_path"] = str(tiny_expert_dir)
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert len(calls) == 1, "one batched forward for baseline, translated baseline and expert"

    tables = _tables(at)
    last = ref.view(5.0)["positions"][-1]
    assert [t for t, _ in tables["baseline"]] == [repr(t["token"]) for t in last["baseline"]]
    assert [t for t, _ in tables["expert"]] == [repr(t["token"]) for t in last["expert"]]
    assert tables["generic"][0][0] == repr(last["generic"][0]["token"])
    assert tables["baseline"][0][1] == pytest.approx(last["baseline"][0]["prob"], rel=1e-4)
    data = strip(at)
    assert len(data["tokens"]) == len(ref.ids)
    assert data["terms"], "Harry / Potter / Ron are anchored terms: marked in the strip"
    assert data["models"] == ["baseline", "expert", "generic"], "the hover card's numbers, per model"
    assert data["p"]["baseline"][0] == pytest.approx(ref.view(5.0)["positions"][0]["baseline_next"]["prob"], abs=1e-4)

    # A new alpha (next to the generic column): generic changes, the model does not run again.
    g5 = [p for _, p in tables["generic"]]
    alpha = at.slider(key="alpha")
    assert not alpha.disabled
    alpha.set_value(20.0).run()
    assert not at.exception, at.exception
    assert len(calls) == 1, "moving alpha must not run the model"
    g20 = _tables(at)["generic"]
    expected20 = ref.view(20.0)["positions"][-1]["generic"]
    assert [t for t, _ in g20] == [repr(t["token"]) for t in expected20]
    assert [p for _, p in g20] != pytest.approx(g5)
    assert strip(at)["alpha"] == 20
    assert at.query_params["alpha"] == "20"


def test_without_an_expert_alpha_says_it_has_no_effect(app_env):
    at = _app(PROMPT).run()
    assert at.slider(key="alpha").disabled
    assert any("no effect without an expert" in c.value for c in at.caption)


def test_the_elm_style_target_is_the_generic_row_without_an_expert(app_env, monkeypatch, tiny_dir):
    from engine.inspection import inspect
    from engine.methods.elm import ElmOptions
    from engine.models import ModelConfig, Workbench

    ref = inspect(Workbench.load(ModelConfig(str(tiny_dir))), PROMPT, top_k=5,
                  elm=ElmOptions(concept="the wizard school"))
    calls = _count_forwards(monkeypatch)
    at = _app(PROMPT).run()
    at.selectbox(key="inspect_target").set_value("elm").run()
    at.text_input(key="inspect_concept").set_value("the wizard school").run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    eta = at.slider(key="inspect_eta")
    assert eta.label == "eta" and not eta.disabled, "no expert needed: eta drives the ELM-style target"
    assert eta.value == 2.0, "eta starts at its own default (the ELM config's), not alpha's 5"
    assert any('generic (η 2)' in h.value for h in at.html), "the column says eta, not alpha"
    eta.set_value(2.0).run()
    assert [t for t, _ in _tables(at)["generic"]] == \
        [repr(t["token"]) for t in ref.view(2.0)["positions"][-1]["generic"]]
    assert any("ELM-style" in c.value for c in at.caption), "the note says what generic is"
    n = len(calls)
    eta.set_value(6.0).run()
    assert len(calls) == n, "eta re-views the kept forward, like alpha"
    assert at.query_params["target"] == "elm" and at.query_params["concept"] == "the wizard school"
    assert at.query_params["eta"] == "6" and "alpha" not in at.query_params
    at.text_input(key="inspect_concept").set_value("  ").run()
    assert not at.exception and any("concept" in e.value for e in at.error)
    at.session_state["inspect_concept"] = "the wizard school"  # the error stopped the page before its widgets
    at.session_state["inspect_target"] = "whp"
    at.run()
    assert at.slider(key="alpha").value == 5.0, "back to WHP: alpha as it was, eta kept apart"


def test_selecting_a_position_pinned_bars_and_metrics(app_env, tiny_expert_dir):
    at = _app(PROMPT)
    at.session_state["inspect_pinned"] = "Hermione, Emily"
    at.session_state["expert"] = "a path…"
    at.session_state["expert_path"] = str(tiny_expert_dir)
    at.run()
    assert not at.exception, at.exception
    at.select_slider(key="inspect_pos").set_value(2).run()
    assert not at.exception, at.exception
    assert any("position 2" in m.value for m in at.markdown)
    assert strip(at)["selected"] == 2
    headline = next(m.value for m in at.markdown if m.value.startswith("**P("))
    assert "baseline / expert / generic" in headline, "every model's probability is on screen"
    # the tiny random model gives every token ~2e-5: a ratio between near-zero values is not shown
    assert "%" not in headline and "~0 / ~0" in headline
    bars = json.loads(next(c for c in at.get("plotly_chart") if c.proto.id.endswith("inspect_bars")).proto.spec)
    assert [tr["x"] for tr in bars["data"]] == [["baseline", "expert", "generic"]] * 2  # two pinned tokens
    log = at.toggle(key="inspect_log").set_value(True).run()
    tracked = json.loads(next(c for c in log.get("plotly_chart") if c.proto.id.endswith("inspect_tracked")).proto.spec)
    assert tracked["layout"]["yaxis"]["type"] == "log"
    for metric in ("logp", "kl", "label_differs", "expert_gain"):
        at.selectbox(key="inspect_metric").set_value(metric).run()
        assert not at.exception, at.exception
        assert strip(at)["metric"] == metric


def test_an_example_prompt_fills_the_prompt_box_and_pins_its_target(app_env):
    at = _app().run()
    probe = json.loads((ROOT / "assets" / "probes.json").read_text())["probability"][1]
    at.button(key="inspect_example_1").click().run()
    assert not at.exception, at.exception
    assert at.text_input(key="inspect_prompt").value == probe["prompt"]
    assert at.text_input(key="inspect_pinned").value == probe["target"].strip()
    assert strip(at)


def test_state_stays_across_pages_and_comes_back_from_the_url(app_env, tiny_expert_dir):
    at = _app(PROMPT)
    at.session_state["inspect_pinned"] = "Hermione"
    at.session_state["expert"] = "a path…"
    at.session_state["expert_path"] = str(tiny_expert_dir)
    at.run()
    at.select_slider(key="inspect_pos").set_value(3).run()
    at.selectbox(key="inspect_metric").set_value("kl").run()
    query = dict(at.query_params)
    assert query["prompt"] == PROMPT and query["pos"] == "3" and query["pin"] == "Hermione"
    assert query["colour"] == "kl" and query["expert"] == str(tiny_expert_dir)
    assert "unlearned" not in query, "a choice the user did not make stays out of the link"
    # Another page and back: nothing is lost.
    at.switch_page("../pages/anchors.py").run()
    assert not at.exception, at.exception
    at.switch_page("../pages/inspect.py").run()
    assert at.text_input(key="inspect_prompt").value == PROMPT
    assert at.select_slider(key="inspect_pos").value == 3
    assert at.selectbox(key="inspect_metric").value == "kl"
    # A reload, or the link shared: a new session with only the URL.
    fresh = _app(None, query).run()
    assert not fresh.exception, fresh.exception
    assert fresh.text_input(key="inspect_prompt").value == PROMPT
    assert fresh.text_input(key="inspect_pinned").value == "Hermione"
    assert fresh.select_slider(key="inspect_pos").value == 3
    assert fresh.selectbox(key="inspect_metric").value == "kl"
    assert fresh.sidebar.selectbox(key="expert").value == "a path…"
    assert fresh.sidebar.text_input(key="expert_path").value == str(tiny_expert_dir)
    assert "expert" in _tables(fresh)


def test_bad_input_shows_an_error_and_keeps_running(app_env, monkeypatch, tiny_expert_dir):
    at = _app("x" * 25_000).run()
    assert not at.exception
    assert any("at most" in e.value for e in at.error)
    # A missing model path: the sidebar says so, the page says where to look, nothing crashes.
    at = _app(PROMPT)
    at.session_state["model"] = "/nonexistent/model"
    at.run()
    assert not at.exception, at.exception
    assert any("is not a model this page may load" in e.value for e in at.sidebar.error)
    assert any("No model is loaded" in w.value for w in at.warning)
    # NF4 on the CPU with layers bitsandbytes cannot pack (the tiny model's width 32): one line there.
    at = _app(PROMPT)
    at.session_state["precision"] = "nf4"
    at.session_state["device"] = "cpu"
    at.run()
    assert not at.exception, at.exception
    assert any("q_proj maps 32 -> 32 features" in e.value for e in at.sidebar.error), [e.value for e in at.sidebar.error]
    # Out of memory during the forward (CUDA's is a RuntimeError): an error, not a crash.
    import engine.inspection

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with monkeypatch.context() as m:
        m.setattr(engine.inspection, "inspect", oom)
        at = _app(PROMPT).run()
    assert not at.exception, at.exception
    assert any("out of memory" in e.value for e in at.error)
    # A bad unlearned path next to a good expert: the error is on the page, the expert still loads.
    at = _app(PROMPT)
    at.session_state["expert"] = "a path…"
    at.session_state["expert_path"] = str(tiny_expert_dir)
    at.session_state["unlearned"] = "a path…"
    at.session_state["unlearned_path"] = "/nonexistent/adapter"
    at.run()
    assert not at.exception, at.exception
    assert any("is not an adapter this page may load" in e.value for e in at.main.error), "the error is where the eyes are"
    assert set(_tables(at)) == {"baseline", "expert", "generic"}


def test_adapters_can_be_unloaded(app_env, tiny_expert_dir):
    at = _app(PROMPT)
    at.session_state["expert"] = "a path…"
    at.session_state["expert_path"] = str(tiny_expert_dir)
    at.run()
    wb = at.session_state["_context"].wb
    assert len(wb.adapters) == 1
    at.sidebar.button(key="unload_expert").click().run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="expert").value == "none" and len(wb.adapters) == 0
    assert "expert" not in _tables(at)


def test_the_demo_adapters_are_the_default_and_show_four_models(app_env, tiny_dir, tiny_expert_dir,
                                                                 tiny_unlearned_dir):
    home = app_env
    demo = _finished_demo(home, tiny_dir, tiny_expert_dir, tiny_unlearned_dir)
    at = _app(PROMPT).run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="expert").value == str(demo / "adapters" / "expert")
    assert at.sidebar.selectbox(key="unlearned").value == str(demo / "adapters" / "unlearned")
    assert "demo" in at.sidebar.selectbox(key="expert").format_func(at.sidebar.selectbox(key="expert").value)
    assert list(_tables(at)) == ["baseline", "expert", "generic", "unlearned"]
    # Chosen none on purpose: the demo default does not come back.
    at.sidebar.selectbox(key="unlearned").set_value("none").run()
    at.run()
    assert at.sidebar.selectbox(key="unlearned").value == "none"


def test_completions_side_by_side(app_env, tiny_expert_dir):
    from engine.generation import complete
    from engine.models import ModelConfig, Workbench

    at = _app(PROMPT)
    at.session_state["expert"] = "a path…"
    at.session_state["expert_path"] = str(tiny_expert_dir)
    at.session_state["inspect_new_tokens"] = 5
    at.run()
    at.button(key="inspect_complete").click().run()
    assert not at.exception, at.exception
    done = at.session_state["inspect_completions"][1]
    assert list(done) == ["baseline", "expert", "generic"]
    ref = complete(Workbench.load(ModelConfig(at.session_state["model"])), [PROMPT], None, 5)[0]
    assert done["baseline"] == ref


def test_add_a_token_as_a_term(app_env, monkeypatch, tmp_path):
    anchors = tmp_path / "anchors.json"
    anchors.write_text(json.dumps({"Harry": ["Jon"]}))
    monkeypatch.setenv("OBLIVIATE_ANCHORS", str(anchors))
    at = _app("Then Hermione smiled").run()
    at.select_slider(key="inspect_pos").set_value(2).run()  # " Herm" of " Hermione"
    at.button(key="inspect_add_term").click().run()
    assert not at.exception, at.exception
    editor = at.data_editor[0].value
    assert editor["term"].tolist() == ["Harry", "Hermione"] and editor["candidates"].tolist() == ["Jon", ""]
    assert any("Added 'Hermione'" in s.value for s in at.success)


def test_as_term_is_not_offered_for_function_words_or_terms_the_dictionary_has(app_env, monkeypatch, tmp_path):
    anchors = tmp_path / "anchors.json"
    anchors.write_text(json.dumps({"Harry": ["Jon"]}))
    monkeypatch.setenv("OBLIVIATE_ANCHORS", str(anchors))
    at = _app("Then harry and Hermione smiled").run()
    labels = {}
    for pos in range(1, 5):
        at.select_slider(key="inspect_pos").set_value(pos).run()
        labels[pos] = [b.label for b in at.button if b.key == "inspect_add_term"]
    offered = [label for v in labels.values() for label in v]
    assert any("“Hermione”" in x for x in offered), offered
    assert not any("“and”" in x or "“harry”" in x.lower() for x in offered), "a function word, a known term"


def test_two_tabs_with_different_adapters_at_once(tiny_wb, tiny_expert_dir, tiny_unlearned_dir, monkeypatch,
                                                  tmp_path_factory):
    """Two sessions share one Workbench: adapters are named by path, forwards are serialised by the
    engine's lock, so concurrent inspections each get their own adapter's answer."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("OBLIVIATE_BROWSER_ROOTS", str(tmp_path_factory.getbasetemp()))  # where the adapters are

    from app.state import ensure_adapter
    from engine.inspection import inspect

    a = ensure_adapter(tiny_wb, "expert", str(tiny_expert_dir))
    b = ensure_adapter(tiny_wb, "expert", str(tiny_unlearned_dir))
    assert a != b and ensure_adapter(tiny_wb, "expert", str(tiny_expert_dir)) == a  # loaded once

    def top(name):
        return inspect(tiny_wb, PROMPT, None, expert=name).view(5.0)["positions"][-1]["expert"]

    alone = {name: top(name) for name in (a, b)}
    assert alone[a] != alone[b]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(top, [a, b] * 4))
    assert together == [alone[a], alone[b]] * 4


def test_a_change_from_a_near_zero_baseline_reads_as_two_values_not_a_percentage():
    from app.inspect_views import pinned_bars, pinned_summary

    view = {"tracked": {" Herm": {"baseline": [1.8e-4], "unlearned": [0.129]}, " Ron": {"baseline": [0.4], "unlearned": [0.1]}}}
    text = pinned_summary(pinned_bars(view, 0, ["baseline", "unlearned"]))
    assert "~0 → 0.129 for unlearned" in text and "+71" not in text  # was "+71567%"
    assert "-75% for unlearned" in text


def test_pure_helpers_on_a_hand_made_view():
    from app.inspect_views import (metric_values, pinned_bars, pinned_summary, rank_change, strip_data,
                                   topk_table_html, word_at)

    base = [{"id": 1, "token": " a", "prob": 0.5}, {"id": 2, "token": " b", "prob": 0.3}]
    assert [rank_change(2, 1, base), rank_change(1, 2, base), rank_change(1, 1, base), rank_change(9, 1, base)] \
        == ["▲1", "▼1", "=", "new"]
    pos = lambda i, tok, nxt, gen, aligned: {  # noqa: E731
        "index": i, "token": tok, "next_token": nxt, "term": None, "aligned_to": aligned,
        "baseline": base, "baseline_next": {"prob": 0.5, "rank": 1} if nxt else {"prob": None, "rank": None},
        "generic": gen, "kl_baseline_generic": 0.25 if gen else None}
    view = {"positions": [pos(0, "<b>", " a", [{"id": 1, "token": " a", "prob": 0.9}], 0),
                          pos(1, " a", " b", [{"id": 2, "token": " b", "prob": 0.9}], 1),
                          pos(2, " b", None, None, -1)],
            "tracked": {" a": {"baseline": [0.5, 0.4, 0.2], "generic": [0.01, 0.1, None]}}}
    assert metric_values(view, "label_differs") == [0.0, 0.0, None]
    assert metric_values(view, "kl") == [0.25, 0.25, None]
    data = strip_data(view, "label_differs", selected=1, alpha=5)
    assert data["tokens"] == ["<b>", " a", " b"]  # raw text: the script sets it as text, never as HTML
    assert data["selected"] == 1 and data["nolabel"] == [2] and data["alpha"] == 5
    assert data["p"]["baseline"] == [0.5, 0.5, None] and data["rank"]["baseline"] == [1, 1, None]
    assert data["kl"] == [0.25, 0.25, None] and data["colours"][2] == "transparent"
    table = topk_table_html(view["positions"][1], ["baseline", "generic"], alpha=5)
    assert 'data-model="generic" data-rank="1" data-token="&#x27; b&#x27;"' in table
    assert '<td class="c hit"' in table, "the token that actually follows is marked"
    bars = pinned_bars(view, 0, ["baseline", "generic"])
    assert bars == [{"token": " a", "model": "baseline", "p": 0.5, "change": None, "base": 0.5},
                    {"token": " a", "model": "generic", "p": 0.01, "change": pytest.approx(-0.98), "base": 0.5}]
    assert pinned_summary(bars) == "**P( a)**: 0.500 / 0.010 (baseline / generic), -98% for generic"
    toks = ["<s>", "Then", " Herm", "ione", " smiled", ".", " Hogwarts", "'s"]
    assert [word_at(toks, i) for i in (2, 3, 4, 6)] == ["Hermione", "Hermione", "smiled", "Hogwarts"]


@pytest.mark.parametrize("alpha", ["inf", "-inf", "nan", "1e400", "x"])
def test_a_link_with_a_bad_alpha_opens_on_the_default(app_env, alpha):
    """A hand-edited link (?alpha=inf crashed the app on every open): the value falls back to its default."""
    at = _app(PROMPT, {"alpha": alpha}).run()
    assert not at.exception, at.exception
    assert at.slider(key="alpha").value == 5.0


def test_the_lens_and_the_adapter_scale(app_env, tiny_dir, tiny_expert_dir, tiny_unlearned_dir):
    """Lens on: a blocks x models heatmap at the selected position and a blocks x positions view of a
    pinned token, from the one cached forward; the adapter scale at 0 makes the unlearned column the
    baseline's, at 1 it is the adapter as trained."""
    home = app_env
    _finished_demo(home, tiny_dir, tiny_expert_dir, tiny_unlearned_dir)
    at = _app(PROMPT)
    at.session_state["inspect_pinned"] = "Hermione"
    at.run()
    trained = _tables(at)["unlearned"]
    assert trained != _tables(at)["baseline"]
    at.toggle(key="inspect_lens").set_value(True).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert any("Layer by layer" in h.value for h in at.subheader)
    charts = [c for c in at.get("plotly_chart")]
    maps = [json.loads(c.proto.spec) for c in charts]
    heat = [m for m in maps if m["data"] and m["data"][0]["type"] == "heatmap"]
    grid = next(h.value for h in at.html if 'class="obl-lens"' in h.value)  # blocks x models, as HTML
    assert re.findall(r'<th data-model="(\w+)"', grid) == ["baseline", "expert", "generic", "unlearned"]
    assert sorted(set(map(int, re.findall(r'data-block="(\d+)"', grid)))) == [1, 2]
    assert not heat, "no Plotly heatmap: the lens draws as HTML and on a canvas"
    along = next(json.loads(c.proto.json) for c in at.get("bidi_component")
                 if c.proto.component_name == "obliviate_heatmap")
    assert along["rows"] == 2 and along["cols"] == len(strip(at)["tokens"]) == len(along["x"])
    assert len(along["z"]) == along["rows"] * along["cols"], "one value per block and prompt position"
    assert any("' Herm" in m.value and ("suppressed" in m.value or "never computes" in m.value)
               for m in at.markdown), "the lens's headline"
    at.slider(key="inspect_scale").set_value(0.0).run()
    assert not at.exception, at.exception
    zero = _tables(at)
    assert [t for t, _ in zero["unlearned"]] == [t for t, _ in zero["baseline"]]
    assert [p for _, p in zero["unlearned"]] == pytest.approx([p for _, p in zero["baseline"]], rel=1e-4)
    assert at.query_params["lens"] == "1" and at.query_params["scale"] == "0"
    at.slider(key="inspect_scale").set_value(1.0).run()
    assert _tables(at)["unlearned"] == trained
    # a link carries both: it opens with the lens on and the adapter scaled
    linked = _app(query={"prompt": PROMPT, "lens": "1", "scale": "0"}).run()
    assert not linked.exception, linked.exception
    assert any("Layer by layer" in h.value for h in linked.subheader)
    assert linked.slider(key="inspect_scale").value == 0.0
    assert [t for t, _ in _tables(linked)["unlearned"]] == [t for t, _ in _tables(linked)["baseline"]]


def test_links_name_adapters_by_symbol_and_never_pin_an_unmade_choice(app_env, tiny_dir, tiny_expert_dir,
                                                                       tiny_unlearned_dir):
    """While the demo builds, a reload's URL carries no adapter (before: expert=none&unlearned=none,
    and that tab never selected the demo); once built, links say `demo` and `run:<name>`, which work
    on another machine; the position in the URL is the new prompt's, in the same rerun; a number
    outside its widget's range is clamped with a note."""
    home = app_env
    at = _app(PROMPT).run()
    assert "expert" not in at.query_params and "unlearned" not in at.query_params
    demo = _finished_demo(home, tiny_dir, tiny_expert_dir, tiny_unlearned_dir)
    reloaded = _app(None, dict(at.query_params)).run()  # the link written while the demo was building
    assert reloaded.sidebar.selectbox(key="expert").value == str(demo / "adapters" / "expert")
    assert reloaded.query_params["expert"] == "demo" and reloaded.query_params["unlearned"] == "demo"
    run = home / "runs" / "r1"
    shutil.copytree(tiny_unlearned_dir, run / "adapters" / "unlearned")
    (run / "config.json").write_text(json.dumps({"method": "whp", "model": {"name": str(tiny_dir)}}))
    (run / "status.json").write_text(json.dumps({"state": "finished", "kind": "run", "created": "2026-01-02"}))
    linked = _app(None, {"prompt": PROMPT, "unlearned": "run:r1", "tokens": "500"}).run()
    assert not linked.exception, linked.exception
    assert linked.sidebar.selectbox(key="unlearned").value == str(run / "adapters" / "unlearned")
    assert linked.query_params["unlearned"] == "run:r1"
    assert any("unlearned=run%3Ar1" in c.value for c in linked.code), "Share this view: the link to copy"
    assert linked.number_input(key="inspect_top_k").value == 50
    assert any("tokens=500 is outside 1–50: shown with 50" in c.value for c in linked.caption)
    linked.text_input(key="inspect_prompt").set_value("Hello there my friend").run()
    T = len(strip(linked)["tokens"])
    assert linked.query_params["pos"] == str(T - 1), "the new prompt's position, not the old one's"


def test_a_click_that_only_moves_the_selection_keeps_the_strips_key(app_env):
    """The strip's script redraws the tokens only when `key` changes: a click (a new selection) keeps it,
    a new colouring changes it. (Keyboard and aria-labels are checked in the browser test.)"""
    at = _app(PROMPT).run()
    first = strip(at)
    at.select_slider(key="inspect_pos").set_value(1).run()
    moved = strip(at)
    assert moved["selected"] == 1 and moved["key"] == first["key"]
    at.selectbox(key="inspect_metric").set_value("kl").run()
    assert strip(at)["key"] != first["key"]
    assert len(json.dumps(first)) < 200 * len(first["tokens"]), "compact: the strip's HTML was ~0.94 KB a token"


def test_every_colouring_keeps_the_text_readable_and_the_term_underline_visible():
    """WCAG AA: 4.5:1 between the strip's text (#111) and the strongest colour of every metric over the
    white page; the KL colour was the underline's purple at 3.8:1 and hid it."""
    from app.inspect_views import _colour

    def luminance(rgb):
        def lin(c):
            c /= 255
            return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
        r, g, b = map(lin, rgb)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    text = luminance((0x11, 0x11, 0x11))
    for metric, strongest in (("logp", -20.0), ("expert_gain", 9.0), ("expert_gain", -9.0), ("kl", 9.0), ("changed", 1)):
        r, g, b, a = (float(x) for x in re.findall(r"[\d.]+", _colour(metric, strongest)))
        over_white = tuple(a * c + (1 - a) * 255 for c in (r, g, b))
        ratio = (luminance(over_white) + 0.05) / (text + 0.05)
        assert ratio >= 4.5, (metric, round(ratio, 2))
    assert "124,58,237" not in _colour("kl", 9.0), "not the anchored term's underline colour"


def test_a_prompt_the_page_cannot_draw_is_refused_before_any_forward(app_env, monkeypatch):
    """2,045 tokens took 83 s and 4,669 hung the tab: past PAGE_PROMPT_TOKENS the page says so at once."""
    from engine.inspection import PAGE_PROMPT_TOKENS

    calls = _count_forwards(monkeypatch)
    at = _app(" Hogwarts" * (PAGE_PROMPT_TOKENS + 50)).run()  # ~3 tokens a word, under the character cap
    assert not at.exception, at.exception
    assert any(f"draws at most {PAGE_PROMPT_TOKENS:,}" in e.value for e in at.error)
    assert calls == [], "refused before the model runs"


def test_the_dark_theme_is_not_forced_off_and_the_html_pieces_follow_it():
    """The config forced `base = "light"`; the strip, tables and cards hard-coded dark text on white."""
    from app.inspect_views import THEME, theme_css, topk_table_html
    from app.strip import CSS as STRIP_CSS

    import tomllib

    config = tomllib.loads((ROOT / "app" / ".streamlit" / "config.toml").read_text())
    assert "base" not in config.get("theme", {}), "Streamlit follows the browser's light or dark preference"
    dark, light = theme_css("dark"), theme_css("light")
    assert f"--obl-ink:{THEME['dark']['ink']}" in dark and f"--obl-ink:{THEME['light']['ink']}" in light
    assert theme_css(None) == light
    for css in (STRIP_CSS, topk_table_html({"baseline": [], "next_token": None}, ["baseline"])):
        assert "var(--obl-ink" in css or "var(--obl-ink2" in css or "var(--obl-muted" in css
        assert "color:#111" not in css and "background:#fff" not in css
