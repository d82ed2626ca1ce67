"""What the pages share: the one Workbench per model config, its adapters, the anchor file, alpha.

The sidebar (app/main.py) builds a `Context` on every script run before the page runs; pages read
it with `context()`. The Workbench lives in `st.cache_resource`, shared by every browser tab; the
engine's lock serialises forwards and adapter loads, and adapters are named after their path so two
tabs choosing different experts never switch each other's adapter.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from engine.anchors import AnchorDictionary, load_anchors
from engine.boundary import browser_adapter, browser_model
from engine.errors import as_user_error
from engine.inspection import PAGE_PROMPT_CHARS
from engine import jobs
from engine.config import ModelConfig
from engine.io import atomic_write_bytes, obliviate_home
from engine.models import Workbench

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
NONE = "none"
PATH = "a path…"
MAX_PROMPT_CHARS = PAGE_PROMPT_CHARS  # the engine's limit for a page (engine/inspection.py)

# Session-state keys of the sidebar widgets (the entry point owns them; pages read, never render them).
MODEL, PRECISION, DEVICE = "model", "precision", "device"
EXPERT, EXPERT_PATH = "expert", "expert_path"
UNLEARNED, UNLEARNED_PATH = "unlearned", "unlearned_path"
ALPHA = "alpha"
ETA = "inspect_eta"  # the ELM-style target's strength: its own slider value, not alpha's
_PENDING = "_pending_sidebar"  # values another page asks the sidebar to take on the next run
_CTX = "_context"
_KEEP = "_keep"  # widget values that outlive their page (Streamlit forgets a widget not drawn in a run)
_URL_READ = "_url_read"
DEFAULT_ALPHA = 5.0
# What a link to the Inspect page carries: URL parameter -> session key (the widget's key).
URL_KEYS = {"prompt": "inspect_prompt", "pos": "inspect_pos", "pin": "inspect_pinned", "colour": "inspect_metric",
            "alpha": ALPHA, "tokens": "inspect_top_k", "anchors": "inspect_use_anchors", "target": "inspect_target",
            "concept": "inspect_concept", "lens": "inspect_lens", "scale": "inspect_scale", "eta": ETA}
URL_DEFAULTS = {"inspect_prompt": "", "inspect_pinned": "Hermione, Emily", "inspect_metric": "logp",
                "alpha": DEFAULT_ALPHA, "inspect_top_k": 5, "inspect_use_anchors": True, "inspect_target": "whp",
                "inspect_lens": False, "inspect_scale": 1.0, ETA: 2.0}
# The generic row's definition on the Inspect page: WHP's (expert + dictionary) or the ELM-style target.
TARGETS = {"whp": "WHP", "elm": "ELM-style"}  # the help next to the picker says what each is


@dataclass
class Context:
    """One script run's view of the sidebar: the loaded model and the chosen adapters."""

    wb: Workbench | None
    model_key: str  # model|precision|device
    expert: str | None  # adapter name inside wb
    unlearned: str | None
    adapters_key: str  # changes when a chosen adapter or its weights change
    alpha: float
    error: str | None = None
    adapter_errors: list[str] | None = None  # a bad expert or unlearned path (the other still loads)
    demo: object = None  # engine.jobs.Status of this model's demo run, or None


def default_model() -> str:
    """`embedded` unless OBLIVIATE_MODEL names another (tests point it at a tiny model)."""
    return os.environ.get("OBLIVIATE_MODEL") or "embedded"


# -- the model -------------------------------------------------------------------------------------
@st.cache_resource(max_entries=2, show_spinner="Loading the model (once per model, shared by every tab)…")
def _workbench(model: str, precision: str, device: str) -> Workbench:
    return Workbench.load(ModelConfig(model, precision, device))


def load_workbench(model: str, precision: str, device: str) -> Workbench:
    """The shared Workbench of a model the browser may name (engine/boundary.py decides which)."""
    model = browser_model(model)
    try:
        return _workbench(model, precision, device)
    except (MemoryError, RuntimeError) as e:
        if (err := as_user_error(e, f"loading {model!r}")) is None:
            raise
        raise err from None


# -- adapters --------------------------------------------------------------------------------------
def run_adapters(kind: str, model: str | None = None) -> list[str]:
    """Adapter directories `<run>/adapters/<kind>` (kind: expert or unlearned) of every run, the
    demo's first, then newest first; with `model`, only runs of that model (or of an unknown one)."""
    found = [Path(d) for run in jobs.list_runs() if (d := jobs.run_adapters(run.dir).get(kind))
             and (model is None or jobs.run_model(run.dir) in ("", model))]
    found.sort(key=lambda d: (not jobs.is_demo(d.parents[1]), -d.stat().st_mtime))
    return [str(d) for d in found]


def adapter_label(choice: str) -> str:
    if choice in (NONE, PATH):
        return choice
    p = Path(choice)
    if p.parent.name == "adapters":
        run = p.parents[1].name
        return f"demo ({p.name} of the demo run)" if jobs.is_demo(p.parents[1]) else f"run {run}"
    return str(p)


def demo_adapter(kind: str, model: str) -> str | None:
    """The finished demo run's adapter of this kind for this model, or None."""
    demo = jobs.find_demo(model)
    if demo is None or demo.state != "finished":
        return None
    return jobs.run_adapters(demo.dir).get(kind)


def _fingerprint(path: Path) -> str:
    """Path plus weights' mtime: a retrained adapter at the same path gets a new name (and cache key)."""
    stamp = ""
    for f in ("adapter_model.safetensors", "model.safetensors"):
        if (path / f).exists():
            stamp = str((path / f).stat().st_mtime_ns)
    return hashlib.sha1(f"{path.resolve()}|{stamp}".encode()).hexdigest()[:10]


def ensure_adapter(wb: Workbench, kind: str, path: str) -> str:
    """Load the adapter once per Workbench under a name derived from its path; return the name.
    Only a LoRA adapter directory under the browser roots (engine/boundary.py): a link or a typed
    path never loads a second base model, nor anything outside."""
    p = browser_adapter(path, kind)
    name = f"{kind}_{_fingerprint(p)}"
    with wb.lock:
        if name not in wb.adapters:
            try:
                wb.add_adapter(name, p)
            except (MemoryError, RuntimeError) as e:
                if (err := as_user_error(e, f"loading the {kind} adapter")) is None:
                    raise
                raise err from None
    return name


@st.cache_resource
def _holders() -> dict:
    """Workbench id -> {browser session id: adapter names it shows}: who keeps which adapter loaded."""
    return {}


def _session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx else "script"


def _live(session_id: str) -> bool:
    from streamlit import runtime

    if not runtime.exists():  # AppTest: one session, its own
        return True
    return runtime.get_instance().is_active_session(session_id)


def hold_adapters(wb: Workbench, names: set[str]) -> None:
    """This browser session shows `names` now; every adapter the sidebar loaded that no live session
    shows any more is unloaded (three links opened one after another keep one adapter, not three)."""
    holders = _holders().setdefault(id(wb), {})
    with wb.lock:
        holders[_session_id()] = set(names)
        for sid in [s for s in holders if not _live(s)]:
            del holders[sid]
        used = set().union(*holders.values())
        for name in list(wb.adapters):
            if name.startswith(("expert_", "unlearned_")) and name not in used:
                wb.remove_adapter(name)


def use_adapter(kind: str, path: str) -> None:
    """For other pages ("use in Inspect"): make the sidebar select this adapter on the next run.

    Call it, then `st.switch_page(...)` or `st.rerun()`; the sidebar widgets are already drawn in
    the current run, so their keys cannot be written directly.
    """
    st.session_state.setdefault(_PENDING, {})[kind] = str(path)


def apply_pending() -> None:
    """Called by the entry point before it draws the sidebar widgets."""
    for kind, path in st.session_state.pop(_PENDING, {}).items():
        known = run_adapters(kind)
        st.session_state[f"_picked_{kind}"] = True  # chosen by a page or a link: no demo default
        if path == NONE:
            st.session_state[kind] = NONE
        elif path in known:
            st.session_state[kind] = path
        else:
            st.session_state[kind] = PATH
            st.session_state[f"{kind}_path"] = path


# -- state that stays: across pages, reloads and shared links -------------------------------------
def keep(key: str, value) -> None:
    """Remember a widget's value beyond its page (Streamlit drops the state of widgets not drawn)."""
    st.session_state.setdefault(_KEEP, {})[key] = value


def kept(key: str, default=None):
    return st.session_state.get(_KEEP, {}).get(key, default)


def restore(key: str, default=None) -> None:
    """Before a page draws the widget `key`: give it its kept value (from another page or the URL)."""
    if key not in st.session_state:
        st.session_state[key] = kept(key, URL_DEFAULTS.get(key, default))


def _parse(key: str, raw: str):
    if key in ("inspect_pos", "inspect_top_k"):
        return int(raw)
    if key in (ALPHA, ETA):
        alpha = float(raw)
        if not math.isfinite(alpha):  # ?alpha=inf: round() would raise OverflowError on every open
            raise ValueError(raw)
        return round(alpha * 2) / 2  # the slider's step; read_url clamps it to its range
    if key == "inspect_scale":
        scale = float(raw)
        if not math.isfinite(scale):
            raise ValueError(raw)
        return round(scale * 20) / 20
    if key in ("inspect_use_anchors", "inspect_lens"):
        return raw not in ("0", "false", "off")
    if key == "inspect_prompt":
        return raw[:MAX_PROMPT_CHARS]
    if key == "inspect_target" and raw not in TARGETS:
        raise ValueError(raw)
    return raw[:500]


LIMITS = {"inspect_top_k": (1, 50), ALPHA: (0.0, 20.0), ETA: (0.0, 20.0), "inspect_scale": (0.0, 1.5)}  # the widgets' ranges


def _clamped(key: str, value):
    """A link's number inside its widget's range, and a note when it was not."""
    lo, hi = LIMITS.get(key, (None, None))
    if lo is None or lo <= value <= hi:
        return value
    fixed = min(max(value, lo), hi)
    param = next(p for p, k in URL_KEYS.items() if k == key)
    url_notes().append(f"the link's {param}={value:g} is outside {lo:g}–{hi:g}: shown with {fixed:g}")
    return fixed


def url_notes() -> list[str]:
    """What read_url changed in a link (clamped or unreadable values), for the page to say once."""
    return st.session_state.setdefault("_url_notes", [])


def adapter_symbol(kind: str, path: str | None, model: str) -> str | None:
    """An adapter as a link writes it: `demo` (this model's demo adapter), `run:<name>` (a run under
    OBLIVIATE_HOME/runs), else its path; None for none. Symbols work on another machine."""
    if not path:
        return None
    if path == demo_adapter(kind, model):
        return "demo"
    p = Path(path)
    if p.name == kind and p.parent.name == "adapters" and p.parents[1].parent == jobs.runs_root():
        return f"run:{p.parents[1].name}"
    return path


def adapter_from_symbol(kind: str, value: str, model: str) -> str | None:
    """A link's adapter back to a directory; None when the link asks for `demo` before it is built
    (the sidebar then picks the demo by itself once it is ready)."""
    if value == "demo":
        return demo_adapter(kind, model)
    if value.startswith("run:"):
        return str(jobs.runs_root() / value[4:] / "adapters" / kind)
    return value


def read_url() -> None:
    """Once per browser session (a reload, a shared link): the URL's parameters become the kept
    values the pages start from; the adapters go through the sidebar's pending choice."""
    if st.session_state.get(_URL_READ):
        return
    st.session_state[_URL_READ] = True
    q = st.query_params
    for param, key in URL_KEYS.items():
        if param in q:
            try:
                value = _parse(key, q[param])
                keep(key, _clamped(key, value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                     else value)
            except ValueError:
                url_notes().append(f"the link's {param}={q[param][:20]!r} is not readable: shown with the default")
    if "pos" in q and "prompt" in q:
        keep("inspect_pos_prompt", kept("inspect_prompt"))
    model = st.session_state.get(MODEL) or default_model()
    for kind in (EXPERT, UNLEARNED):
        if kind in q:
            path = adapter_from_symbol(kind, q[kind], model)
            if path is not None:
                use_adapter(kind, path)


def write_url(expert_dir: str | None = None, unlearned_dir: str | None = None) -> None:
    """The current Inspect state as the URL's query (defaults left out), so a reload or a copied
    link opens the same view. Adapters as symbols (`demo`, `run:<name>`), and only a choice the user
    made: an adapter not chosen (the demo still building) stays out of the link. Written only when it
    changed. Without arguments: the adapters the sidebar last wrote (a page that settles a value late,
    Inspect's position after a new prompt, writes again)."""
    if expert_dir is None and unlearned_dir is None and "_url_adapters" in st.session_state:
        expert_dir, unlearned_dir = st.session_state["_url_adapters"]
    st.session_state["_url_adapters"] = (expert_dir, unlearned_dir)
    want: dict[str, str] = {}
    for param, key in URL_KEYS.items():
        value = st.session_state.get(key, kept(key, URL_DEFAULTS.get(key)))
        if value is None or value == URL_DEFAULTS.get(key) or (param == "pos" and "prompt" not in want):
            continue
        want[param] = ("1" if value else "0") if isinstance(value, bool) else (
            f"{value:g}" if isinstance(value, float) else str(value))
    model = st.session_state.get(MODEL) or default_model()
    for kind, path in ((EXPERT, expert_dir), (UNLEARNED, unlearned_dir)):
        symbol = adapter_symbol(kind, path, model)
        if symbol is not None:
            want[kind] = symbol
        elif st.session_state.get(f"_picked_{kind}"):
            want[kind] = NONE  # none, chosen
    if st.query_params.to_dict() != want:
        st.query_params.from_dict(want)


def set_context(ctx: Context) -> None:
    st.session_state[_CTX] = ctx


def context() -> Context:
    ctx = st.session_state.get(_CTX)
    if ctx is None:  # a page run on its own (never through app/main.py)
        st.error("Open the workbench through `streamlit run app/main.py` (or `make run`).")
        st.stop()
    return ctx


def require_workbench() -> Context:
    """The context with a loaded model, or stop the page with a pointer to the sidebar's error."""
    ctx = context()
    if ctx.wb is None:
        st.warning("No model is loaded: fix the model settings in the sidebar (the error is shown there).")
        st.stop()
    return ctx


# -- the anchor dictionary -------------------------------------------------------------------------
def anchors_path() -> Path:
    """$OBLIVIATE_ANCHORS, else OBLIVIATE_HOME/anchors.json; seeded from the demo dictionary on first use.

    The UI never writes into assets/: the demo dictionary is only ever copied.
    """
    env = os.environ.get("OBLIVIATE_ANCHORS")
    path = Path(env).expanduser() if env else obliviate_home() / "anchors.json"
    demo = ASSETS / "demo_anchors.json"
    if not path.exists() and demo.exists():
        atomic_write_bytes(path, demo.read_bytes())
    return path


def saved_anchors() -> AnchorDictionary:
    """The saved dictionary; raises UserError if it is missing or unreadable."""
    return load_anchors(anchors_path())


def demo_corpus() -> str:
    path = ASSETS / "demo_corpus.txt"
    return path.read_text(encoding="utf-8") if path.exists() else ""
