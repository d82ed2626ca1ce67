"""Runs: configure and launch unlearning runs (background processes), follow them live, compare.

Layout and engine calls only: engine.jobs launches a run (`python -m engine run RUN_DIR/config.json
--out RUN_DIR`) and reads its directory back, so any tab, including one opened after a refresh,
sees every run. The form is derived from the run config's fields (engine.config.form_fields): a
new method or option appears here without touching this page.
"""
from __future__ import annotations

import math
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from app import state
from engine import jobs
from engine.config import flatten, form_fields, load_config, nest, run_config
from engine.errors import UserError
from engine.io import browser_path
from engine.methods import METHODS

ASSETS = state.ASSETS
USE_KEY = "unlearned_adapter"  # "use in Inspect" also leaves the adapter path here
TEXT_PATHS = {"corpus": "Corpus", "retain.text": "Retain text", "probes": "Probes", "whp.anchors": "Anchored terms"}
MAIN = ("corpus", "whp.anchors", "probes", "unlearn.steps", "reinforce.steps", "unlearn.lr", "whp.alpha",
        "lora.rank", "train.batch_size", "data.block_size", "data.max_blocks")

st.title("Runs")
st.caption("Reinforce → generic labels → unlearn (WHP), or another method, as background jobs writing a run "
           "directory. One job runs at a time; later ones queue.")


def demo_defaults() -> dict:
    """The form starts at the demo config (sized for 2 CPU cores), with the saved anchor dictionary."""
    try:
        values = flatten(load_config(ASSETS / "demo.yaml").to_dict())
    except UserError:
        values = {}
    values["whp.anchors"] = str(state.anchors_path())
    return values


def widget(spec: dict, default):
    """One form field, its widget chosen by the field's kind; its help is the field's docstring."""
    path, kind, label = spec["path"], spec["kind"], spec["path"].replace(".", " · ").replace("_", " ")
    key, help_ = f"run_{path}", spec["help"] or None
    if kind == "bool":
        return st.checkbox(label, bool(default), key=key, help=help_)
    if kind == "choice":
        return st.selectbox(label, spec["choices"], index=spec["choices"].index(default)
                            if default in spec["choices"] else 0, key=key, help=help_)
    if kind == "int":
        lo = spec.get("ge", spec["gt"] + 1 if "gt" in spec else -2**31)
        if spec["optional"]:  # 0 stands for "none" (all blocks, all layers)
            return st.number_input(f"{label} (0 = none)", 0, spec.get("le", 2**31 - 1), int(default or 0),
                                   key=key, help=help_) or None
        return st.number_input(label, lo, spec.get("le", 2**31 - 1), int(default if default is not None else lo),
                               key=key, help=help_)
    if kind == "float":
        fmt = "%.1e" if path.endswith("lr") else "%.3g"
        value = st.number_input(label, value=float(default) if default is not None else 0.0, format=fmt,
                                min_value=float(spec.get("ge", spec.get("gt", 0.0))), key=key, help=help_)
        return None if spec["optional"] and not value else value
    if kind == "list":  # alphas
        text = st.text_input(label, ", ".join(f"{x:g}" for x in (default or [])), key=key, help=help_)
        try:
            return [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            return text  # validation names it
    text = st.text_input(label, "" if default is None else str(default), key=key, help=help_)
    return text.strip() or None


# -- new run --------------------------------------------------------------------------------------
with st.expander("New run", expanded=not jobs.list_runs()):
    d = demo_defaults()
    method = st.radio("Method", list(METHODS), horizontal=True, key="run_method",
                      format_func=lambda m: f"{METHODS[m].label or m} ({m})")
    specs = form_fields(method)
    values = {}
    main = [s for s in specs if s["path"] in MAIN]
    for row in range(0, len(main), 4):
        for col, spec in zip(st.columns(4), main[row: row + 4]):
            with col:
                values[spec["path"]] = widget(spec, d.get(spec["path"], spec["default"]))
    with st.expander("More settings"):
        rest = [s for s in specs if s["path"] not in MAIN]
        for row in range(0, len(rest), 4):
            for col, spec in zip(st.columns(4), rest[row: row + 4]):
                with col:
                    values[spec["path"]] = widget(spec, d.get(spec["path"], spec["default"]))
    if st.button("Start run", type="primary", key="run_start"):
        try:
            for path, what in TEXT_PATHS.items():  # a path typed here must be under assets/, OBLIVIATE_HOME or runs/
                if values.get(path):
                    values[path] = str(browser_path(values[path], what))
            values["method"] = method
            values["model.name"] = (st.session_state.get(state.MODEL) or state.default_model()).strip()
            values["model.precision"] = st.session_state.get(state.PRECISION) or "auto"
            values["model.device"] = st.session_state.get(state.DEVICE) or "auto"
            busy = any(s.active for s in jobs.list_runs())
            status = jobs.launch_run(run_config(nest(values)))
            st.session_state["run_which"] = status.dir  # show the new run (drawn below, after the rerun)
            st.session_state["run_flash"] = ("Queued behind the running job: " if busy else "Started ") + status.name
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
    name = s.name
    active = s.active
    if not active and st.session_state.get(f"run_was_active_{name}"):
        st.session_state.pop(f"run_was_active_{name}")
        st.rerun()  # it just ended: redraw the whole page once, which stops the polling
    st.session_state[f"run_was_active_{name}"] = active
    if active:
        text = f"{s.state} · {s.phase} {s.phase_step}/{s.phase_total} · overall {s.step}/{s.total}"
        st.progress(min(s.step / s.total, 1.0) if s.total else 0.0, text=f"{text} · {fmt_eta(s.eta_s)}")
    elif s.state == "finished":
        st.success(f"finished · {', '.join(s.done_phases)}")
    else:
        st.error(f"{s.state}: {s.error or 'stopped'} (phase {s.phase}, step {s.phase_step})")
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("loss", f"{s.loss:.4f}" if s.loss is not None else "–")
    m2.metric("tokens/s", f"{s.tokens_per_s:.0f}" if s.tokens_per_s is not None else "–")
    m3.metric("memory", f"{s.memory_mib:.0f} MiB" if s.memory_mib is not None else "–")
    before, after = jobs.headline(s).get("before", {}), jobs.headline(s).get("after", {})
    if before.get("familiarity") is not None and after.get("familiarity") is not None:
        m4.metric("familiarity", f"{after['familiarity']:.4f}",
                  f"{after['familiarity'] - before['familiarity']:+.4f}", delta_color="inverse")
    rows = jobs.read_metrics(d)
    if rows:
        names = sorted({n for r in rows if r.get("probes") for n in r["probes"]})
        first = [n for n in s.summary.get("probe_names") or [] if n in names][:1]  # the probes file's headline
        chosen = st.multiselect("Tracked probes", names, default=first or names[:1], key=f"run_probes_{name}")
        c1, c2 = st.columns(2)
        c1.plotly_chart(loss_figure(rows), key=f"run_loss_{name}")
        c2.plotly_chart(probe_figure(rows, chosen), key=f"run_probe_{name}")
    else:
        st.info("No metrics yet: the run is loading the model or waiting in the queue.")
    with st.expander("Log"):
        st.code(jobs.read_log(d, 40) or "(empty)")


def run_actions(d: str) -> None:
    s = jobs.read_status(d)
    name = s.name
    c1, c2, c3, c4 = st.columns(4)
    try:
        if s.active:
            if c1.button("Cancel", key=f"run_cancel_{name}"):
                jobs.cancel(d)
                st.toast(f"asked {name} to stop (it saves a checkpoint first)")
        elif s.state != "finished":
            if c1.button("Resume", key=f"run_resume_{name}", help="continue from the last checkpoint"):
                jobs.resume_run(d)
                st.rerun()
        adapters = jobs.run_adapters(d)
        if "unlearned" in adapters and c2.button("Use in Inspect", key=f"run_use_{name}",
                                                 help="load this run's unlearned adapter"):
            st.session_state[USE_KEY] = adapters["unlearned"]
            state.use_adapter("unlearned", adapters["unlearned"])
            if "expert" in adapters:
                state.use_adapter("expert", adapters["expert"])
            st.switch_page(str(state.ROOT / "pages" / "inspect.py"))
        if not s.active:
            with c3.popover("Delete"):
                st.write(f"Delete **{name}** and its adapters for good?")
                if st.button("Yes, delete", type="primary", key=f"run_delete_{name}"):
                    jobs.delete(d)
                    st.rerun()
        c4.caption(d)
    except UserError as e:
        st.error(str(e))


st.subheader("Runs", divider="gray")
runs = jobs.list_runs()
if not runs:
    st.info("No runs yet: open **New run** above (the defaults are the demo, about 10 minutes on 2 CPU cores), "
            "or run `make demo` in a terminal.")
    st.stop()

st.dataframe(
    [{"run": r.name, "method": r.method or "", "state": r.state, "phase": r.phase, "progress": f"{r.step}/{r.total}",
      "created": r.created} for r in runs],
    hide_index=True, width="stretch")
dirs = [r.dir for r in runs]
if st.session_state.get("run_which") not in dirs:
    st.session_state.pop("run_which", None)  # deleted since, or first visit: the newest run
shown = st.selectbox("Run", dirs, key="run_which",
                     format_func=lambda x: f"{Path(x).name} ({next(r for r in runs if r.dir == x).state})")
is_active = jobs.read_status(shown).active
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
