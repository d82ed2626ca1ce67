"""Runs: configure and launch unlearning runs (background processes), follow them live, compare.

Layout and engine calls only: engine.jobs launches a run (`python -m engine run RUN_DIR/config.json
--out RUN_DIR`) and reads its directory back, so any tab, including one opened after a refresh,
sees every run. The form is the whole run config, derived from its fields
(engine.config.form_fields): a new method or option appears here without touching this page.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from app import charts, run_views, state
from engine import jobs
from engine.config import ModelConfig, flatten, form_fields, load_config, nest, path_fields, run_config
from engine.errors import UserError
from engine.estimate import estimate_run
from engine.boundary import browser_model, browser_path
from engine.methods import METHODS

ASSETS = state.ASSETS

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


def _shown(spec: dict, value):
    """A config value as its widget holds it."""
    kind = spec["kind"]
    if kind == "list":
        return ", ".join(f"{x:g}" for x in (value or []))
    if kind == "int":
        return int(value or 0) if spec["optional"] else int(value if value is not None else spec.get("ge", 0))
    if kind == "float":
        return float(value) if value is not None else 0.0
    if kind == "bool":
        return bool(value)
    if kind == "choice":
        return value if value in spec["choices"] else spec["choices"][0]
    return "" if value is None else str(value)


def widget(spec: dict, default):
    """One form field, its widget chosen by the field's kind; its help is the field's docstring.
    The value lives in st.session_state["run_<path>"] (a loaded YAML writes it there)."""
    path, kind, label = spec["path"], spec["kind"], spec["path"].replace(".", " · ").replace("_", " ")
    key, help_ = f"run_{path}", spec["help"] or None
    if key not in st.session_state:
        st.session_state[key] = _shown(spec, default)
    if kind == "bool":
        return st.checkbox(label, key=key, help=help_)
    if kind == "choice":
        return st.selectbox(label, spec["choices"], key=key, help=help_)
    if kind == "int":
        lo = spec.get("ge", spec["gt"] + 1 if "gt" in spec else -2**31)
        if spec["optional"]:  # 0 stands for "none" (all blocks, all layers)
            return st.number_input(f"{label} (0 = none)", 0, spec.get("le", 2**31 - 1), key=key, help=help_) or None
        return st.number_input(label, lo, spec.get("le", 2**31 - 1), key=key, help=help_)
    if kind == "float":
        fmt = "%.1e" if path.endswith("lr") else "%.3g"
        value = st.number_input(label, format=fmt, min_value=float(spec.get("ge", spec.get("gt", 0.0))), key=key,
                                help=help_)
        return None if spec["optional"] and not value else value
    if kind == "list":  # alphas
        text = st.text_input(label, key=key, help=help_)
        try:
            return [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            return text  # validation names it
    text = st.text_input(label, key=key, help=help_)
    return text.strip() or None


def _load_yaml() -> None:
    """The uploaded config into the form (a callback: it runs before the form's widgets are drawn)."""
    upload = st.session_state.get("run_yaml")
    if upload is None:
        return
    try:
        cfg = jobs.config_from_bytes(upload.getvalue(), upload.name, gate=browser_path)
    except UserError as e:
        st.session_state["run_yaml_error"] = f"{upload.name}: {e}"
        return
    values = flatten(cfg.to_dict())
    st.session_state["run_method"] = cfg.method
    for spec in form_fields(cfg.method):
        st.session_state[f"run_{spec['path']}"] = _shown(spec, values.get(spec["path"], spec["default"]))
    st.session_state["run_flash"] = f"Loaded {upload.name} into the form (model: the sidebar's)."


def form_config(method: str, values: dict):
    """The form's values as a validated run config, with the sidebar's model."""
    values = dict(values)
    for path in path_fields():  # every path field, a method's own too, must be under assets/, OBLIVIATE_HOME or runs/
        if isinstance(values.get(path), str) and values[path]:
            values[path] = str(browser_path(values[path], path))
    values["method"] = method
    values["model.name"] = browser_model(st.session_state.get(state.MODEL) or state.default_model())
    values["model.precision"] = st.session_state.get(state.PRECISION) or "auto"
    values["model.device"] = st.session_state.get(state.DEVICE) or "auto"
    return run_config(nest(values))


# -- new run --------------------------------------------------------------------------------------
if "run_flash" in st.session_state:
    st.session_state["run_form_open"] = True  # a loaded YAML or a launch: the form stays open on later edits
with st.expander("New run", expanded=not jobs.list_runs() or bool(st.session_state.get("run_form_open"))):
    d = demo_defaults()
    y1, y2 = st.columns([3, 2], vertical_alignment="bottom")
    y1.file_uploader("Load a config (YAML or JSON)", type=["yaml", "yml", "json"], key="run_yaml",
                     help="Fills the form from a config file, e.g. assets/demo.yaml; relative paths in it are "
                          "read from assets/")
    y2.button("Load into the form", key="run_yaml_load", on_click=_load_yaml,
              disabled=st.session_state.get("run_yaml") is None)
    if err := st.session_state.pop("run_yaml_error", None):
        st.error(err)
    if "run_method" not in st.session_state:
        st.session_state["run_method"] = "whp"
    method = st.radio("Method", list(METHODS), horizontal=True, key="run_method",
                      format_func=lambda m: f"{METHODS[m].label or m} ({m})")
    specs = form_fields(method)
    values = {}
    main = [s for s in specs if s["main"]]
    for row in range(0, len(main), 4):
        for col, spec in zip(st.columns(4), main[row: row + 4]):
            with col:
                values[spec["path"]] = widget(spec, d.get(spec["path"], spec["default"]))
    with st.expander(f"Every other field ({len(specs) - len(main)})"):
        rest = [s for s in specs if not s["main"]]
        for row in range(0, len(rest), 4):
            for col, spec in zip(st.columns(4), rest[row: row + 4]):
                with col:
                    values[spec["path"]] = widget(spec, d.get(spec["path"], spec["default"]))
    cfg, cfg_error = None, None
    try:
        cfg = form_config(method, values)
    except UserError as e:
        cfg_error = str(e)
    r1, r2, r3 = st.columns([2, 1, 3], vertical_alignment="bottom")
    name = r1.text_input("Run name (optional)", key="run_name", placeholder="<time>-<method>",
                         help="The run directory's name under OBLIVIATE_HOME/runs: letters, digits, '.', '_', '-'")
    start = r2.button("Start run", type="primary", key="run_start")
    if cfg is not None:
        wb = state.context().wb
        est = estimate_run(cfg, tokenizer=wb.tokenizer if wb is not None else None)
        r3.markdown(f"**Expected duration:** {est.text()}" if est.seconds else (est.notes or [""])[0],
                    help="engine/estimate.py: a cost model in forward-token units, fitted on this kind of "
                         "machine; a busy CPU takes longer. " + " ".join(est.notes))
    else:
        r3.caption("Fix the form to see the expected duration.")
    with st.expander("The config as YAML, and the same run from a terminal"):
        if cfg is None:
            st.error(cfg_error)
        else:
            out = jobs.runs_root() / (name.strip() or f"<time>-{method}")
            st.code(jobs.config_yaml(cfg), language="yaml")
            st.caption("Save it as config.yaml, then:")
            st.code(jobs.run_command("config.yaml", out), language="bash")
    if start:
        try:
            if cfg is None:
                raise UserError(cfg_error)
            busy = any(s.active for s in jobs.list_runs())
            status = jobs.launch_run(cfg, name=name)
            st.session_state["run_which"] = status.dir  # show the new run (drawn below, after the rerun)
            st.session_state["run_flash"] = ("Queued behind the running job: " if busy else "Started ") + status.name
            st.rerun()
        except UserError as e:
            st.error(str(e))

# -- a forget corpus from what the model knows ------------------------------------------------------
def _use_corpus(path: str) -> None:
    st.session_state["run_corpus"] = path  # a callback: runs before the form is drawn again
    st.session_state["run_flash"] = f"The next run's corpus is {path}."


def corpus_panel() -> None:
    """The latest corpus job: progress while it samples, then its counts and "use it"."""
    found = jobs.list_corpora()
    if not found:
        return
    s = found[0]
    if s.active:
        st.progress(min(s.step / s.total, 1.0) if s.total else 0.0, text=f"{s.state} · {s.phase} {s.step}/{s.total}")
    elif s.state == "finished":
        info = s.summary
        c1, c2 = st.columns([4, 1], vertical_alignment="center")
        c1.success(f"{s.name}: kept {info.get('kept', '?')} of {info.get('samples', '?')} samples, "
                   f"{info.get('chars', 0):,} characters")
        c2.button("Use as the corpus", key="run_use_corpus", on_click=_use_corpus,
                  args=(str(Path(s.dir) / "corpus.txt"),))
    else:
        st.error(f"{s.name}: {s.state}: {s.error or 'stopped'}")


with st.expander("Generate a forget corpus from the model"):
    st.caption("Samples the sidebar's model (and its expert, if one is chosen) on prompts about every anchored "
               "term of the saved dictionary, and keeps what is specific to the target: a sample that names "
               "another anchored term, or that the expert finds likelier than the baseline. The corpus then "
               "covers what the model knows, not only what a summary states (engine/corpus.py).")
    g1, g2, g3, g4, g5 = st.columns(5)
    n_prompts = g1.number_input("prompts", 1, 100_000, 240, key="corpus_prompts")
    n_samples = g2.number_input("samples per prompt", 1, 100, 2, key="corpus_samples")
    n_tokens = g3.number_input("tokens per sample", 1, 1000, 64, key="corpus_tokens")
    min_rise = g4.number_input("expert's rise (nats/token)", -100.0, 100.0, 0.3, step=0.1, key="corpus_min_rise",
                               help="A sample that names no other anchored term is kept when the expert favours it "
                                    "by this much per token over the baseline; without an expert its rise is 0.")
    max_chars = g5.number_input("size limit (characters)", 1000, 50_000_000, 200_000, step=10_000,
                                key="corpus_max_chars")
    ctx = state.context()
    expert_dir = ctx.wb.adapters.get(ctx.expert) if ctx.wb is not None and ctx.expert else None
    if st.button("Generate", key="corpus_start",
                 help=f"expert: {Path(expert_dir).parent.parent.name if expert_dir else 'none (baseline only)'}"):
        try:
            model = ModelConfig(browser_model(st.session_state.get(state.MODEL) or state.default_model()),
                                st.session_state.get(state.PRECISION) or "auto", st.session_state.get(state.DEVICE) or "auto")
            jobs.launch_corpus(state.anchors_path(), model, expert_dir,
                               {"prompts": int(n_prompts), "samples": int(n_samples), "tokens": int(n_tokens),
                                "min_rise": float(min_rise), "max_chars": int(max_chars)})
            st.rerun()
        except UserError as e:
            st.error(str(e))
    active = any(c.active for c in jobs.list_corpora())
    st.fragment(run_every=2.0 if active else None)(corpus_panel)()

if msg := st.session_state.pop("run_flash", None):
    st.success(msg)


def fmt_eta(s) -> str:
    if s is None or not isinstance(s, (int, float)) or math.isnan(s):
        return "ETA …"
    return f"ETA {int(s) // 60}:{int(s) % 60:02d}"


def probe_names(rows: list[dict], status: jobs.Status) -> tuple[list[str], str | None]:
    """Every tracked probe in the probes file's order, and the headline one: the file's first
    probability probe (the demo's P(' Hermione' | …Ron and)), never a sort or a substring match."""
    names = list(dict.fromkeys(n for r in rows if isinstance(r.get("probes"), dict) for n in r["probes"]))
    ordered = [n for n in status.summary.get("probe_names") or [] if n in names]
    names = ordered + [n for n in names if n not in ordered]
    return names, (names[0] if names else None)


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
        p1, p2 = st.columns([6, 1], vertical_alignment="center")
        text = f"{s.state} · {s.phase} {s.phase_step}/{s.phase_total} · overall {s.step}/{s.total}"
        p1.progress(min(s.step / s.total, 1.0) if s.total else 0.0, text=f"{text} · {fmt_eta(jobs.eta_s(s))}")
        if p2.button("Cancel", key=f"run_cancel_{name}", icon=":material/stop:"):
            try:
                jobs.cancel(d)
                st.toast(f"asked {name} to stop (it saves a checkpoint first)")
            except UserError as e:
                st.error(str(e))
    elif s.state == "finished":
        st.success(f"finished · {', '.join(s.done_phases)}")
    elif s.state == "cancelled":  # asked for: not an error
        st.info(f"cancelled at {s.phase} step {s.phase_step}; Resume continues from its checkpoint")
    else:
        st.error(f"{s.state}: {s.error or 'stopped'} (phase {s.phase}, step {s.phase_step})")
    rows = jobs.read_metrics(d)
    names, headline = probe_names(rows, s)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("loss", f"{s.loss:.4f}" if s.loss is not None else "–")
    m2.metric("tokens/s", f"{s.tokens_per_s:.0f}" if s.tokens_per_s is not None else "–")
    before, after = jobs.unlearn_change(s).get("before", {}), jobs.unlearn_change(s).get("after", {})
    if before.get("familiarity") is not None and after.get("familiarity") is not None:
        m3.metric("familiarity", f"{after['familiarity']:.4f}",
                  f"{after['familiarity'] - before['familiarity']:+.4f}", delta_color="inverse")
    else:
        m3.metric("memory", f"{s.memory_mib:.0f} MiB" if s.memory_mib is not None else "–")
    if rows:
        chosen = st.multiselect("Tracked probes", names, default=[headline] if headline else [],
                                key=f"run_probes_{name}")
        live = run_views.probe_progress(rows, chosen or ([headline] if headline else []))
        if live:
            first = live[0]
            m4.metric(first["name"].split(" | ")[0] + ")", f"{first['last']:.3f}",
                      f"{first['last'] - first['first']:+.3f} from {first['first']:.3f}",
                      delta_color="inverse" if first["name"] == headline else "off", help=first["name"])
            st.caption(" · ".join(f"{p['name']}: {p['first']:.3f} → {p['last']:.3f}"
                                  + (" so far" if active else "") for p in live))
        c1, c2 = st.columns(2)
        c1.plotly_chart(charts.loss_curve(rows), key=f"run_loss_{name}")
        c2.plotly_chart(charts.probe_curves(rows, chosen), key=f"run_probe_{name}")
    else:
        st.info("No metrics yet: the run is loading the model or waiting in the queue.")
    card = jobs.cost_card(s.summary.get("cost"))
    if card:
        with st.expander(f"Cost · {run_views.cost_line(card)}"):
            st.dataframe(run_views.cost_rows(card), hide_index=True)
    with st.expander("Log"):
        st.code(jobs.read_log(d, 40) or "(empty)")


def run_actions(d: str) -> None:
    s = jobs.read_status(d)
    name = s.name
    c1, c2, c3, c4, c5 = st.columns([1, 1, 1.3, 1, 3])
    try:
        if not s.active and s.state != "finished":
            if c1.button("Resume", key=f"run_resume_{name}", help="continue from the last checkpoint"):
                jobs.resume_run(d)
                st.rerun()
        adapters = jobs.run_adapters(d)
        if "unlearned" in adapters and c2.button("Use in Inspect", key=f"run_use_{name}",
                                                 help="load this run's unlearned adapter (and its expert)"):
            state.use_adapter("unlearned", adapters["unlearned"])
            if "expert" in adapters:
                state.use_adapter("expert", adapters["expert"])
            st.switch_page(str(state.ROOT / "pages" / "inspect.py"))
        if adapters and c3.button("Evaluate", key=f"run_eval_{name}", help="the Evaluate page with this run's models picked"):
            st.session_state["eval_preselect"] = d
            st.switch_page(str(state.ROOT / "pages" / "evaluate.py"))
        if not s.active:
            with c4.popover("Delete"):
                st.write(f"Delete **{name}** and its adapters for good?")
                if st.button("Yes, delete", type="primary", key=f"run_delete_{name}"):
                    jobs.delete(d)
                    st.rerun()
        c5.caption(d)
    except UserError as e:
        st.error(str(e))


def runs_table() -> None:
    runs = jobs.list_runs()
    st.dataframe([run_views.run_row(r.to_dict(), jobs.cost_card(r.summary.get("cost")), jobs.unlearn_change(r))
                  for r in runs], hide_index=True, width="stretch", key="run_table",
                 column_config={"familiarity": st.column_config.NumberColumn(format="%.4f"),
                                "retain": st.column_config.NumberColumn(format="%.4f"),
                                "duration": st.column_config.TextColumn(help="wall time (the run's cost card)")})


st.subheader("Runs", divider="gray")
runs = jobs.list_runs()
if not runs:
    st.info("No runs yet: open **New run** above (the defaults are the demo), or run `make demo` in a terminal.")
    st.stop()
any_active = any(r.active for r in runs)
st.fragment(run_every=2.0 if any_active else None)(runs_table)()  # refreshes while a job runs
dirs = [r.dir for r in runs]
if st.session_state.get("run_which") not in dirs:
    st.session_state.pop("run_which", None)  # deleted since, or first visit: the newest run
labels = {d: f"{Path(d).name} ({jobs.read_status(d).state})" for d in dirs}  # read when drawn, fixed for the run
shown = st.selectbox("Run", dirs, key="run_which", format_func=labels.get)
is_active = jobs.read_status(shown).active
st.fragment(run_every=2.0 if is_active else None)(run_panel)(shown)
run_actions(shown)

# -- compare --------------------------------------------------------------------------------------
if len(dirs) >= 2:
    st.subheader("Compare runs", divider="gray")
    c1, c2 = st.columns([3, 1])
    picked = c1.multiselect("Runs", dirs, default=dirs[:2], key="run_cmp", format_func=lambda x: Path(x).name)
    metrics = {d: jobs.read_metrics(d) for d in picked}
    names = list(dict.fromkeys(n for rows in metrics.values() for r in rows if isinstance(r.get("probes"), dict)
                               for n in r["probes"]))
    series = c2.selectbox("Series", ["loss", "familiarity", "retain", *names], key="run_cmp_series")
    fig = charts.run_comparison(metrics, {d: Path(d).name for d in picked}, series, series in names)
    st.plotly_chart(fig, key="run_compare")
    if len(picked) >= 2:
        diff = run_views.config_diff({Path(d).name: jobs.read_json(d, "config.json") or {} for d in picked})
        st.markdown(f"**Config differences** ({len(diff)} field{'s' * (len(diff) != 1)})")
        if diff:
            st.dataframe(pd.DataFrame(diff), hide_index=True, width="stretch", key="run_cmp_diff")
        else:
            st.caption("Same config.")
