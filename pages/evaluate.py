"""Evaluate: familiarity, verbatim memorisation, utility and robustness of the baseline and chosen
runs, side by side. Evaluations are jobs (engine.jobs.launch_eval: `python -m engine eval` in the
background, never in this script thread); this page launches them, follows their progress and
charts their results. What each metric means, and which way is better, is engine.evaluation.table.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from app import charts, eval_report, inspect_views, robustness_panel, run_views, state
from engine import jobs
from engine.config import ModelConfig
from engine.errors import UserError
from engine.estimate import duration, estimate_eval
from engine.evaluation import EvalRequest, EvalSettings
from engine.evaluation.settings import settings_fields
from engine.evaluation.table import ROBUSTNESS, comes_back, metric, ordered, scalar_keys
from engine.boundary import allowed_endpoints, browser_adapter, browser_endpoint, browser_path, shown_url
from engine.io import check_text_file
from engine.methods import METHODS

ASSETS = state.ASSETS
ROBUST = ROBUSTNESS
# The headline pairs first, forgetting next to what must stay: familiarity | retain.
FIRST = ("familiarity_probability", "retain_probability", "familiarity_completion", "retain_perplexity")


def label(name: str) -> str:
    return metric(name).label


ctx = state.context()
st.title("Evaluate")
st.caption("How much Harry Potter is left, how much else was lost, and how much comes back under pressure.")
with st.expander("What is measured"):
    st.markdown(
        "- **Familiarity, probability**: probability of the answer's first token after HP prompts "
        "(\"Harry Potter's two best friends are Ron and\" → \" Herm\"); the paper: 0.244 → 0.006.\n"
        "- **Familiarity, completion**: share of 20-token greedy completions of HP prompts that name an "
        "anchored term or an HP reference *not already in the prompt* (whole words).\n"
        "- **Verbatim memorisation**: corpus passages, 32 tokens in → 32 greedy tokens out; token match, "
        "exact (all 32) and ROUGE-L against the real continuation.\n"
        "- **Utility**: probability of the answers of neighbouring-knowledge prompts (Lord of the Rings, "
        "Narnia, Oz, Arthur…) and perplexity on a generic text: these should not move.\n"
        "- **Robustness** (Lynch et al. 2024): familiarity again with an HP summary in context, after an "
        "\"expert\" preamble, and after a relearning attack (a few LoRA steps on a slice of the corpus).\n\n"
        "Every number here is also `python -m engine eval --json`.")


# -- where things are ---------------------------------------------------------------------------------
def method_label(run: str) -> str:
    m = jobs.run_method(run)
    return METHODS[m].label if m in METHODS else m


def candidates() -> dict[str, str]:
    """Display name -> adapter directory for every run adapter: '<run> · expert', '<run> · WHP' ..."""
    out = {}
    for run in jobs.list_runs():
        for kind, path in jobs.run_adapters(run.dir).items():
            out[f"{run.name} · {(method_label(run.dir) or 'unlearned') if kind == 'unlearned' else kind}"] = path
    return out


def safe_name(name: str) -> str:
    return name.replace("=", "-")


# -- launch ---------------------------------------------------------------------------------------
st.subheader("New evaluation", divider="gray")
choices = candidates()
if pre := st.session_state.pop("eval_preselect", None):  # "Evaluate" on the Runs page
    st.session_state["eval_pick"] = [n for n, path in choices.items() if Path(path).parents[1] == Path(pre)]
if "eval_pick" not in st.session_state:  # the sidebar's adapters, the models the user is looking at
    chosen = {p for p in (ctx.wb.adapters.get(ctx.expert), ctx.wb.adapters.get(ctx.unlearned))
              if p} if ctx.wb is not None else set()
    st.session_state["eval_pick"] = [n for n, path in choices.items() if path in chosen] or list(choices)[:3]
st.session_state["eval_pick"] = [n for n in st.session_state["eval_pick"] if n in choices]
picked = st.multiselect(
    "Models to compare with the baseline", list(choices), key="eval_pick",
    placeholder="the baseline alone" if choices else "no runs yet: train one on the Runs page",
    help="Adapters of the runs under OBLIVIATE_HOME/runs: each run's expert and its unlearned model "
         "(WHP or gradient ascent). The baseline is always included.")
extra = st.text_input("Another adapter directory (optional)", key="eval_extra",
                      placeholder="/path/to/adapter (adapter_config.json inside)")
with st.expander("Settings"):
    c1, c2, c3 = st.columns(3)
    fields = settings_fields()  # defaults, bounds and help from engine/evaluation/settings.py

    def number(col, label: str, name: str, key: str) -> int:
        f = fields[name]
        return col.number_input(label, f.get("ge", 0), f.get("le"), f["default"], key=key, help=f["help"] or None)

    max_new = number(c1, "completion tokens", "max_new_tokens", "eval_new_tokens")
    passages = number(c2, "verbatim passages", "verbatim_passages", "eval_passages")
    relearn = number(c3, "relearning steps", "relearn_steps", "eval_relearn")
    robust = st.checkbox("Familiarity with the HP summary, the expert preamble and few-shot pairs in context", True,
                         key="eval_robust")
    robustness = robustness_panel.settings_inputs()
    j1, j2 = st.columns(2)
    judge_model = j1.text_input("LLM judge model (optional)", key="eval_judge",
                                help="Grades every completion 0-3 through an OpenAI-compatible endpoint; "
                                     "the key comes from OPENAI_API_KEY in the environment.")
    judge_url = j2.selectbox("Judge endpoint", allowed_endpoints(), key="eval_judge_url", format_func=shown_url,
                             help="The endpoints this server may call: OPENAI_BASE_URL (api.openai.com when unset) "
                                  "and those its owner lists in OBLIVIATE_ENDPOINTS")
    judge_key = j1.text_input("Judge API key", type="password", key="eval_judge_key",
                              help="Needed unless the server's OPENAI_API_KEY was configured for this endpoint "
                                   "(OPENAI_BASE_URL, or the official one). Passed to the evaluation job in its "
                                   "environment, never written or shown.")
    f1, f2, f3 = st.columns(3)
    probes = f1.text_input("probes", str(ASSETS / "probes.json"), key="eval_probes")
    corpus = f2.text_input("corpus", str(ASSETS / "demo_corpus.txt"), key="eval_corpus")
    retain = f3.text_input("retain text", str(ASSETS / "retain.txt"), key="eval_retain")
    st.caption(f"Familiar words are counted with the dictionary edited on the Anchors page: `{state.anchors_path()}`.")

model = ModelConfig(st.session_state.get(state.MODEL) or state.default_model(),
                    st.session_state.get(state.PRECISION) or "auto", st.session_state.get(state.DEVICE) or "auto")


def build_request() -> tuple[EvalRequest, dict | None]:
    """The page's choices as an EvalRequest (every path checked), and the judge key's environment."""
    # Every adapter, a listed run's too (a copied run's adapters/ may be a link), passes the browser's
    # rule: a LoRA adapter directory under the roots (engine/boundary.py), never a full model.
    adapters = {safe_name(n): str(browser_adapter(choices[n], n)) for n in picked}
    if extra.strip():
        p = browser_adapter(extra, "another")
        adapters[safe_name(p.name)] = str(p)
    # Paths typed here may only name files under assets/, OBLIVIATE_HOME or runs/: the texts come
    # back on this page (verbatim examples), so /proc/self/environ must not be readable through it.
    files = str(browser_path(probes, "probes")), str(browser_path(corpus, "corpus"))
    retain_path = str(browser_path(retain, "retain text")) if retain.strip() else ""
    for f, what in ((files[0], "probes"), (files[1], "corpus"), (retain_path, "retain text")):
        if f and (problem := check_text_file(f, what)):
            raise UserError(problem)
    settings = EvalSettings.make(max_new_tokens=int(max_new), verbatim_passages=int(passages),
                                 relearn_steps=int(relearn), robustness=bool(robust), **robustness,
                                 judge_model=judge_model.strip() or None, judge_base_url=browser_endpoint(judge_url, "judge endpoint") if judge_model.strip() else None)
    request = EvalRequest.make(model=model, adapters=adapters, probes=files[0], corpus=files[1], retain=retain_path,
                               anchors=str(state.anchors_path()), settings=settings)
    env = {"OBLIVIATE_JUDGE_API_KEY": judge_key} if judge_model.strip() and judge_key else None
    return request, env


active = [s for s in jobs.list_evals() if s.active]
e1, e2 = st.columns([1, 4], vertical_alignment="center")
start = e1.button("Evaluate", type="primary", key="eval_start", disabled=bool(active),
                  help="Runs in the background; this page follows its progress." if not active
                  else "An evaluation is running: wait for it (or cancel it below).")
try:
    planned, _ = build_request()
    wb = ctx.wb
    est = estimate_eval(planned, tokenizer=wb.tokenizer if wb is not None else None)
    st.session_state["eval_estimate_s"] = est.seconds
    e2.markdown(f"**Expected duration:** {est.text()}" if est.seconds else (est.notes or [""])[0],
                help="engine/estimate.py; a busy CPU takes longer. " + " ".join(est.notes))
except UserError as e:
    planned = None
    e2.caption(f"Not ready: {e}")
if start:
    try:
        request, env = build_request()
        status = jobs.launch_eval(request, env=env)
        st.session_state["eval_show"] = status.dir
        st.session_state["eval_estimates"] = {**st.session_state.get("eval_estimates", {}),
                                              status.dir: st.session_state.get("eval_estimate_s")}
        st.rerun()
    except UserError as e:
        st.error(str(e))


# -- progress -------------------------------------------------------------------------------------
def eta_text(s: jobs.Status) -> str:
    """Time left: elapsed / done x left once the stages report, else the estimate less the time spent."""
    left = jobs.eta_s(s)
    if left is None:
        planned_s = st.session_state.get("eval_estimates", {}).get(s.dir)
        started = s.started or s.created
        if planned_s and started:
            from datetime import datetime, timezone

            spent = (datetime.now(timezone.utc) - datetime.fromisoformat(started)).total_seconds()
            left = max(planned_s - spent, 0.0)
    return f" · about {duration(left)} left" if left is not None else ""


def progress_panel(d: str) -> None:
    s = jobs.read_status(d)
    if s.active:
        p1, p2 = st.columns([6, 1], vertical_alignment="center")
        p1.progress(s.step / s.total if s.total else 0.0,
                    text=f"{s.name}: {s.state} · {s.phase} ({s.step}/{s.total}){eta_text(s)}")
        if p2.button("Cancel", key=f"eval_cancel_{s.name}"):
            try:
                jobs.cancel(d)
            except UserError as e:
                st.error(str(e))
    else:
        st.rerun()  # finished: redraw the whole page with the results, and stop polling


if active:
    @st.fragment(run_every=2)
    def _follow():
        for s in active:
            progress_panel(s.dir)

    _follow()


# -- training curves (drawn where a run is named: under each result, and in the last section) ----------
def tracked_chart(run: Path, key: str) -> None:
    rows = [r for r in jobs.read_metrics(run) if isinstance(r.get("probes"), dict) or r.get("familiarity") is not None]
    if not rows:
        st.info("This run has logged no probe probabilities yet.")
        return
    phases = list(dict.fromkeys(r.get("phase", "") for r in rows))
    phase = st.radio("Phase", phases, index=len(phases) - 1, horizontal=True, key=f"{key}_phase")
    rows = [r for r in rows if r.get("phase", "") == phase]
    probe_names = list(dict.fromkeys(k for r in rows for k in (r.get("probes") or {})))
    chosen = st.multiselect("Probes", probe_names, default=probe_names[:4], key=f"{key}_probes")
    fig = charts.training_probes(rows, chosen, f"{run.name}: {phase}")
    st.plotly_chart(fig, key=key)


def direction_colour(name: str, change: float | None) -> str:
    """Green where the change goes the metric's better way (evaluation.table), red where it does not."""
    better = metric(name).better
    if change is None or better is None or abs(change) < 0.5:
        return ""
    good = (change < 0) == (better == "lower")
    strength = min(abs(change) / 100, 1.0) * 0.35 + 0.1
    return f"background-color: rgba({'22,163,74' if good else '220,38,38'},{strength:.2f})"


# -- results --------------------------------------------------------------------------------------
st.subheader("Results", divider="gray")
past = [s for s in jobs.list_evals() if not s.active]
if not past:
    st.info("No evaluation yet: choose models above and press Evaluate.")
else:
    names = [s.dir for s in past]
    default = st.session_state.get("eval_show")
    shown = st.selectbox("Evaluation", names, index=names.index(default) if default in names else 0, key="eval_which",
                         format_func=lambda d: f"{Path(d).name} ({next(s for s in past if s.dir == d).state})")
    status = next(s for s in past if s.dir == shown)
    result = None
    if status.state != "finished":
        st.error(f"This evaluation {status.state}: {status.error or 'no result'}")
        log = jobs.read_log(shown, 20)
        if log:
            st.code(log)
    else:
        result = jobs.read_eval(shown)
        if result is None:
            st.error(f"the result of {Path(shown).name} is missing or unreadable")
    if result:
        models = result["models"]
        took = f" · {result['seconds']:.0f} s" if result["seconds"] is not None else ""
        st.caption(f"model **{result['model']}** · {len(models)} models{took}")
        for note in result.get("notes", []):
            st.info(note)
        present = {k for v in models.values() for k in v}
        cols = [k for k in FIRST if k in present] + [k for k in ordered(present) if k not in FIRST]
        scalar = set(scalar_keys(models))  # curves and per-attack details are drawn by the robustness panel
        cols = [k for k in cols if k in scalar]
        table = pd.DataFrame([{"model": n, **{label(k): v.get(k) for k in cols}} for n, v in models.items()])
        model_col = {"model": st.column_config.TextColumn("model", pinned=True)}
        st.dataframe(table.style.format("{:.4g}", na_rep="–", subset=[label(k) for k in cols]), hide_index=True,
                     column_config=model_col, key="eval_table")
        base = models.get("baseline", {})
        changes = [{"model": n, **{k: (v.get(k) / base[k] - 1) * 100 if base.get(k) and v.get(k) is not None else None
                                   for k in cols}} for n, v in models.items() if n != "baseline"]
        if changes:
            rel = pd.DataFrame(changes).rename(columns={k: label(k) for k in cols})
            styled = rel.style.format("{:+.1f}%", na_rep="–", subset=[label(k) for k in cols]).apply(
                lambda column: [direction_colour(next(k for k in cols if label(k) == column.name), v)
                                for v in column], subset=[label(k) for k in cols])
            st.caption("Change relative to the baseline, in percent: green where it moved the way that metric "
                       "should (familiarity down, retain kept), red where it did not.")
            st.dataframe(styled, hide_index=True, column_config=model_col, key="eval_rel")

        evaluated_runs = list(dict.fromkeys(Path(p).parents[1] for p in (result.get("adapters") or {}).values()
                                            if Path(p).parent.name == "adapters" and Path(p).parents[1].is_dir()))
        if evaluated_runs:
            with st.expander("Tracked probabilities over training, for the runs evaluated here"):
                run = st.selectbox("Run", evaluated_runs, format_func=lambda r: f"{r.name} ({method_label(str(r))})",
                                   key="eval_result_run")
                tracked_chart(run, "eval_result_tracked")

        c1, c2 = st.columns(2)
        with c1:  # the paper's trade-off: forget the target, keep the rest
            x_key = st.radio("Familiarity", ["familiarity_probability", "familiarity_completion"], horizontal=True,
                             format_func=lambda k: label(k), key="eval_x")
            y_key = st.radio("Utility", ["retain_probability", "retain_perplexity"], horizontal=True,
                             format_func=lambda k: label(k), key="eval_y")
            pts = [(n, v.get(x_key), v.get(y_key)) for n, v in models.items()
                   if v.get(x_key) is not None and v.get(y_key) is not None]
            fig = charts.tradeoff(pts, (base.get(x_key), base.get(y_key)), metric(y_key).better == "higher",
                                  label(x_key), label(y_key))
            st.plotly_chart(fig, key="eval_tradeoff")
            st.caption("Green: familiarity under a quarter of the baseline's, utility within 10% of it.")
        with c2:
            keys = [k for k in ("verbatim_rougeL", "verbatim_token_match", "verbatim_exact")
                    if any(v.get(k) is not None for v in models.values())]
            fig = charts.grouped_bars(models, keys, {k: label(k) for k in keys}, "Verbatim memorisation",
                                      yaxis_range=[0, 1])
            st.plotly_chart(fig, key="eval_verbatim")

        # -- robustness: the pressure bars, then app/robustness_panel.show (curves, attacks, probe) --------
        robust = [k for k in ROBUST if any(v.get(k) is not None for v in models.values())]
        if len(robust) > 1:
            fig = charts.grouped_bars(models, robust, {k: label(k) if k != ROBUST[0] else "plain prompt" for k in robust},
                                      "Robustness: familiarity (prob.) under pressure", yaxis_title="P(answer)")
            st.plotly_chart(fig, key="eval_robust_chart")
            back = pd.DataFrame.from_dict(comes_back(models, robust[1:]), orient="index").rename(columns=label)
            st.caption("How much comes back: familiarity under pressure ÷ plain familiarity (1 = no change).")
            st.dataframe(back.style.format("{:.2f}x", na_rep="–"), key="eval_back")
        robustness_panel.show(result)
        # -- end of the robustness place --------------------------------------------------------------

        ex = result.get("examples", {})
        comp = inspect_views.completions_html(ex)
        if comp:
            st.markdown("**Completions**, prompt by model: the words that count as familiar are highlighted")
            st.html(comp)
        if any(ex.get(m, {}).get("verbatim") for m in ex):
            with st.expander("Verbatim continuations"):
                who = st.selectbox("Model", [m for m in ex if ex[m].get("verbatim")], key="eval_ex_model")
                st.dataframe(pd.DataFrame(ex[who]["verbatim"]), key="eval_verbatim_examples")
        if result["cost"]:
            with st.expander(f"Cost · {run_views.cost_line(result['cost'])}"):
                st.dataframe(run_views.cost_rows(result["cost"]), hide_index=True)
        d1, d2, d3 = st.columns(3)
        d1.download_button("Download the result (JSON)", json.dumps(result, indent=2, ensure_ascii=False),
                           file_name=f"eval-{Path(shown).name}.json", mime="application/json", key="eval_download")
        d2.download_button("The table (CSV)", table.to_csv(index=False), file_name=f"eval-{Path(shown).name}.csv",
                           mime="text/csv", key="eval_download_csv")
        d3.download_button("The report (HTML, with its plots)",
                           eval_report.html_report(result, Path(shown).name, {label(k): k for k in cols}),
                           file_name=f"eval-{Path(shown).name}.html", mime="text/html", key="eval_download_html")


# -- training curves ------------------------------------------------------------------------------
st.subheader("Tracked probabilities over training", divider="gray")
runs = [Path(r.dir) for r in jobs.list_runs()]
if not runs:
    st.info("No runs yet: the Runs page trains one (its probes are tracked every few steps).")
else:
    run = st.selectbox("Run", runs, format_func=lambda r: f"{r.name} ({method_label(str(r))})", key="eval_run")
    tracked_chart(run, "eval_tracked")
