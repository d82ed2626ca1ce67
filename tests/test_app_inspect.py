"""The Inspect page through streamlit's AppTest, on the tiny model (no browser)."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT

PROMPT = "Harry Potter's two best friends are Ron and"



def _app(prompt: str | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60)
    if prompt is not None:
        at.session_state["inspect_prompt"] = prompt
    return at


def _tables(at) -> dict:
    """The top-k tables of the selected position, by model (they are laid out in MODELS order)."""
    names = [m.value.strip("*").split("*")[0] for m in at.markdown
             if m.value.startswith("**") and m.value.strip("*").split("*")[0] in
             ("baseline", "expert", "generic", "unlearned")]
    return dict(zip(names, [d.value for d in at.dataframe]))


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
    assert at.sidebar.text_input(key="model").value == str(tiny_dir), "OBLIVIATE_MODEL is the default"
    assert "MiB of weights" in " ".join(c.value for c in at.sidebar.caption)


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
    assert tables["baseline"]["token"].tolist() == [repr(t["token"]) for t in last["baseline"]]
    assert tables["expert"]["token"].tolist() == [repr(t["token"]) for t in last["expert"]]
    assert tables["generic"]["token"].iloc[0] == repr(last["generic"][0]["token"])
    assert tables["baseline"]["p"].iloc[0] == pytest.approx(last["baseline"][0]["prob"], rel=1e-4)
    strip = [h.value for h in at.html if 'class="obl-strip' in h.value]
    assert strip and strip[0].count('class="tok') == len(ref.ids)
    assert 'class="tok term' in strip[0], "Harry / Potter / Ron are anchored terms: marked in the strip"

    # A new alpha: generic changes, the model does not run again.
    g5 = tables["generic"]["p"].tolist()
    at.sidebar.slider(key="alpha").set_value(20.0).run()
    assert not at.exception, at.exception
    assert len(calls) == 1, "moving alpha must not run the model"
    g20 = _tables(at)["generic"]
    expected20 = ref.view(20.0)["positions"][-1]["generic"]
    assert g20["token"].tolist() == [repr(t["token"]) for t in expected20]
    assert g20["p"].tolist() != pytest.approx(g5)
    assert 'data-alpha="20"' in [h.value for h in at.html if 'class="obl-strip' in h.value][0]


def test_selecting_a_position_and_metrics(app_env, monkeypatch):
    at = _app(PROMPT).run()
    assert not at.exception, at.exception
    slider = [s for s in at.select_slider if s.key and s.key.startswith("inspect_pos_")][0]
    slider.set_value(2).run()
    assert not at.exception, at.exception
    assert any("position 2" in m.value for m in at.markdown)
    for metric in ("logp", "kl", "label_differs", "expert_gain"):
        at.selectbox(key="inspect_metric").set_value(metric).run()
        assert not at.exception, at.exception
        assert f'data-metric="{metric}"' in " ".join(h.value for h in at.html)


def test_bad_input_shows_an_error_and_keeps_running(app_env, monkeypatch):
    at = _app("x" * 25_000).run()
    assert not at.exception
    assert any("at most" in e.value for e in at.error)
    # A missing model path: the sidebar says so, the page says where to look, nothing crashes.
    at = _app(PROMPT)
    at.session_state["model"] = "/nonexistent/model"
    at.run()
    assert not at.exception, at.exception
    assert any("does not exist" in e.value for e in at.sidebar.error)
    assert any("No model is loaded" in w.value for w in at.warning)
    # Out of memory during the forward (CUDA's is a RuntimeError): an error, not a crash.
    import engine.inspection

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with monkeypatch.context() as m:
        m.setattr(engine.inspection, "inspect", oom)
        at = _app(PROMPT).run()
    assert not at.exception, at.exception
    assert any("out of memory" in e.value for e in at.error)
    # A missing adapter path.
    at = _app(PROMPT)
    at.session_state["expert"] = "a path…"
    at.session_state["expert_path"] = "/nonexistent/adapter"
    at.run()
    assert not at.exception, at.exception
    assert any("does not exist" in e.value for e in at.sidebar.error)


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


def test_two_tabs_with_different_adapters_at_once(tiny_wb, tiny_expert_dir, tiny_unlearned_dir):
    """Two sessions share one Workbench: adapters are named by path, forwards are serialised by the
    engine's lock, so concurrent inspections each get their own adapter's answer."""
    from concurrent.futures import ThreadPoolExecutor

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


def test_an_example_prompt_fills_the_prompt_box(app_env):
    at = _app().run()
    pills = at.pills(key="inspect_example")
    example = json.loads((ROOT / "assets" / "probes.json").read_text())["probability"][1]["prompt"]
    pills.set_value(example).run()
    assert not at.exception, at.exception
    assert at.text_input(key="inspect_prompt").value == example
    assert any('class="obl-strip' in h.value for h in at.html)


def test_rank_change_and_strip_metrics_on_a_hand_made_view():
    from app.widgets import metric_values, rank_change, token_strip_html

    base = [{"id": 1, "token": " a", "prob": 0.5}, {"id": 2, "token": " b", "prob": 0.3}]
    assert [rank_change(2, 1, base), rank_change(1, 2, base), rank_change(1, 1, base), rank_change(9, 1, base)] \
        == ["▲1", "▼1", "=", "new"]
    pos = lambda i, tok, nxt, gen, aligned: {  # noqa: E731
        "index": i, "token": tok, "next_token": nxt, "term": None, "aligned_to": aligned,
        "baseline": base, "baseline_next": {"prob": 0.5, "rank": 1} if nxt else {"prob": None, "rank": None},
        "generic": gen, "kl_baseline_generic": 0.25 if gen else None}
    view = {"positions": [pos(0, "<b>", " a", [{"id": 1, "token": " a", "prob": 0.9}], 0),
                          pos(1, " a", " b", [{"id": 1, "token": " a", "prob": 0.9}], 1),
                          pos(2, " b", None, None, -1)]}
    assert metric_values(view, "label_differs") == [0.0, 1.0, None]
    assert metric_values(view, "kl") == [0.25, 0.25, None]
    html = token_strip_html(view, "label_differs", selected=1)
    assert "&lt;b&gt;" in html and "<b>" not in html.split("</style>")[1]  # tokens are escaped
    assert 'class="tok sel" data-pos="1"' in html and 'class="tok nolabel" data-pos="2"' in html
