"""The generic-label dataset of a corpus (reference, steps 3-7), cached on disk.

Per block of `block_size` tokens: translate through the anchored terms with seed f"{seed}:{i}",
then ONE batched forward per group of blocks gives baseline(translated) and expert(original) for
every block of the group, and `GenericParts` turns them into hard labels for several alphas at
once (default 2.5, 5 and 10, as the original stored them), and, when top_k > 0, soft labels: the
top-k tokens of the generic distribution with their log-probabilities.

The dataset lives under OBLIVIATE_HOME/labels/<key>, where the key hashes the model, the expert
adapter's weights, the dictionary version, the corpus tokens and the settings: the same inputs
never run the model twice.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .anchors import AnchorDictionary
from .errors import UserError
from .data import IGNORE, pad_blocks
from .generic import generic_parts
from .io import atomic_write_json, obliviate_home
from .models import Workbench, resolve_model_path
from .translation import Translator

LABELS_VERSION = 2  # bump when the label computation changes: old caches stop matching
DEFAULT_ALPHAS = (2.5, 5.0, 10.0)


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
    # Rows without a label hold token 0 and log-prob -inf.
    soft: dict[float, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

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


def _load(path: Path, key: str) -> LabelSet | None:
    from safetensors.torch import load_file

    meta_file, tensors_file = path / "meta.json", path / "labels.safetensors"
    if not (meta_file.exists() and tensors_file.exists()):
        return None
    meta = json.loads(meta_file.read_text())
    t = load_file(str(tensors_file))
    labels = {float(a): t[f"labels_{a}"].long() for a in meta["alphas"]}
    soft = {float(a): (t[f"soft_ids_{a}"], t[f"soft_logp_{a}"]) for a in meta["alphas"] if f"soft_ids_{a}" in t}
    return LabelSet(t["ids"].long(), t["lengths"].long(), labels, key, path, cached=True, stats=meta["stats"],
                    soft=soft)


def _save(ls: LabelSet) -> None:
    from safetensors.torch import save_file

    ls.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=ls.path.parent, prefix=f".{ls.key}."))
    tensors = {"ids": ls.ids.int().contiguous(), "lengths": ls.lengths.int().contiguous()}
    tensors.update({f"labels_{a}": v.int().contiguous() for a, v in ls.labels.items()})
    for a, (sid, slp) in ls.soft.items():
        tensors.update({f"soft_ids_{a}": sid.contiguous(), f"soft_logp_{a}": slp.contiguous()})
    save_file(tensors, str(tmp / "labels.safetensors"))
    atomic_write_json(tmp / "meta.json", {"key": ls.key, "alphas": list(ls.labels), "stats": ls.stats})
    try:
        os.replace(tmp, ls.path)  # atomic: a concurrent builder either wins or finds ours
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


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
) -> LabelSet:
    """Generic labels for every block and alpha; read from the cache when the inputs match.

    expert: the name of a loaded adapter on `wb` (None: anchored-term translation alone).
    group: blocks per batched forward (2 * group sequences per forward).
    top_k: also keep soft labels, the top_k tokens of the generic distribution (0: hard labels only).
    """
    if not blocks:
        raise UserError("the corpus gave no blocks")
    if expert is not None and expert not in wb.adapters:
        raise UserError(f"no adapter named {expert!r} is loaded")
    alphas = sorted({float(a) for a in alphas})
    key = label_key(wb, expert, anchors, blocks, alphas, seed, top_k)
    path = obliviate_home() / "labels" / key
    if cache and (hit := _load(path, key)) is not None:
        if on_progress:
            on_progress(len(blocks), len(blocks))
        return hit

    translator = Translator(wb.tokenizer, anchors)
    limit = wb.max_length
    ids, lengths = pad_blocks(blocks, wb.tokenizer.pad_token_id or 0)
    labels = {a: torch.full_like(ids, IGNORE) for a in alphas}
    N, T = ids.shape
    soft = {a: (torch.zeros((N, T, top_k), dtype=torch.int32),
                torch.full((N, T, top_k), -math.inf, dtype=torch.float16)) for a in alphas} if top_k else {}
    occurrences = 0
    for g0 in range(0, len(blocks), group):
        chunk = list(range(g0, min(g0 + group, len(blocks))))
        translations = []
        for i in chunk:
            tr = translator.translate(blocks[i], f"{seed}:{i}")
            tr.translated_ids = tr.translated_ids[:limit]  # a longer translation loses its tail labels
            tr.mapping = [j if j < limit else -1 for j in tr.mapping]
            translations.append(tr)
            occurrences += len(tr.occurrences)
        # One forward: [base(translated_0), expert(original_0), base(translated_1), ...]
        batch: list[tuple[list[int], str | None]] = []
        for i, tr in zip(chunk, translations):
            batch.append((tr.translated_ids, None))
            if expert:
                batch.append((blocks[i], expert))
        logits = wb.logits(batch)
        per = 2 if expert else 1
        for k, (i, tr) in enumerate(zip(chunk, translations)):
            parts = generic_parts(tr, logits[per * k], logits[per * k + 1] if expert else None)
            for a in alphas:
                labels[a][i, : len(blocks[i])] = parts.labels(a).cpu()
                if top_k:
                    top_ids, top_logp = parts.soft(a, top_k)
                    rows = parts.rows.cpu()
                    soft[a][0][i, rows] = top_ids.int().cpu()
                    soft[a][1][i, rows] = top_logp.half().cpu()
        del logits
        if on_progress:
            on_progress(chunk[-1] + 1, len(blocks))

    nxt = torch.full_like(ids, IGNORE)
    nxt[:, :-1] = ids[:, 1:]
    labelled = labels[alphas[0]] != IGNORE
    real_next = labelled & (torch.arange(ids.shape[1])[None] < (lengths[:, None] - 1))
    stats = {
        "blocks": len(blocks), "tokens": int(lengths.sum()), "labelled": int(labelled.sum()),
        "term_occurrences": occurrences,
        # Fraction of labelled positions whose generic label differs from the real next token.
        # It counts the anchored-term and expert-driven changes AND every position where the
        # baseline's own top guess already differed (most of them on a small model).
        "changed": {str(a): float(((labels[a] != nxt) & real_next).sum() / max(int(real_next.sum()), 1))
                    for a in alphas},
    }
    out = LabelSet(ids, lengths, labels, key, path, cached=False, stats=stats, soft=soft)
    if cache:
        _save(out)
    return out
