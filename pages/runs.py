"""Runs: configure and launch unlearning runs (background processes), follow them live, compare.

Layout and engine calls only: a run is `python -m engine run RUN_DIR/config.json --out RUN_DIR`
started by engine.runs.launch_run; this page reads RUN_DIR (status.json, metrics.jsonl, log.txt),
so any tab, including one opened after a refresh, sees every run.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, fields
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from app import state
from engine import jobs
from engine.errors import UserError
from engine.io import browser_path
from engine.runs import METHODS, RunConfig, launch_run, load_config, resume_run

ASSETS = state.ASSETS
USE_KEY = "unlearned_adapter"  # "use in Inspect" also leaves the adapter path here

st.title("Runs")
st.caption("Reinforce → generic labels → unlearn (WHP), or the gradient-ascent baseline, as background "
           "jobs writing a run directory. One job runs at a time; later ones queue.")


def all_runs() -> list[dict]:
    runs = []
    for root in state.run_roots():
        runs += [s for s in jobs.list_jobs(root) if s.get("kind") == "run"]
    return sorted(runs, key=lambda s: s.get("created", ""), reverse=True)


def demo_defaults() -> dict:
    """The form starts at the demo config (sized for 2 CPU cores), else at RunConfig's defaults."""
    try:
        return load_config(ASSETS / "demo.yaml").to_dict()
    except UserError:
        return {f.name: f.default_factory() if f.default is MISSING else f.default for f in fields(RunConfig)}


# -- new run --------------------------------------------------------------------------------------
with st.expander("New run", expanded=not all_runs()):
    d = demo_defaults()
    method = st.radio("Method", METHODS, horizontal=True, key="run_method",
                      format_func={"whp": "WHP (reinforce → generic labels → unlearn)",
                                   "gradient_ascent": "gradient ascent (baseline)",
                                   "reinforce_only": "reinforce only (expert / goldfish fine-tune)"}.get)
    c1, c2, c3 = st.columns(3)
    corpus = c1.text_input("Corpus (target text)", d.get("corpus") or str(ASSETS / "demo_corpus.txt"), key="run_corpus")
    anchors = c2.text_input("Anchored terms", str(state.anchors_path()), key="run_anchors",
                            disabled=method != "whp", help="The dictionary saved on the Anchors page.")
    probes = c3.text_input("Probes (tracked probabilities)", d.get("probes") or str(ASSETS / "probes.json"),
                           key="run_probes")
    c1, c2, c3, c4 = st.columns(4)
    steps = c1.number_input("Unlearn steps", 1, 100_000, int(d["steps"]), key="run_steps",
                            help="Optimizer steps on the generic labels (paper: 120).")
    reinforce_steps = c2.number_input("Reinforce steps", 0, 100_000, int(d["reinforce_steps"]), key="run_rsteps",
                                      disabled=method == "gradient_ascent")
    lr = c3.number_input("Learning rate", 1e-7, 1.0, float(d["lr"]), format="%.1e", key="run_lr")
    alpha = c4.number_input("alpha", 0.0, 1000.0, float(d["alpha"]), 0.5, key="run_alpha",
                            disabled=method != "whp", help="generic = base − alpha·relu(expert − base)")
    c1, c2, c3, c4 = st.columns(4)
    rank = c1.number_input("LoRA rank", 1, 1024, int(d["lora_rank"]), key="run_rank")
    batch = c2.number_input("Batch (blocks)", 1, 4096, int(d["batch_size"]), key="run_batch")
    block = c3.number_input("Block size (tokens)", 8, 8192, int(d["block_size"]), key="run_block")
    max_blocks = c4.number_input("Max blocks (0 = all)", 0, 1_000_000, int(d.get("max_blocks") or 0), key="run_maxb")
    with st.expander("More settings"):
        c1, c2, c3, c4 = st.columns(4)
        reinforce_lr = c1.number_input("Reinforce lr", 1e-7, 1.0, float(d.get("reinforce_lr") or d["lr"]),
                                       format="%.1e", key="run_rlr")
        lora_layers = c2.number_input("LoRA top layers (0 = all)", 0, 1000, int(d.get("lora_layers") or 0),
                                      key="run_layers", help="Fewer adapted layers = a shorter backward pass.")
        seed = c3.number_input("Seed", 0, 2**31 - 1, int(d["seed"]), key="run_seed")
        ckpt = c4.checkbox("Gradient checkpointing", bool(d["gradient_checkpointing"]), key="run_gc")
        c1, c2, c3, c4 = st.columns(4)
        gf_kind = c1.selectbox("Goldfish loss", ("none", "static", "hash"), key="run_gf",
                               help="Drops ~1/k label positions of next-token phases (reinforce, retain term).")
        gf_k = c2.number_input("goldfish k", 2, 1024, 4, key="run_gf_k")
        gf_h = c3.number_input("goldfish h", 1, 1024, 13, key="run_gf_h")
        c1, c2, c3, c4 = st.columns(4)
        label_kind = c1.selectbox("Labels", ("hard", "soft"), index=("hard", "soft").index(d.get("labels", "hard")),
                                  key="run_labels", disabled=method != "whp",
                                  help="hard: argmax of the generic logits (the paper). soft: cross-entropy to the "
                                       "top-k generic distribution, which keeps the baseline's uncertainty elsewhere.")
        retain = c2.text_input("Retain text", d.get("retain") or "", key="run_retain",
                               disabled=method == "reinforce_only",
                               help="Text whose predictions must not move: a retain term is added to the unlearning loss.")
        retain_loss = c3.selectbox("Retain loss", ("kl", "ce"), index=("kl", "ce").index(d.get("retain_loss", "kl")),
                                   key="run_retain_loss", disabled=method == "reinforce_only",
                                   help="kl: KL to the baseline on the retain text; ce: next-token loss on it.")
        retain_weight = c4.number_input("Retain weight", 0.0, 1000.0, float(d.get("retain_weight", 1.0)), 0.5,
                                        key="run_retain_weight", disabled=method == "reinforce_only")
    if st.button("Start run", type="primary", key="run_start"):
        def readable(path: str, what: str) -> str | None:
            """A path typed here must be under assets/, OBLIVIATE_HOME or runs/ (engine.io.browser_path)."""
            return str(browser_path(path, what)) if path.strip() else None

        config = {
            "method": method, "corpus": corpus.strip(), "anchors": anchors.strip() if method == "whp" else None,
            "probes": probes.strip() or None, "steps": int(steps), "reinforce_steps": int(reinforce_steps),
            "lr": float(lr), "reinforce_lr": float(reinforce_lr), "alpha": float(alpha), "lora_rank": int(rank),
            "batch_size": int(batch), "block_size": int(block), "max_blocks": int(max_blocks) or None,
            "lora_layers": int(lora_layers) or None, "seed": int(seed), "gradient_checkpointing": bool(ckpt),
            "goldfish": {"kind": gf_kind, "k": int(gf_k), "h": int(gf_h)},
            "retain": retain.strip() if method != "reinforce_only" and retain.strip() else None,
            "retain_loss": retain_loss, "retain_weight": float(retain_weight), "labels": label_kind,
            "model": (st.session_state.get(state.MODEL) or state.default_model()).strip(),
            "precision": st.session_state.get(state.PRECISION) or "auto",
            "device": st.session_state.get(state.DEVICE) or "auto",
            "probe_every": int(d.get("probe_every") or 10), "checkpoint_every": int(d.get("checkpoint_every") or 20),
        }
        try:
            for field, what in (("corpus", "Corpus"), ("anchors", "Anchored terms"), ("probes", "Probes"),
                                ("retain", "Retain text")):
                if config[field]:
                    config[field] = readable(config[field], what)
            busy = any(s.get("state") in jobs.ACTIVE for s in all_runs())
            status = launch_run(config)
            st.session_state["run_which"] = status["dir"]  # show the new run (drawn below, after the rerun)
            st.session_state["run_flash"] = ("Queued behind the running job: " if busy else "Started ") + \
                Path(status["dir"]).name
            st.rerun()
        except UserError as e:
            st.error(str(e))

if msg := st.session_state.pop("run_flash", None):
    st.success(msg)


# -- charts ---------------------------------------------------------------------------------------
def loss_figure(rows: list[dict], title: str = "loss") -> go.Figure:
    fig = go.Figure()
    for phase in dict.fromkeys(r["phase"] for r in rows):
        pts = [r for r in rows if r["phase"] == phase and r.get("loss") is not None]
        fig.add_scatter(x=[r["step"] for r in pts], y=[r["loss"] for r in pts], mode="lines", name=phase)
    fig.update_layout(title=title, xaxis_title="step", height=300, margin=dict(t=40, b=30, l=40, r=10))
    return fig


def probe_figure(rows: list[dict], names: list[str]) -> go.Figure:
    fig = go.Figure()
    probed = [r for r in rows if r.get("probes")]
    for phase in dict.fromkeys(r["phase"] for r in probed):
        pts = [r for r in probed if r["phase"] == phase]
        for key in ("familiarity", "retain"):
            if any(r.get(key) is not None for r in pts):
                fig.add_scatter(x=[r["step"] for r in pts], y=[r.get(key) for r in pts], mode="lines+markers",
                                name=f"{phase}: mean {key}", line=dict(dash="dot" if key == "retain" else "solid"))
        for n in names:
            fig.add_scatter(x=[r["step"] for r in pts], y=[r["probes"].get(n) for r in pts], mode="lines+markers",
                            name=f"{phase}: {n}")
    fig.update_layout(title="tracked probabilities", xaxis_title="step", yaxis_title="probability", height=340,
                      margin=dict(t=40, b=30, l=40, r=10))
    return fig


def fmt_eta(s) -> str:
    if s is None or not isinstance(s, (int, float)) or math.isnan(s):
        return "ETA …"
    return f"ETA {int(s) // 60}:{int(s) % 60:02d}"


# -- one run --------------------------------------------------------------------------------------
def run_panel(d: str) -> None:
    s = jobs.read_status(d)
    name = Path(d).name
    active = s.get("state") in jobs.ACTIVE
    if not active and st.session_state.get(f"run_was_active_{name}"):
        st.session_state.pop(f"run_was_active_{name}")
        st.rerun()  # it just ended: redraw the whole page once, which stops the polling
    st.session_state[f"run_was_active_{name}"] = active
    total, step = s.get("total") or 0, s.get("step") or 0
    phase = s.get("phase") or ""
    if active:
        text = f"{s['state']} · {phase} {s.get('phase_step', 0)}/{s.get('phase_total', 0)} · overall {step}/{total}"
        st.progress(min(step / total, 1.0) if total else 0.0, text=f"{text} · {fmt_eta(s.get('eta_s'))}")
    elif s.get("state") == "finished":
        st.success(f"finished · {', '.join(s.get('done_phases', []))}")
    else:
        st.error(f"{s.get('state')}: {s.get('error') or 'stopped'} (phase {phase}, step {s.get('phase_step', 0)})")
    m1, m2, m3, m4 = st.columns(4)
    loss = s.get("loss")
    m1.metric("loss", f"{loss:.4f}" if isinstance(loss, (int, float)) else "–")
    tps = s.get("tokens_per_s")
    m2.metric("tokens/s", f"{tps:.0f}" if isinstance(tps, (int, float)) else "–")
    mem = s.get("memory_mib")
    m3.metric("memory", f"{mem:.0f} MiB" if isinstance(mem, (int, float)) else "–")
    summ = s.get("summary") or {}
    before, after = (summ.get("unlearn_before") or summ.get("gradient_ascent_before") or {}), \
        (summ.get("unlearn_after") or summ.get("gradient_ascent_after") or {})
    if before.get("familiarity") is not None and after.get("familiarity") is not None:
        m4.metric("familiarity", f"{after['familiarity']:.4f}",
                  f"{after['familiarity'] - before['familiarity']:+.4f}", delta_color="inverse")
    rows = jobs.read_metrics(d)
    if rows:
        names = sorted({n for r in rows if r.get("probes") for n in r["probes"]})
        hermione = [n for n in names if "Hermione" in n][:1]
        chosen = st.multiselect("Tracked probes", names, default=hermione or names[:1], key=f"run_probes_{name}")
        c1, c2 = st.columns(2)
        c1.plotly_chart(loss_figure(rows), key=f"run_loss_{name}")
        c2.plotly_chart(probe_figure(rows, chosen), key=f"run_probe_{name}")
    else:
        st.info("No metrics yet: the run is loading the model or waiting in the queue.")
    with st.expander("Log"):
        st.code(jobs.read_log(d, 40) or "(empty)")


def run_actions(d: str) -> None:
    s = jobs.read_status(d)
    name = Path(d).name
    c1, c2, c3, c4 = st.columns(4)
    try:
        if s.get("state") in jobs.ACTIVE:
            if c1.button("Cancel", key=f"run_cancel_{name}"):
                jobs.cancel(d)
                st.toast(f"asked {name} to stop (it saves a checkpoint first)")
        elif s.get("state") != "finished":
            if c1.button("Resume", key=f"run_resume_{name}", help="continue from the last checkpoint"):
                resume_run(d)
                st.rerun()
        unlearned = Path(d) / "adapters" / "unlearned"
        expert = Path(d) / "adapters" / "expert"
        if (unlearned / "adapter_config.json").exists() and c2.button("Use in Inspect", key=f"run_use_{name}",
                                                                      help="load this run's unlearned adapter"):
            st.session_state[USE_KEY] = str(unlearned)
            state.use_adapter("unlearned", str(unlearned))
            if (expert / "adapter_config.json").exists():
                state.use_adapter("expert", str(expert))
            st.switch_page(str(state.ROOT / "pages" / "inspect.py"))
        if s.get("state") not in jobs.ACTIVE:
            with c3.popover("Delete"):
                st.write(f"Delete **{name}** and its adapters for good?")
                if st.button("Yes, delete", type="primary", key=f"run_delete_{name}"):
                    jobs.delete(d)
                    st.rerun()
        c4.caption(d)
    except UserError as e:
        st.error(str(e))


st.subheader("Runs", divider="gray")
runs = all_runs()
if not runs:
    st.info("No runs yet: open **New run** above (the defaults are the demo, about 10 minutes on 2 CPU cores), "
            "or run `make demo` in a terminal.")
    st.stop()

st.dataframe(
    [{"run": Path(r["dir"]).name, "method": r.get("method", ""), "state": r.get("state"), "phase": r.get("phase"),
      "progress": f"{r.get('step', 0)}/{r.get('total', 0)}", "created": r.get("created", "")} for r in runs],
    hide_index=True, width="stretch")
dirs = [r["dir"] for r in runs]
if st.session_state.get("run_which") not in dirs:
    st.session_state.pop("run_which", None)  # deleted since, or first visit: the newest run
shown = st.selectbox("Run", dirs, key="run_which",
                     format_func=lambda x: f"{Path(x).name} ({next(r for r in runs if r['dir'] == x).get('state')})")
is_active = jobs.read_status(shown).get("state") in jobs.ACTIVE
st.fragment(run_every=2.0 if is_active else None)(run_panel)(shown)
run_actions(shown)

# -- compare --------------------------------------------------------------------------------------
if len(dirs) >= 2:
    st.subheader("Compare two runs", divider="gray")
    c1, c2, c3 = st.columns(3)
    a = c1.selectbox("Run A", dirs, index=0, key="run_cmp_a", format_func=lambda x: Path(x).name)
    b = c2.selectbox("Run B", dirs, index=1, key="run_cmp_b", format_func=lambda x: Path(x).name)
    ra, rb = jobs.read_metrics(a), jobs.read_metrics(b)
    probe_names = sorted({n for r in ra + rb if r.get("probes") for n in r["probes"]})
    series = c3.selectbox("Series", ["loss", "familiarity", "retain", *probe_names], key="run_cmp_series")
    fig = go.Figure()
    for label, rows in ((Path(a).name, ra), (Path(b).name, rb)):
        for phase in dict.fromkeys(r["phase"] for r in rows):
            pts = [r for r in rows if r["phase"] == phase]
            ys = [(r.get("probes") or {}).get(series) if series in probe_names else r.get(series) for r in pts]
            pts_y = [(r["step"], y) for r, y in zip(pts, ys) if y is not None]
            if pts_y:
                fig.add_scatter(x=[p[0] for p in pts_y], y=[p[1] for p in pts_y], mode="lines+markers",
                                name=f"{label} · {phase}")
    fig.update_layout(title=series, xaxis_title="step", height=340, margin=dict(t=40, b=30, l=40, r=10))
    st.plotly_chart(fig, key="run_compare")
