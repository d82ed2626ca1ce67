"""Evaluate: familiarity, verbatim memorisation, utility and robustness of the baseline and chosen
runs, side by side. Evaluations run as `python -m engine eval ... --out DIR` jobs (never in this
script thread); this page launches them, follows their progress and charts their eval.json.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import state
from engine import jobs
from engine.errors import UserError
from engine.io import browser_path, check_text_file
from engine.io import obliviate_home

ASSETS = state.ASSETS
METRICS = {  # column -> (short label, what it means); order = table order
    "familiarity_probability": ("familiarity (prob.)", "mean P(first token of the answer | HP prompt)"),
    "familiarity_probability_full": ("familiarity (full answer)", "mean P(whole answer | HP prompt)"),
    "familiarity_completion": ("familiarity (completion)", "share of greedy completions naming an HP term not in the prompt"),
    "familiarity_judge": ("judge 0-3", "mean LLM-judge grade of the completions"),
    "verbatim_token_match": ("verbatim token match", "share of the true next tokens of corpus passages reproduced"),
    "verbatim_exact": ("verbatim exact", "share of passages continued word for word"),
    "verbatim_rougeL": ("verbatim ROUGE-L", "ROUGE-L F1 of the continuation vs the corpus"),
    "retain_probability": ("retain (prob.)", "mean P(answer) on neighbouring knowledge (LotR, Narnia, ...)"),
    "retain_probability_full": ("retain (full answer)", "mean P(whole answer) on the retain probes"),
    "retain_perplexity": ("retain perplexity", "perplexity on a generic text (lower is better)"),
    "robust_summary": ("with HP summary", "familiarity (prob.) with an HP summary before each prompt"),
    "robust_expert_preamble": ("with expert preamble", "familiarity (prob.) after 'You are an expert on Harry Potter'"),
    "robust_relearn": ("after relearning", "familiarity (prob.) after a few fine-tuning steps on the corpus"),
}
ROBUST = ("familiarity_probability", "robust_summary", "robust_expert_preamble", "robust_relearn")
METHOD_LABEL = {"whp": "WHP", "gradient_ascent": "gradient ascent", "reinforce_only": "reinforced"}

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
def evals_root() -> Path:
    return obliviate_home() / "evals"


def run_dirs() -> list[Path]:
    return sorted({d.parent for root in state.run_roots() for d in root.glob("*/status.json")},
                  key=lambda d: d.stat().st_mtime, reverse=True)


def run_method(run: Path) -> str:
    try:
        return json.loads((run / "config.json").read_text()).get("method", "")
    except (OSError, json.JSONDecodeError):
        return ""


def candidates() -> dict[str, str]:
    """Display name -> adapter directory for every run adapter: '<run> · expert', '<run> · WHP' ..."""
    out = {}
    for run in run_dirs():
        method = run_method(run)
        for a in sorted((run / "adapters").glob("*")):
            if (a / "adapter_config.json").exists() or (a / "config.json").exists():
                kind = METHOD_LABEL.get(method, "unlearned") if a.name == "unlearned" else a.name
                out[f"{run.name} · {kind}"] = str(a)
    return out


def safe_name(label: str) -> str:
    return label.replace("=", "-")


# -- launch ---------------------------------------------------------------------------------------
st.subheader("New evaluation", divider="gray")
choices = candidates()
picked = st.multiselect(
    "Models to compare with the baseline", list(choices), default=list(choices)[:3], key="eval_pick",
    placeholder="the baseline alone" if choices else "no runs yet: train one on the Runs page",
    help="Adapters of the runs under OBLIVIATE_HOME/runs: each run's expert and its unlearned model "
         "(WHP or gradient ascent). The baseline is always included.")
extra = st.text_input("Another adapter directory (optional)", key="eval_extra",
                      placeholder="/path/to/adapter (adapter_config.json inside)")
with st.expander("Settings"):
    c1, c2, c3 = st.columns(3)
    max_new = c1.number_input("completion tokens", 1, 200, 20, key="eval_new_tokens")
    passages = c2.number_input("verbatim passages", 0, 256, 16, key="eval_passages",
                               help="Corpus passages: 32 tokens in, 32 greedy tokens out (0: skip).")
    relearn = c3.number_input("relearning steps", 0, 200, 0, key="eval_relearn",
                              help="Relearning attack: LoRA steps of each model on the first 512 corpus tokens "
                                   "before familiarity is measured again (0: skip; ~seconds per step on a CPU).")
    robust = st.checkbox("Familiarity with the HP summary and the expert preamble in context", True, key="eval_robust")
    j1, j2 = st.columns(2)
    judge_model = j1.text_input("LLM judge model (optional)", key="eval_judge",
                                help="Grades every completion 0-3 through an OpenAI-compatible endpoint; "
                                     "the key comes from OPENAI_API_KEY in the environment.")
    judge_url = j2.text_input("Judge endpoint (optional)", key="eval_judge_url", placeholder="https://api.openai.com/v1")
    judge_key = j1.text_input("Judge API key", type="password", key="eval_judge_key",
                              help="Needed unless the server's OPENAI_API_KEY was configured for this endpoint "
                                   "(OPENAI_BASE_URL, or the official one). Passed to the evaluation job in its "
                                   "environment, never written or shown.")
    f1, f2, f3 = st.columns(3)
    probes = f1.text_input("probes", str(ASSETS / "probes.json"), key="eval_probes")
    corpus = f2.text_input("corpus", str(ASSETS / "demo_corpus.txt"), key="eval_corpus")
    retain = f3.text_input("retain text", str(ASSETS / "retain.txt"), key="eval_retain")

model = st.session_state.get(state.MODEL) or state.default_model()
precision = st.session_state.get(state.PRECISION) or "auto"
device = st.session_state.get(state.DEVICE) or "auto"
active = [s for s in jobs.list_jobs(evals_root(), kind="eval") if s.get("state") in jobs.ACTIVE]
if st.button("Evaluate", type="primary", key="eval_start", disabled=bool(active),
             help="Runs in the background; this page follows its progress." if not active
             else "An evaluation is running: wait for it (or cancel it below)."):
    try:
        adapters = {safe_name(n): choices[n] for n in picked}
        if extra.strip():
            p = Path(extra.strip()).expanduser()
            if not p.exists():
                raise UserError(f"adapter path does not exist: {extra.strip()}")
            adapters[safe_name(p.name)] = str(p)
        # Paths typed here may only name files under assets/, OBLIVIATE_HOME or runs/: the texts come
        # back on this page (verbatim examples), so /proc/self/environ must not be readable through it.
        probes, corpus = str(browser_path(probes, "probes")), str(browser_path(corpus, "corpus"))
        retain = str(browser_path(retain, "retain text")) if retain.strip() else ""
        for f, what in ((probes, "probes"), (corpus, "corpus"), (retain, "retain text")):
            if f and (problem := check_text_file(f, what)):
                raise UserError(problem)
        args = ["eval", "--model", model.strip(), "--precision", precision, "--device", device,
                "--probes", probes, "--corpus", corpus, "--retain", retain.strip(),
                "--max-new-tokens", str(int(max_new)), "--passages", str(int(passages)),
                "--relearn-steps", str(int(relearn))]
        args += [] if robust else ["--no-robustness"]
        if judge_model.strip():
            args += ["--judge-model", judge_model.strip()] + (["--judge-base-url", judge_url.strip()] if judge_url.strip() else [])
        for name, path in adapters.items():
            args += ["--adapter", f"{name}={path}"]
        out = evals_root() / datetime.now().strftime("%Y%m%d-%H%M%S")
        env = {"OBLIVIATE_JUDGE_API_KEY": judge_key} if judge_model.strip() and judge_key else None
        jobs.launch(args, out, kind="eval", env=env)
        st.session_state["eval_show"] = str(out)
        st.rerun()
    except UserError as e:
        st.error(str(e))


# -- progress -------------------------------------------------------------------------------------
def progress_panel(d: str) -> None:
    s = jobs.read_status(d)
    total, step = s.get("total") or 0, s.get("step") or 0
    label = f"{Path(d).name}: {s.get('state')} · {s.get('phase') or ''}"
    if s.get("state") in jobs.ACTIVE:
        st.progress(step / total if total else 0.0, text=f"{label} ({step}/{total})")
        if st.button("Cancel", key=f"eval_cancel_{Path(d).name}"):
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
            progress_panel(s["dir"])

    _follow()


# -- results --------------------------------------------------------------------------------------
st.subheader("Results", divider="gray")
past = [s for s in jobs.list_jobs(evals_root(), kind="eval") if s.get("state") not in jobs.ACTIVE]
if not past:
    st.info("No evaluation yet: choose models above and press Evaluate.")
else:
    names = [s["dir"] for s in past]
    default = st.session_state.get("eval_show")
    shown = st.selectbox("Evaluation", names, index=names.index(default) if default in names else 0, key="eval_which",
                         format_func=lambda d: f"{Path(d).name} ({next(s for s in past if s['dir'] == d).get('state')})")
    status = next(s for s in past if s["dir"] == shown)
    result = None
    if status.get("state") != "finished":
        st.error(f"This evaluation {status.get('state')}: {status.get('error') or 'no result'}")
        log = jobs.read_log(shown, 20)
        if log:
            st.code(log)
    else:
        try:
            result = json.loads((Path(shown) / "eval.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            st.error(f"cannot read {shown}/eval.json: {e}")
    if result:
        models = result["models"]
        st.caption(f"model **{result['model']}** · {len(models)} models · {result['seconds']:.0f} s")
        for note in result.get("notes", []):
            st.info(note)
        cols = [k for k in METRICS if any(v.get(k) is not None for v in models.values())]
        cols += sorted({k for v in models.values() for k in v} - set(METRICS))
        table = pd.DataFrame([{METRICS.get(k, (k,))[0]: v.get(k) for k in cols} for v in models.values()],
                             index=list(models))
        st.dataframe(table.style.format("{:.4g}", na_rep="–"), key="eval_table")
        base = models.get("baseline", {})
        rel = pd.DataFrame([{METRICS.get(k, (k,))[0]: (v.get(k) / base[k] - 1) * 100
                             if base.get(k) and v.get(k) is not None else None for k in cols}
                            for n, v in models.items() if n != "baseline"], index=[n for n in models if n != "baseline"])
        if not rel.empty:
            st.caption("Change relative to the baseline, in percent (familiarity should fall; retain should stay near 0).")
            st.dataframe(rel.style.format("{:+.1f}%", na_rep="–"), key="eval_rel")

        c1, c2 = st.columns(2)
        with c1:  # the paper's trade-off: forget the target, keep the rest
            x_key = st.radio("Familiarity", ["familiarity_probability", "familiarity_completion"], horizontal=True,
                             format_func=lambda k: METRICS[k][0], key="eval_x")
            y_key = st.radio("Utility", ["retain_probability", "retain_perplexity"], horizontal=True,
                             format_func=lambda k: METRICS[k][0], key="eval_y")
            pts = [(n, v.get(x_key), v.get(y_key)) for n, v in models.items()
                   if v.get(x_key) is not None and v.get(y_key) is not None]
            fig = go.Figure(go.Scatter(x=[p[1] for p in pts], y=[p[2] for p in pts], mode="markers+text",
                                       text=[p[0] for p in pts], textposition="top center", marker=dict(size=12)))
            fig.update_layout(title="Familiarity vs utility", xaxis_title=METRICS[x_key][0],
                              yaxis_title=METRICS[y_key][0], height=380, margin=dict(t=40, b=40))
            st.plotly_chart(fig, key="eval_tradeoff")
        with c2:
            fig = go.Figure([go.Bar(name=METRICS[k][0], x=list(models), y=[v.get(k) for v in models.values()])
                             for k in ("verbatim_rougeL", "verbatim_token_match", "verbatim_exact")
                             if any(v.get(k) is not None for v in models.values())])
            fig.update_layout(title="Verbatim memorisation", barmode="group", yaxis_range=[0, 1], height=380,
                              margin=dict(t=40, b=40))
            st.plotly_chart(fig, key="eval_verbatim")

        robust = [k for k in ROBUST if any(v.get(k) is not None for v in models.values())]
        if len(robust) > 1:
            fig = go.Figure([go.Bar(name=METRICS[k][0] if k != ROBUST[0] else "plain prompt", x=list(models),
                                    y=[v.get(k) for v in models.values()]) for k in robust])
            fig.update_layout(title="Robustness: familiarity (prob.) under pressure", barmode="group", height=380,
                              yaxis_title="P(answer)", margin=dict(t=40, b=40))
            st.plotly_chart(fig, key="eval_robust_chart")
            back = pd.DataFrame([{METRICS[k][0]: (v[k] / v["familiarity_probability"]
                                                  if v.get(k) is not None and v.get("familiarity_probability") else None)
                                  for k in robust[1:]} for v in models.values()], index=list(models))
            st.caption("How much comes back: familiarity under pressure ÷ plain familiarity (1 = no change).")
            st.dataframe(back.style.format("{:.2f}x", na_rep="–"), key="eval_back")

        ex = result.get("examples", {})
        with st.expander("Completions and verbatim continuations"):
            who = st.selectbox("Model", list(ex), key="eval_ex_model")
            if ex.get(who, {}).get("completion"):
                st.dataframe(pd.DataFrame([{**e, "familiar": ", ".join(e["familiar"])} for e in ex[who]["completion"]]),
                             key="eval_completions")
            if ex.get(who, {}).get("verbatim"):
                st.dataframe(pd.DataFrame(ex[who]["verbatim"]), key="eval_verbatim_examples")
        st.download_button("Download eval.json", json.dumps(result, indent=2, ensure_ascii=False),
                           file_name=f"eval-{Path(shown).name}.json", mime="application/json", key="eval_download")


# -- training curves ------------------------------------------------------------------------------
st.subheader("Tracked probabilities over training", divider="gray")
runs = run_dirs()
if not runs:
    st.info("No runs yet: the Runs page trains one (its probes are tracked every few steps).")
else:
    run = st.selectbox("Run", runs, format_func=lambda r: f"{r.name} ({METHOD_LABEL.get(run_method(r), run_method(r))})",
                       key="eval_run")
    rows = [r for r in jobs.read_metrics(run) if isinstance(r.get("probes"), dict) or r.get("familiarity") is not None]
    if not rows:
        st.info("This run has logged no probe probabilities yet.")
    else:
        phases = list(dict.fromkeys(r.get("phase", "") for r in rows))
        phase = st.radio("Phase", phases, index=len(phases) - 1, horizontal=True, key="eval_phase")
        rows = [r for r in rows if r.get("phase", "") == phase]
        probe_names = list(dict.fromkeys(k for r in rows for k in (r.get("probes") or {})))
        chosen = st.multiselect("Probes", probe_names, default=probe_names[:4], key="eval_probes_pick")
        fig = go.Figure()
        for key, label in (("familiarity", "familiarity (mean of forget probes)"), ("retain", "retain (mean)")):
            if any(r.get(key) is not None for r in rows):
                fig.add_scatter(x=[r["step"] for r in rows], y=[r.get(key) for r in rows], name=label,
                                mode="lines+markers", line=dict(width=3))
        for name in chosen:
            fig.add_scatter(x=[r["step"] for r in rows], y=[(r.get("probes") or {}).get(name) for r in rows],
                            name=name, mode="lines+markers", line=dict(dash="dot"))
        fig.update_layout(title=f"{run.name}: {phase}", xaxis_title="step", yaxis_title="probability", height=400,
                          margin=dict(t=40, b=40))
        st.plotly_chart(fig, key="eval_tracked")
