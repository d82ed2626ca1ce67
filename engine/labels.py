"""The generic-label dataset of a corpus (reference, steps 3-7), cached on disk.

Per block of `block_size` tokens: translate through the anchored terms with seed f"{seed}:{i}",
then ONE batched forward per group of blocks gives baseline(translated) and expert(original) for
every block of the group, and `GenericParts` turns them into hard labels for several alphas at
once (default 2.5, 5 and 10, as the original stored them), and, when top_k > 0, soft labels: the
top-k tokens of the generic distribution with their log-probabilities.

The dataset lives under OBLIVIATE_HOME/labels/<key>, where the key hashes the model, the expert
adapter's weights, the dictionary version, the corpus tokens and the settings: the same inputs
never run the model twice. It is written as shards of about SHARD_TOKENS corpus tokens while it is
built (<key>.partial/, renamed to <key>/ when complete), so a whole book streams through with one
shard and one group's logits in memory, a killed build resumes from its shards, and under
`accelerate launch` each rank builds its share of them.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import stat
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .anchors import AnchorDictionary
from .data import IGNORE, pad_blocks
from .errors import UserError, first_line
from .generic import generic_parts
from .io import atomic_write_bytes, atomic_write_json, obliviate_home
from .models import Workbench, resolve_model_path
from .translation import Translator

LABELS_VERSION = 3  # bump when the label computation or layout changes (3: shard digests): old caches stop matching
DEFAULT_ALPHAS = (2.5, 5.0, 10.0)
SHARD_TOKENS = 1 << 16  # corpus tokens per shard file: the unit a killed build resumes from


class _LazyByAlpha(Mapping):
    """alpha -> tensors, each read from the label set's shards on first use: a soft label set of a
    whole book is (N, T, k) per alpha, and a run trains on one alpha."""

    def __init__(self, alphas, load: Callable[[float], object]):
        self._alphas, self._load, self._got = [float(a) for a in alphas], load, {}

    def __getitem__(self, alpha):
        alpha = float(alpha)
        if alpha not in self._alphas:
            raise KeyError(alpha)
        if alpha not in self._got:
            self._got[alpha] = self._load(alpha)
        return self._got[alpha]

    def __iter__(self):
        return iter(self._alphas)

    def __len__(self) -> int:
        return len(self._alphas)

    def __contains__(self, alpha) -> bool:  # without reading anything
        return float(alpha) in self._alphas


@dataclass
class LabelSet:
    ids: torch.Tensor  # (N, T) original blocks, right-padded
    lengths: torch.Tensor  # (N,)
    labels: dict[float, torch.Tensor]  # alpha -> (N, T) generic labels, IGNORE where unaligned
    key: str
    path: Path
    cached: bool = False  # True when read from disk without running the model
    stats: dict = field(default_factory=dict)
    # alpha -> ((N, T, k) int32 token ids, (N, T, k) float16 log-probs); only when built with top_k > 0.
    # Rows without a label hold token 0 and log-prob -inf. Read per alpha on first use.
    soft: Mapping[float, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def info(self) -> dict:
        """What a run's labels.json records: the cache key and place, whether it was a hit, statistics."""
        return {"key": self.key, "path": str(self.path), "cached": self.cached, **self.stats}

    def for_alpha(self, alpha: float) -> torch.Tensor:
        if float(alpha) not in self.labels:
            raise UserError(f"no labels for alpha {alpha}: these were built for {sorted(self.labels)}")
        return self.labels[float(alpha)]

    def soft_for_alpha(self, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        if float(alpha) not in self.soft:
            raise UserError(f"no soft labels for alpha {alpha}: build the labels with top_k > 0")
        return self.soft[float(alpha)]


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


def file_fingerprint(f: Path, sample: int = 1 << 16) -> bytes:
    """A weight file's identity from its contents, without reading gigabytes: its size, its
    safetensors header (names, shapes, offsets) and samples of its bytes at the start, middle and end.
    A model re-saved in place with new weights changes the samples, whatever its name and size."""
    size = f.stat().st_size
    parts = [f"{f.name}:{size}".encode()]
    with open(f, "rb") as fh:
        if f.suffix == ".safetensors" and size >= 8:
            n = int.from_bytes(fh.read(8), "little")
            parts.append(fh.read(min(n, 100 << 20)))
        for at in (0, max(0, size // 2 - sample // 2), max(0, size - sample)):
            fh.seek(at)
            parts.append(fh.read(sample))
    return hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()


def model_fingerprint(wb: Workbench) -> str:
    """Model identity: its name, precision, config and the contents of its weight files (sampled)."""
    path = Path(resolve_model_path(wb.config.name))
    parts = [wb.name.encode(), wb.precision.encode()]
    if path.is_dir():
        for f in sorted(path.iterdir()):
            if f.name == "config.json":
                parts.append(f.read_bytes())
            elif f.suffix in (".safetensors", ".bin", ".gguf"):
                parts.append(file_fingerprint(f))
    return _sha(*parts)


def adapter_fingerprint(path: str | os.PathLike) -> str:
    """Hash of an adapter's (or full checkpoint's) weights and config: a retrained expert is a new key."""
    path = Path(path)
    files = sorted(f for f in path.iterdir() if f.suffix in (".safetensors", ".bin", ".json")) if path.is_dir() else [path]
    return _sha(*(f.name.encode() + f.read_bytes() for f in files))


def label_key(wb: Workbench, expert: str | None, anchors: AnchorDictionary, blocks: list[list[int]],
              alphas, seed, top_k: int = 0) -> str:
    corpus = json.dumps(blocks, separators=(",", ":")).encode()
    settings = json.dumps({"v": LABELS_VERSION, "alphas": sorted(map(float, alphas)), "seed": str(seed),
                           "top_k": int(top_k), "block_lengths": [len(b) for b in blocks]}).encode()
    expert_fp = adapter_fingerprint(wb.adapters[expert]) if expert else "none"
    return _sha(model_fingerprint(wb).encode(), expert_fp.encode(), anchors.version().encode(), corpus, settings)[:24]


# -- shards ------------------------------------------------------------------------------------------
def shard_plan(n_blocks: int, block_len: int) -> list[range]:
    """Block ranges of the shards: about SHARD_TOKENS tokens each, fixed by the corpus alone (never by
    the number of ranks or label_batch), so a resumed or re-sharded build finds the shards it wrote."""
    per = max(1, SHARD_TOKENS // max(block_len, 1))
    return [range(s, min(s + per, n_blocks)) for s in range(0, n_blocks, per)]


def _shard_name(j: int) -> str:
    return f"shard-{j:05d}.safetensors"


SHARD_NAME = re.compile(r"^shard-\d{5}\.safetensors$")
SHARD_COUNTS = ("blocks", "tokens", "labelled", "term_occurrences", "real_next", "first", "rank")


def _regular(path: Path) -> bool:
    """A regular file itself, not a link, a FIFO (safe_open would wait on it for ever) or a folder."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _shard_meta(path: Path) -> dict | None:
    """A shard's own record (block range, counts, the rank that built it), or None when the file is
    missing, not a regular file or its record is not the shape _build_shard writes (a shard cut short
    or planted is rebuilt, never trusted)."""
    from safetensors import safe_open

    if not _regular(path):
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["shard"])
    except Exception:  # noqa: BLE001 - truncated, foreign or half-written: build it again
        return None
    ok = isinstance(meta, dict) and all(isinstance(meta.get(k), int) and not isinstance(meta.get(k), bool)
                                        and meta[k] >= 0 for k in SHARD_COUNTS)
    return meta if ok and isinstance(meta.get("changed"), dict) else None


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checked(files: list[Path], digests: list[str], alphas: list[float], top_k: int, vocab: int) -> None:
    """Raise ValueError unless every shard is a regular file with its recorded digest and tensors of
    the shapes and ranges the labels need: ids and lengths (N, T) and (N,), lengths <= T, every label
    IGNORE or a token id below `vocab`, soft ids (N, T, top_k) in range. Reads the headers and the
    hard labels; the soft labels' values are checked when they are read (_LazyByAlpha)."""
    from safetensors import safe_open

    if len(digests) != len(files):
        raise ValueError("shard digests missing")
    for file, digest in zip(files, digests):
        if not _regular(file) or _digest(file) != digest:
            raise ValueError(f"{file.name} is not the shard that was written")
        with safe_open(str(file), "pt") as f:
            ids, lengths = f.get_tensor("ids"), f.get_tensor("lengths")
            if ids.dim() != 2 or lengths.shape != (ids.shape[0],) or not lengths.numel() \
                    or int(lengths.max()) > ids.shape[1] or int(lengths.min()) < 0 \
                    or not _in_vocab(ids, vocab, allow_ignore=False):
                raise ValueError(f"{file.name}: ids and lengths do not fit")
            for a in alphas:
                lab = f.get_tensor(f"labels_{a}")
                if lab.shape != ids.shape or not _in_vocab(lab, vocab):
                    raise ValueError(f"{file.name}: labels for alpha {a} out of shape or vocabulary")
                if top_k:
                    shape = tuple(f.get_slice(f"soft_ids_{a}").get_shape())
                    if shape != (*ids.shape, top_k) or tuple(f.get_slice(f"soft_logp_{a}").get_shape()) != shape:
                        raise ValueError(f"{file.name}: soft labels for alpha {a} out of shape")


def _in_vocab(t: torch.Tensor, vocab: int, allow_ignore: bool = True) -> bool:
    bad = (t < 0) | (t >= vocab)
    if allow_ignore:
        bad &= t != IGNORE
    return not bool(bad.any())


def _cat(files: list[Path], name: str) -> torch.Tensor:
    from safetensors import safe_open

    parts = []
    for file in files:
        with safe_open(str(file), "pt") as f:
            parts.append(f.get_tensor(name))
    return torch.cat(parts)


class Damaged(Exception):
    """A label set on disk that is not one this engine wrote whole: set aside and rebuilt."""


def _load(path: Path, key: str, vocab: int) -> LabelSet | None:
    """The finished label set under `path`, or None when there is none. Raises Damaged when one is
    there but fails a check (meta.json's shape and key, each shard's digest, shapes, ranks and label
    range against `vocab`). Soft labels are read per alpha on first use, their range checked then."""
    meta_file = path / "meta.json"
    if not path.exists() and not path.is_symlink():
        return None
    try:
        if not path.is_dir() or path.is_symlink() or not _regular(meta_file):
            raise ValueError("not a label-set directory")
        meta = json.loads(meta_file.read_text())
        if not isinstance(meta, dict) or meta.get("key") != key or not isinstance(meta.get("stats"), dict):
            raise ValueError("meta.json is not this label set's")
        alphas = [float(a) for a in meta["alphas"]]
        names, top_k = meta["shards"], meta.get("top_k") or 0
        if not names or not all(isinstance(n, str) and SHARD_NAME.match(n) for n in names) \
                or not isinstance(top_k, int) or top_k < 0:
            raise ValueError("meta.json lists no shards")
        files = [path / n for n in names]
        _checked(files, meta.get("digests") or [], alphas, top_k, vocab)
        ids, lengths = _cat(files, "ids").long(), _cat(files, "lengths").long()
        labels = {a: _cat(files, f"labels_{a}").long() for a in alphas}
    except Exception as e:  # noqa: BLE001 - anything a damaged, foreign or planted set raises
        raise Damaged(f"{path.name}: {first_line(e)}") from None

    def soft(a):
        sid, slp = _cat(files, f"soft_ids_{a}"), _cat(files, f"soft_logp_{a}")
        if not _in_vocab(sid, vocab, allow_ignore=False):
            raise UserError(f"the soft labels of {path} name tokens outside the vocabulary: delete the folder")
        return sid, slp

    return LabelSet(ids, lengths, labels, key, path, cached=True, stats=meta["stats"],
                    soft=_LazyByAlpha(alphas, soft) if top_k else {})


def _set_aside(path: Path) -> Path:
    """Move a damaged label set out of the way (<key>.bad, replacing an older one), as checkpoints are."""
    bad = path.with_name(f"{path.name}.bad")
    if bad.is_dir() and not bad.is_symlink():
        shutil.rmtree(bad, ignore_errors=True)
    else:
        bad.unlink(missing_ok=True)
    os.replace(path, bad)
    return bad


def _build_shard(wb: Workbench, expert: str | None, translator: Translator, blocks: list[list[int]], rows: range,
                 block_len: int, alphas: list[float], seed, group: int, top_k: int,
                 tick: Callable[[int], None]) -> tuple[dict[str, torch.Tensor], dict]:
    """The labels of blocks `rows`: (tensors, counts). One batched forward per `group` blocks, each
    with baseline(translated) and expert(original); a group's logits are freed before the next."""
    n, T, limit = len(rows), block_len, wb.max_length
    ids, lengths = pad_blocks([blocks[i] for i in rows], wb.tokenizer.pad_token_id or 0)
    if ids.shape[1] < T:
        ids = torch.nn.functional.pad(ids, (0, T - ids.shape[1]), value=wb.tokenizer.pad_token_id or 0)
    labels = {a: torch.full((n, T), IGNORE, dtype=torch.int32) for a in alphas}
    soft = {a: (torch.zeros((n, T, top_k), dtype=torch.int32),
                torch.full((n, T, top_k), -math.inf, dtype=torch.float16)) for a in alphas} if top_k else {}
    occurrences = 0
    for g0 in range(0, n, group):
        chunk = list(range(g0, min(g0 + group, n)))  # rows of this shard; block rows.start + r
        translations = []
        for r in chunk:
            tr = translator.translate(blocks[rows.start + r], f"{seed}:{rows.start + r}")
            tr.translated_ids = tr.translated_ids[:limit]  # a longer translation loses its tail labels
            tr.mapping = [j if j < limit else -1 for j in tr.mapping]
            translations.append(tr)
            occurrences += len(tr.occurrences)
        # One forward: [base(translated_0), expert(original_0), base(translated_1), ...]
        batch: list[tuple[list[int], str | None]] = []
        for r, tr in zip(chunk, translations):
            batch.append((tr.translated_ids, None))
            if expert:
                batch.append((blocks[rows.start + r], expert))
        logits = wb.logits(batch)
        per = 2 if expert else 1
        for k, (r, tr) in enumerate(zip(chunk, translations)):
            parts = generic_parts(tr, logits[per * k], logits[per * k + 1] if expert else None)
            L = int(lengths[r])
            for a in alphas:
                labels[a][r, :L] = parts.labels(a).int().cpu()
                if top_k:
                    top_ids, top_logp = parts.soft(a, top_k)
                    where = parts.rows.cpu()
                    soft[a][0][r, where] = top_ids.int().cpu()
                    soft[a][1][r, where] = top_logp.half().cpu()
        del logits
        tick(len(chunk))
    # Counts summed over shards into the label set's statistics.
    nxt = torch.full_like(ids, IGNORE)
    nxt[:, :-1] = ids[:, 1:]
    labelled = labels[alphas[0]] != IGNORE
    real_next = labelled & (torch.arange(T)[None] < (lengths[:, None] - 1))
    counts = {"blocks": n, "tokens": int(lengths.sum()), "labelled": int(labelled.sum()),
              "term_occurrences": occurrences, "real_next": int(real_next.sum()),
              "changed": {str(a): int(((labels[a] != nxt) & real_next).sum()) for a in alphas}}
    tensors = {"ids": ids.int(), "lengths": lengths.int()}
    tensors.update({f"labels_{a}": v for a, v in labels.items()})
    for a, (sid, slp) in soft.items():
        tensors.update({f"soft_ids_{a}": sid, f"soft_logp_{a}": slp})
    return tensors, counts


def _stats(counts: list[dict], alphas: list[float]) -> dict:
    real_next = sum(c["real_next"] for c in counts)
    return {
        "blocks": sum(c["blocks"] for c in counts), "tokens": sum(c["tokens"] for c in counts),
        "labelled": sum(c["labelled"] for c in counts),
        "term_occurrences": sum(c["term_occurrences"] for c in counts),
        # Fraction of labelled positions whose generic label differs from the real next token.
        # It counts the anchored-term and expert-driven changes AND every position where the
        # baseline's own top guess already differed (most of them on a small model).
        "changed": {str(a): sum(c["changed"][str(a)] for c in counts) / max(real_next, 1) for a in alphas},
    }


def generic_labels(
    wb: Workbench,
    expert: str | None,
    anchors: AnchorDictionary,
    blocks: list[list[int]],
    alphas=DEFAULT_ALPHAS,
    seed: int | str = 0,
    group: int = 4,
    cache: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    top_k: int = 0,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
) -> LabelSet:
    """Generic labels for every block and alpha; read from the cache when the inputs match.

    expert: the name of a loaded adapter on `wb` (None: anchored-term translation alone).
    group: blocks per batched forward (2 * group sequences per forward).
    top_k: also keep soft labels, the top_k tokens of the generic distribution (0: hard labels only).
    on_progress(blocks done, blocks): after each group (an estimate across ranks).
    rank, world, barrier: under `accelerate launch` every rank calls this with its process index,
        the number of processes and `wait_for_everyone`; each builds its share of the shards, rank 0
        writes the label set once, and every rank returns it.

    Shards (about SHARD_TOKENS tokens each) are written to OBLIVIATE_HOME/labels/<key>.partial as
    they are built: memory holds one shard and one group's logits, and a killed build continues
    from the shards already written. cache=False keeps everything in memory (one process only).
    """
    if not blocks:
        raise UserError("the corpus gave no blocks")
    if expert is not None and expert not in wb.adapters:
        raise UserError(f"no adapter named {expert!r} is loaded")
    if not cache and world > 1:
        raise ValueError("cache=False builds in one process; several ranks share their shards through the cache")
    alphas = sorted({float(a) for a in alphas})
    key = label_key(wb, expert, anchors, blocks, alphas, seed, top_k)
    path = obliviate_home() / "labels" / key
    total = len(blocks)
    progress = on_progress or (lambda done, n: None)
    set_aside = None
    if cache and rank == 0:
        try:
            if (hit := _load(path, key, wb.vocab_size)) is not None:
                progress(total, total)
                return hit
        except Damaged as e:  # truncated, garbage or planted: out of the way, then built again
            set_aside = _set_aside(path)
            warnings.warn(f"the generic-label set {e}; set aside as {set_aside.name} and rebuilt")
    barrier()  # rank 0 has set a damaged set aside before any rank reads the cache
    if cache and rank > 0 and (hit := _load(path, key, wb.vocab_size)) is not None:
        progress(total, total)
        return hit

    block_len = max(map(len, blocks))
    plan = shard_plan(total, block_len)
    partial = path.with_name(f"{key}.partial")
    if cache and rank == 0 and (partial.is_symlink() or (partial.exists() and not partial.is_dir())):
        partial.unlink()  # shards are written into a real folder of ours, never through a link
    done = {j for j in range(len(plan)) if cache and _shard_meta(partial / _shard_name(j)) is not None}
    barrier()  # every rank has listed the shards of an earlier attempt before any writes a new one
    mine = [j for j in range(len(plan)) if j not in done][rank::world]
    resumed = sum(len(plan[j]) for j in done)
    built = 0

    def tick(n: int):
        nonlocal built
        built += n
        progress(min(total, resumed + built * world), total)  # other ranks move at about the same pace

    translator = Translator(wb.tokenizer, anchors)
    in_memory: dict[int, tuple[dict, dict]] = {}
    for j in mine:
        tensors, counts = _build_shard(wb, expert, translator, blocks, plan[j], block_len, alphas, seed, group,
                                       top_k, tick)
        counts.update(first=plan[j].start, rank=rank, world=world)
        if cache:
            _write_shard(partial / _shard_name(j), tensors, counts)
        else:
            in_memory[j] = (tensors, counts)
    if not cache:
        return _assemble(in_memory, plan, alphas, key, path, resumed=0)
    barrier()  # every rank's shards are on disk
    if rank == 0:
        _finish(wb, expert, translator, blocks, plan, block_len, alphas, seed, group, top_k, key, path, partial,
                resumed, tick)
    barrier()  # the label set is written once, by rank 0
    try:
        out = _load(path, key, wb.vocab_size)
    except Damaged as e:
        raise UserError(f"the generic labels just written fail their check ({e}): is the disk full?") from None
    if out is None:
        raise UserError(f"the generic labels {key} were not written (see the log of rank 0)")
    out.cached = False
    if set_aside is not None:
        out.stats["set_aside"] = str(set_aside)
    progress(total, total)
    return out


def _write_shard(file: Path, tensors: dict[str, torch.Tensor], counts: dict) -> None:
    from safetensors.torch import save

    atomic_write_bytes(file, save({k: v.contiguous() for k, v in tensors.items()},
                                  metadata={"shard": json.dumps(counts)}))


def _finish(wb, expert, translator, blocks, plan, block_len, alphas, seed, group, top_k, key: str, path: Path,
            partial: Path, resumed: int, tick) -> None:
    """Rank 0: build any shard still missing (a rank that died), then meta.json, then one rename."""
    counts = []
    for j, rows in enumerate(plan):
        file = partial / _shard_name(j)
        meta = _shard_meta(file)
        if meta is None:
            tensors, meta = _build_shard(wb, expert, translator, blocks, rows, block_len, alphas, seed, group,
                                         top_k, tick)
            meta.update(first=rows.start, rank=0, world=1)
            _write_shard(file, tensors, meta)
        counts.append(meta)
    by_rank: dict[str, int] = {}
    for c in counts:
        by_rank[str(c["rank"])] = by_rank.get(str(c["rank"]), 0) + c["blocks"]
    stats = {**_stats(counts, alphas), "shards": len(plan), "blocks_by_rank": by_rank, "resumed_blocks": resumed}
    names = [_shard_name(j) for j in range(len(plan))]
    atomic_write_json(partial / "meta.json", {"key": key, "alphas": alphas, "top_k": top_k, "stats": stats,
                                              "shards": names, "digests": [_digest(partial / n) for n in names]})
    try:
        os.replace(partial, path)  # atomic: a concurrent builder either wins or finds ours
    except OSError:  # something is at <key> already: a concurrent builder's set, or a damaged one
        try:
            if _load(path, key, wb.vocab_size) is not None:
                shutil.rmtree(partial, ignore_errors=True)
                return
        except Damaged:
            pass
        if path.exists() or path.is_symlink():
            _set_aside(path)
        os.replace(partial, path)


def _assemble(shards: dict[int, tuple[dict, dict]], plan: list[range], alphas: list[float], key: str, path: Path,
              resumed: int) -> LabelSet:
    """A label set from shards held in memory (cache=False)."""
    order = [shards[j] for j in range(len(plan))]
    cat = lambda name: torch.cat([t[name] for t, _ in order])  # noqa: E731
    counts = [c for _, c in order]
    stats = {**_stats(counts, alphas), "shards": len(plan), "resumed_blocks": resumed}
    soft = {a: (cat(f"soft_ids_{a}"), cat(f"soft_logp_{a}")) for a in alphas if f"soft_ids_{a}" in order[0][0]}
    return LabelSet(cat("ids").long(), cat("lengths").long(), {a: cat(f"labels_{a}").long() for a in alphas}, key,
                    path, cached=False, stats=stats, soft=soft)
