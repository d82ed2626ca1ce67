"""A linear probe: does the representation still carry the concept (Lynch et al. 2024)?

Logistic regression on the hidden state of a middle layer at the last token of a prompt, telling
prompts about the target (the probability probes) from other prompts (the retain probes). Fit on
the baseline's hidden states and scored on every model's: a model that only learned to stop saying
the answers still separates the two kinds of prompt; one whose representation lost the concept
does not. Stratified k-fold cross-validation: every prompt is held out once, so a few dozen prompts
give a stable number. Balanced accuracy (the mean of the two classes' recalls): chance is 0.5
whatever the class sizes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LinearProbe:
    mean: torch.Tensor  # (H,) standardisation, from the training states
    std: torch.Tensor  # (H,)
    w: torch.Tensor  # (H,)
    b: torch.Tensor  # ()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H) hidden states -> (N,) logit of 'about the target'."""
        return ((x - self.mean) / self.std) @ self.w + self.b


def fit(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, iters: int = 100) -> LinearProbe:
    """Logistic regression with an L2 penalty on standardised features: x (N, H) float, y (N,) in {0, 1}.

    Hidden sizes (hundreds) exceed the prompts (dozens): without the penalty any split separates the
    training set and the weights run off; the penalty keeps the held-out accuracy meaningful.
    """
    x, y = x.double(), y.double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std  # (N, H)
    weight = torch.where(y > 0, 0.5 / y.sum(), 0.5 / (1 - y).sum())  # (N,) each class half the loss: no drift to the majority
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        nll = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y, weight=weight, reduction="sum")
        loss = nll + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(mean.float(), std.float(), w.detach().float(), b.detach().float())


def balanced_accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Mean recall of the classes present in y: pred, y (N,) bool or {0, 1}."""
    pred, y = pred.bool(), y.bool()
    recalls = [float((pred[y == c] == c).float().mean()) for c in (False, True) if (y == c).any()]
    return sum(recalls) / len(recalls)


def folds(y: torch.Tensor, k: int, seed: int = 0) -> list[torch.Tensor]:
    """k disjoint test-index sets covering every item, each class spread evenly over them (seeded)."""
    g = torch.Generator().manual_seed(seed)
    out: list[list[int]] = [[] for _ in range(k)]
    for c in (0, 1):
        idx = torch.nonzero(y == c).flatten()
        for j, i in enumerate(idx[torch.randperm(len(idx), generator=g)].tolist()):
            out[j % k].append(i)
    return [torch.tensor(sorted(f)) for f in out]


def cross_validated(states: dict[str, torch.Tensor], y: torch.Tensor, reference: str, k: int = 5,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """Per model: probe_accuracy (the reference model's probe, fit on its training folds, applied to
    this model's held-out states) and probe_accuracy_own (a probe fit on this model's own training
    folds): a representation that only rotated fools the first and not the second.

    states: {model: (N, H)} for the same N prompts; y (N,) in {0, 1}; k is capped by the smaller class.
    """
    k = min(k, int((y == 0).sum()), int((y == 1).sum()))
    if k < 2:
        raise ValueError("the probe needs at least two prompts of each kind")
    test_sets = folds(y, k, seed)
    pred = {m: {"probe_accuracy": torch.zeros(len(y), dtype=torch.bool),
                "probe_accuracy_own": torch.zeros(len(y), dtype=torch.bool)} for m in states}
    for test in test_sets:
        train = torch.ones(len(y), dtype=torch.bool)
        train[test] = False
        ref = fit(states[reference][train], y[train])
        for m, x in states.items():
            own = ref if m == reference else fit(x[train], y[train])
            pred[m]["probe_accuracy"][test] = ref.logits(x[test]) > 0
            pred[m]["probe_accuracy_own"][test] = own.logits(x[test]) > 0
    out = {m: {key: balanced_accuracy(p, y) for key, p in preds.items()} for m, preds in pred.items()}
    for m, preds in pred.items():  # the spread over folds: how much one split of a few dozen prompts moves it
        per_fold = torch.tensor([balanced_accuracy(preds["probe_accuracy"][t], y[t]) for t in test_sets])
        out[m]["probe_fold_std"] = float(per_fold.std(unbiased=False))
    return out
