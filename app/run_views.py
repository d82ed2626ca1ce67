"""What the Runs and Evaluate pages derive from a run's metrics: one step axis over its phases, the
config differences of several runs, the tracked probes' progress. No Streamlit, no torch."""
from __future__ import annotations


# -- runs ------------------------------------------------------------------------------------------
RUN_COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"]


def global_steps(rows: list[dict]) -> list[int]:
    """Each metrics row's step on one axis across phases: a phase starts where the one before ended
    (reinforce 0..12, then unlearn 12..42), so runs with different phase lengths line up."""
    offset, ends, out = 0, {}, []
    current = None
    for r in rows:
        phase = r.get("phase", "")
        if phase != current:
            if current is not None:
                offset = ends.get(current, offset)
            current = phase
        step = int(r.get("step") or 0)
        ends[phase] = offset + step
        out.append(offset + step)
    return out


def config_diff(configs: dict[str, dict]) -> list[dict]:
    """Rows {field, <run>: value, ...} for the flattened config fields whose values differ."""
    from engine.config import flatten

    flat = {name: flatten(c or {}) for name, c in configs.items()}
    fields = list(dict.fromkeys(k for f in flat.values() for k in f))
    out = []
    for k in fields:
        values = [flat[n].get(k) for n in flat]
        if len({repr(v) for v in values}) > 1:
            out.append({"field": k, **{n: "" if v is None else str(v) for n, v in zip(flat, values)}})
    return out


def probe_progress(rows: list[dict], names: list[str]) -> list[dict]:
    """Per probe: its first logged value and its latest, {name, first, last, phase}."""
    out = []
    for n in names:
        pts = [(r.get("phase", ""), r["probes"][n]) for r in rows
               if isinstance(r.get("probes"), dict) and r["probes"].get(n) is not None]
        if pts:
            out.append({"name": n, "first": pts[0][1], "last": pts[-1][1], "phase": pts[-1][0]})
    return out


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    m, sec = divmod(int(round(seconds)), 60)
    return f"{m} min {sec:02d} s" if m else f"{sec} s"


def run_row(status: dict, card: dict | None, change: dict) -> dict:
    """One row of the Runs table: name, method, state, progress, duration, the familiarity and retain the
    unlearning phase ended with (jobs.unlearn_change), created."""
    after = change.get("after", {}) if change else {}
    return {"run": status.get("dir", "").rstrip("/").rsplit("/", 1)[-1], "method": status.get("method") or "",
            "state": status.get("state"), "phase": status.get("phase"),
            "progress": f"{status.get('step', 0)}/{status.get('total', 0)}",
            "duration": duration(card["wall_s"]) if card else "–",
            "familiarity": after.get("familiarity"), "retain": after.get("retain"), "created": status.get("created")}


# -- the cost card ----------------------------------------------------------------------------------
def cost_rows(card: dict | None) -> list[dict]:
    """A cost card (jobs.cost_card) as table rows: one per phase or stage, then the total with the
    job's own peak memory and the device."""
    if not card:
        return []
    rows = [{"part": name, "wall s": p["wall_s"], "tokens": p["tokens"], "tokens/s": p["tokens_per_s"]}
            for name, p in card["parts"].items()]
    peak = card["peak_memory_mib"] if card["cuda_peak_mib"] is None else card["cuda_peak_mib"]
    rows.append({"part": "total", "wall s": card["wall_s"], "tokens": None, "tokens/s": None})
    for r in rows:
        r["peak MiB"] = round(peak) if r["part"] == "total" and peak is not None else None
        r["device"] = card["device"] if r["part"] == "total" else ""
    return rows


def cost_line(card: dict | None) -> str:
    """'412 s · peak 1,204 MiB · cpu: 2 cores': the card in one line (`runs list`, captions)."""
    if not card:
        return "no cost card"
    peak = card["peak_memory_mib"] if card["cuda_peak_mib"] is None else card["cuda_peak_mib"]
    bits = [f"{card['wall_s']:.0f} s" if card["wall_s"] is not None else "? s",
            f"peak {peak:,.0f} MiB" + (" (GPU)" if card["cuda_peak_mib"] is not None else "") if peak is not None else "",
            card["device"]]
    return " · ".join(b for b in bits if b)
