"""Token data: corpus blocks, the one padding helper, next-token labels and goldfish masks.

Label convention everywhere: `labels[i]` is the target of the prediction made AT position i (the
token that should follow position i); IGNORE = -100 means no target. Next-token labels are the
inputs shifted by one and WHP's generic labels already have this form, so no loss shifts again.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import UserError

IGNORE = -100  # cross-entropy's ignore_index: no label at this position
CHUNK_CHARS = 1 << 20


def tokenize_long(tokenizer, text: str) -> list[int]:
    """Token ids of a text of any length, without special tokens.

    A tokenizer call on tens of megabytes at once stalls or aborts; a long text is cut into ~1 MB
    pieces just after a newline that is followed by a non-space character. Byte-level BPE splits
    there anyway ("\\n" and the next word are separate pre-tokens), so the ids equal one call's.
    """
    if len(text) <= CHUNK_CHARS:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    start = 0
    while start < len(text):
        end = min(start + CHUNK_CHARS, len(text))
        while end < len(text) and not (text[end - 1] == "\n" and not text[end].isspace()):
            end += 1
            if end - start > 2 * CHUNK_CHARS:  # no clean cut in sight: cut at a space
                while end < len(text) and not text[end - 1].isspace():
                    end += 1
                break
        ids += tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
        start = end
    return ids


def corpus_blocks(tokenizer, text: str, block_size: int, max_blocks: int | None = None) -> list[list[int]]:
    """Tokenize the whole corpus once and cut it into blocks of `block_size` tokens.

    A final block shorter than an eighth of block_size is dropped (too little context to teach).
    """
    if not text.strip():
        raise UserError("the corpus is empty")
    ids = tokenize_long(tokenizer, text)
    blocks = [ids[i: i + block_size] for i in range(0, len(ids), block_size)]
    if len(blocks) > 1 and len(blocks[-1]) < max(2, block_size // 8):
        blocks.pop()
    return blocks[:max_blocks] if max_blocks else blocks


def pad(seqs: list[list[int]], pad_id: int | None, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """The one padding helper: token lists -> (B, T) long ids and (B, T) long attention mask.

    right: real tokens first. Under a causal mask they never see the pads after them, so a forward
    of a padded row equals the row alone. left: every row ends at the last column, which is where
    generate() appends.
    """
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id or 0, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        if not s:
            continue
        cols = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        ids[b, cols] = torch.as_tensor(s, dtype=torch.long)
        mask[b, cols] = 1
    return ids, mask


def pad_blocks(blocks: list[list[int]], pad_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (N, T) ids and (N,) lengths: the shape training data is stored in."""
    ids, mask = pad(blocks, pad_id)
    return ids, mask.sum(1)


def next_token_labels(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N, T) inputs -> (N, T) labels: labels[:, i] = ids[:, i+1]; IGNORE after each block's end."""
    labels = torch.full_like(ids, IGNORE)
    labels[:, :-1] = ids[:, 1:]
    pos = torch.arange(ids.shape[1])[None, :]  # (1, T)
    labels[pos >= (lengths[:, None] - 1)] = IGNORE
    return labels


def groups(lengths: list[int], budget: int) -> list[list[int]]:
    """Row indices in groups whose padded size (rows x longest) stays within a token budget, sorted by
    length so the rows of a group pad little."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > budget:
            out.append(cur)
            cur = []
        cur.append(i)
    return out + [cur] if cur else out


def grouped(rows: list, budget: int, forward, reduce) -> list:
    """[reduce(i, output_i)] in the rows' order, forward() run on groups of rows (token ids, ...) whose
    padded size stays within `budget` tokens: the one batching loop for callers of Workbench.logits,
    Workbench.hidden_states or a training model's own forward."""
    out: list = [None] * len(rows)
    for group in groups([len(r[0]) for r in rows], budget):
        for i, y in zip(group, forward([rows[i] for i in group])):
            out[i] = reduce(i, y)
    return out


# -- goldfish loss (Hans et al. 2024) ----------------------------------------------------------------
_FNV_OFFSET, _FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def window_hashes(row: np.ndarray, h: int) -> np.ndarray:
    """(T,) token ids -> (T-h+1,) uint64 hash of each window row[t-h+1 .. t].

    64-bit FNV-1a over the 4 little-endian bytes of each token id, finalised with splitmix64.
    uint64 arithmetic is exact modulo 2**64 on every platform: no RNG table, no device, no
    float, so CPU and GPU runs (and any label dtype) get the same mask.
    """
    row = row.astype(np.uint64)
    n = len(row) - h + 1
    acc = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    prime = np.uint64(_FNV_PRIME)
    for j in range(h):
        tok = row[j: j + n]
        for shift in (0, 8, 16, 24):
            acc = (acc ^ ((tok >> np.uint64(shift)) & np.uint64(0xFF))) * prime
    acc = (acc ^ (acc >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    acc = (acc ^ (acc >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return acc ^ (acc >> np.uint64(31))


def goldfish_mask(labels: torch.Tensor, goldfish) -> torch.Tensor:
    """(…, T) labels -> (…, T) bool, True = keep this label position in the loss.

    goldfish: a config.GoldfishConfig (kind, k, h).
    static: drops positions t with (t+1) % k == 0 (every k-th label).
    hash:   drops t when hash(labels[t-h+1 .. t]) / 2**64 < 1/k; the first h-1 positions are kept.
            Computed on CPU integers from the token ids alone, so CPU, CUDA or any dtype agree,
            and a repeated passage is masked identically wherever it appears.
    IGNORE positions are returned as kept (they carry no loss anyway) and are not hashed as tokens.
    """
    shape = labels.shape
    T = shape[-1]
    if goldfish.kind == "none":
        return torch.ones(shape, dtype=torch.bool)
    if goldfish.kind == "static":
        keep = (torch.arange(T) + 1) % goldfish.k != 0  # (T,)
        return keep.expand(shape).clone()
    rows = labels.detach().to("cpu", torch.int64).reshape(-1, T).numpy()
    threshold = np.uint64((1 << 64) // goldfish.k)
    keep = np.ones(rows.shape, dtype=bool)
    h = goldfish.h
    for r, row in enumerate(rows):
        if T >= h:
            keep[r, h - 1:] = window_hashes(row, h) >= threshold
    keep[rows == IGNORE] = True  # no loss there anyway
    return torch.from_numpy(keep).reshape(shape)


def apply_goldfish(labels: torch.Tensor, goldfish) -> torch.Tensor:
    """Labels with the dropped positions set to IGNORE (a copy)."""
    if goldfish.kind == "none":
        return labels
    return labels.masked_fill(~goldfish_mask(labels, goldfish).to(labels.device), IGNORE)
