"""Classifier analyses on the linear interpreter y = F(x0)·x0 + Σ_i Q_i b̂_i (appendix, section A).

Pure functions on an interpreted classifier (``li = interpret(model, x0)`` with output shape (1, K)
(or (1, K, 1, 1), a 1×1 convolution as the head)):

- :func:`decompose` — every score split into the input term F(x0)·x0 and one forward-projected masked bias
  Q_i b̂_i per bias source (network order), or summed per layer (:func:`layer_groups`: a conv and the batch
  norm and activation after it are one layer); the residual share r / score of the top-1 class (Table 1);
- :func:`pixel_discussions` — PD_k, the back-projection of score k to the input pixels (eq. 10 made precise,
  see docs/classify.md): ``PD_k = Σ_c x0 ⊙ Fᵀe_k + Σ_i c_ik · w_i`` with ``c_ik = (Q_i b̂_i)_k`` and
  ``w_i = Σ_c|P_i b̂_i| / Σ_pixels Σ_c|P_i b̂_i|``, so that the pixels of PD_k sum to score k exactly;
- :func:`pixel_votes` — each pixel votes for the class whose PD is largest there (argmax map, vote shares);
- :func:`fgsm` — x0 + ε·sign(∇ₓ cross-entropy), clipped to the model's value range;
- :func:`analyse` — all of the above for one image, as a JSON-ready record plus the maps for the figures;
- :func:`residual_table` — mean ± std of the residual share per model.

Units: scores are logits (pre-softmax); shares are fractions of the score (1.0 = 100 %); maps are (H, W) in
score units per pixel (channels summed).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

#: classes back-projected per ``transpose`` call when building PDs for a vote (memory: chunk × C × H × W).
VOTE_CHUNK = 32
#: how contributions are reported (``--group``): summed per layer, or one per raw bias source.
GROUPINGS = ("layer", "source")


class NotAClassifier(ValueError):
    """The model's output is not a vector of class scores of shape (1, K)."""


@dataclass
class Decomposition:
    """Every score of one image split along the network (float64 numpy arrays).

    scores: (K,) f(x0); input_term: (K,) F(x0)·x0; names: the L bias sources (or layers) in network order;
    contributions: (L, K) the rows Q_i b̂_i (summed per layer); residual: (K,) = contributions.sum(0);
    members: for layers, the raw sources of each (None for raw sources).
    """

    scores: np.ndarray
    input_term: np.ndarray
    names: list[str]
    contributions: np.ndarray
    members: list[list[str]] | None = None

    @property
    def residual(self) -> np.ndarray:
        return self.contributions.sum(0) if len(self.names) else np.zeros_like(self.scores)

    @property
    def top1(self) -> int:
        return int(np.argmax(self.scores))

    def top(self, n: int) -> list[int]:
        """The n classes with the highest scores, best first."""
        return [int(k) for k in np.argsort(-self.scores, kind="stable")[:n]]

    def record(self, k: int | None = None) -> dict:
        """The decomposition of score k (default top-1) as the JSON object of ``results.json``."""
        k = self.top1 if k is None else k
        score = float(self.scores[k])
        residual = float(self.residual[k])
        return {
            "top1": k,
            "score": score,
            "input_term": float(self.input_term[k]),
            "residual": residual,
            "residual_share": residual / score if score else float("nan"),
            "contributions": [{"name": n, "value": float(v)} | ({"sources": self.members[i]} if self.members else {})
                              for i, (n, v) in enumerate(zip(self.names, self.contributions[:, k]))],
        }


def is_class_vector(shape) -> bool:
    """True for the output shapes of a classifier: (1, K), or (1, K, 1, 1) (a 1×1 convolution as the head)."""
    shape = tuple(shape)
    return len(shape) >= 2 and shape[0] == 1 and all(s == 1 for s in shape[2:])


def _class_vector(t: torch.Tensor, what: str) -> np.ndarray:
    if not is_class_vector(t.shape):
        raise NotAClassifier(f"classify needs a model whose output is (1, K) or (1, K, 1, 1) class scores; {what} "
                             f"has shape {tuple(t.shape)}")
    return t.detach().double().reshape(-1).cpu().numpy()


def layer_groups(li) -> "OrderedDict[str, list[str]]":
    """The bias sources of ``li`` grouped by layer, in network order: layer name -> its source names.

    A layer is the paper's y_n = W_n x + b_n, x_n = h(y_n): a weighted operation (conv, linear, conv-transpose;
    rule kind 'affine') with the pointwise operations that follow it in a chain (`li.continues_layer`: a batch norm,
    an activation), so a conv's bias and the shift of the batch norm after it are one source. Its name joins
    the modules' names ("features.0 + features.1"). A source outside any such chain (an offset on the input, a
    norm after an addition) is a group of its own under its source name. Every source is in exactly one group.
    """
    anchor: dict = {}
    for node, site in li.sites.items():  # network order
        if site.rule.kind == "affine":
            anchor[node] = node
        elif li.continues_layer(node):
            source = li.linear_inputs(node)[0]
            if source in anchor:
                anchor[node] = anchor[source]
    members: dict = {}  # layer anchor node (or the source's own name) -> sources, in network order
    for source in li.sources:
        members.setdefault(anchor.get(li.source_site(source).node, source), []).append(source)
    groups: OrderedDict[str, list[str]] = OrderedDict()
    for key, sources in members.items():
        if isinstance(key, str):
            groups[key] = sources
        else:
            wheres = [li.sites[key].where] + [li.source_site(m).where for m in sources]
            groups[" + ".join(dict.fromkeys(wheres))] = sources
    return groups


def _sum_groups(values: "OrderedDict[str, torch.Tensor]", groups) -> "OrderedDict[str, torch.Tensor]":
    """Per-source tensors summed (in float64) per group; ``groups`` None = unchanged."""
    if groups is None:
        return values
    return OrderedDict((g, sum(values[m].double() for m in members)) for g, members in groups.items())


def decompose(li, x0: torch.Tensor, groups: "OrderedDict[str, list[str]] | None" = None) -> Decomposition:
    """Split every score of ``li`` (interpreted at x0, shape (1, C, H, W)) into input term and bias sources, or
    into input term and groups of sources (``groups``, e.g. :func:`layer_groups`), each the sum of its sources."""
    scores = _class_vector(li.output, "the output")
    with torch.no_grad():
        input_term = _class_vector(li.forward(x0), "F·x0")
    contribs = _sum_groups(li.contributions(), groups)
    names = list(contribs)
    rows = [_class_vector(v, f"the contribution of {n}") for n, v in contribs.items()]
    table = np.stack(rows) if rows else np.zeros((0, scores.size))
    return Decomposition(scores, input_term, names, table, None if groups is None else list(groups.values()))


def bias_weights(li, dec: Decomposition | None = None,
                 groups: "OrderedDict[str, list[str]] | None" = None) -> tuple[list[str], np.ndarray]:
    """w_i: each bias source's (or group's: ``groups``) back-projection P_i b̂_i as a pixel distribution, (L, H, W)
    float64.

    w_i = Σ_c|P_i b̂_i| normalised to sum 1 over the pixels (for a group, P b̂ is the sum over its sources);
    uniform where P_i b̂_i vanishes. With ``dec``, checks that the sources are those of its contributions, in the
    same order.
    """
    maps = []
    names = []
    for name, bp in _sum_groups(li.backprojections(), groups).items():
        m = bp.detach().double().abs().sum(1)[0].cpu().numpy()
        total = m.sum()
        maps.append(m / total if total > 0 else np.full(m.shape, 1.0 / m.size))
        names.append(name)
    if dec is not None and names != dec.names:
        raise ValueError(f"backprojections() and contributions() name different sources: {names} vs {dec.names}")
    return names, np.stack(maps) if maps else np.zeros((0, 1, 1))


def input_discussions(li, x0: torch.Tensor, classes: list[int]) -> np.ndarray:
    """Σ_c x0 ⊙ Fᵀe_k for the given classes: (n, H, W) float64; the pixels of map k sum to (F x0)_k."""
    n_classes = li.output.shape[1]
    e = torch.zeros(len(classes), n_classes, dtype=li.output.dtype)
    e[torch.arange(len(classes)), torch.as_tensor(classes)] = 1
    e = e.reshape(len(classes), *li.output.shape[1:])  # (n, K) or (n, K, 1, 1)
    with torch.no_grad():
        rows = li.transpose(e)
    return (rows.double() * x0.double()).sum(1).cpu().numpy()


def pixel_discussions(li, x0: torch.Tensor, dec: Decomposition, classes: list[int],
                      weights: np.ndarray | None = None) -> np.ndarray:
    """PD_k for the given classes, (n, H, W) float64, each summing to score k (see the module docstring).

    ``weights`` = the (L, H, W) array of :func:`bias_weights` (computed when not given; reuse it across calls).
    """
    if weights is None:
        weights = bias_weights(li, dec)[1]
    pd = input_discussions(li, x0, classes)
    if len(dec.names):
        pd += np.einsum("lk,lhw->khw", dec.contributions[:, classes], weights)
    return pd


@dataclass
class Votes:
    """Pixel votes over a set of classes: ``winner`` (H, W) class index per pixel, ``shares`` {class: fraction}
    (largest first; classes without votes left out); ``kept`` (n, H, W) the PDs of the first n voting classes."""

    winner: np.ndarray
    classes: list[int]
    shares: dict[int, float] = field(default_factory=dict)
    kept: np.ndarray | None = None

    def share(self, k: int) -> float:
        return self.shares.get(k, 0.0)


def pixel_votes(li, x0: torch.Tensor, dec: Decomposition, classes: list[int] | None = None,
                weights: np.ndarray | None = None, chunk: int = VOTE_CHUNK, keep: int = 0) -> Votes:
    """Each pixel votes for the class whose PD is largest there, among ``classes`` (default: all K).

    PDs are built ``chunk`` classes at a time with a running argmax (ties go to the class listed first); the PDs
    of the first ``keep`` classes are returned in ``Votes.kept``.
    """
    classes = list(range(dec.scores.size)) if classes is None else list(classes)
    if weights is None:
        weights = bias_weights(li, dec)[1]
    best = winner = None
    kept = []
    for start in range(0, len(classes), chunk):
        part = classes[start:start + chunk]
        pd = pixel_discussions(li, x0, dec, part, weights)
        kept += list(pd[:max(0, keep - start)])
        idx = pd.argmax(0)
        val = np.take_along_axis(pd, idx[None], 0)[0]
        cls = np.asarray(part)[idx]
        if best is None:
            best, winner = val, cls
        else:
            better = val > best
            best = np.where(better, val, best)
            winner = np.where(better, cls, winner)
    votes = votes_from_winner(winner, classes)
    votes.kept = np.stack(kept) if kept else None
    return votes


def votes_from_winner(winner: np.ndarray, classes: list[int]) -> Votes:
    """Vote shares of an argmax map: fraction of pixels per class (only classes with votes are listed)."""
    values, counts = np.unique(winner, return_counts=True)
    shares = {int(v): float(c) / winner.size for v, c in sorted(zip(values, counts), key=lambda t: -t[1])}
    return Votes(winner.astype(np.int64), list(classes), shares)


def fgsm(model: torch.nn.Module, x0: torch.Tensor, target: int, eps: float,
         value_range: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast gradient sign attack: returns (x_adv, delta) with delta = ε·sign(∇ₓ CE(f(x0), target)).

    x_adv = clip(x0 + delta, value_range); the model is used in eval mode. ``delta`` (before clipping) has
    sup-norm ε unless the gradient vanishes everywhere. The gradient is taken as ∇ₓ CE / (1 − p_target) =
    Σ_{k≠target} q_k ∇s_k − ∇s_target, q the softmax of the other classes' scores (float64): the same sign, but
    on a confident image 1 − p_target underflows in float32 and CE's own gradient loses the target's term.
    A model with a single score is refused (its cross-entropy is constant: there is no gradient to follow).
    """
    if eps < 0:
        raise ValueError(f"eps must be ≥ 0, got {eps}")
    was_training = model.training
    model.eval()
    try:
        x = x0.detach().clone().requires_grad_(True)
        scores = model(x)[0].reshape(-1)
        if scores.numel() < 2:
            raise ValueError(f"FGSM needs at least 2 class scores (the cross-entropy of {scores.numel()} is constant); "
                             f"this model has {scores.numel()}")
        others = torch.arange(scores.numel()) != target
        weights = torch.softmax(scores.detach().double()[others], 0).to(scores.dtype)
        (grad,) = torch.autograd.grad((weights * scores[others]).sum() - scores[target], x)
    finally:
        model.train(was_training)
    delta = eps * grad.sign()
    return (x0.detach() + delta).clamp(*value_range), delta


@dataclass
class ImageAnalysis:
    """One image (clean or attacked): the JSON record and the maps for the figures.

    record: the top-1 decomposition (:meth:`Decomposition.record`) plus ``top_classes``/``top_scores``,
    ``votes`` (classes considered, share of the top-1 class, the largest shares); shares: (L + 1,) the input
    term and the contributions as fractions of the top-1 score; x: (C, H, W) the input; pd: (n, H, W) PDs of
    the top classes; winner: (H, W) vote map.
    """

    record: dict
    shares: np.ndarray
    x: np.ndarray
    pd: np.ndarray
    winner: np.ndarray


def analyse(model: torch.nn.Module, x0: torch.Tensor, *, top: int = 3,
            vote_classes: int | None = None, group: str = "layer") -> ImageAnalysis:
    """Interpret ``model`` at x0 (1, C, H, W) and compute decomposition, PDs of the ``top`` classes and votes.

    ``vote_classes`` = how many of the best-scoring classes vote (None or 0: all K classes; at least ``top``);
    ``group``: contributions (and the bias parts of the PDs) per "layer" (:func:`layer_groups`) or per raw
    bias "source".
    """
    from pipeline.interpreter import interpret

    if group not in GROUPINGS:
        raise ValueError(f"group must be one of {', '.join(GROUPINGS)}, got '{group}'")
    li = interpret(model, x0)
    groups = layer_groups(li) if group == "layer" else None
    dec = decompose(li, x0, groups)
    weights = bias_weights(li, dec, groups)[1]
    n_classes = dec.scores.size
    top_classes = dec.top(min(top, n_classes))
    voters = dec.top(n_classes if not vote_classes else max(vote_classes, len(top_classes)))
    votes = pixel_votes(li, x0, dec, voters, weights, keep=len(top_classes))
    pd = votes.kept
    record = dec.record()
    record["top_classes"] = top_classes
    record["top_scores"] = [float(dec.scores[k]) for k in top_classes]
    record["votes"] = {
        "classes": len(votes.classes),
        "top1_share": votes.share(dec.top1),
        "shares": [{"class": k, "share": s} for k, s in list(votes.shares.items())[:10]],
    }
    score = dec.scores[dec.top1]
    shares = np.concatenate([[dec.input_term[dec.top1]], dec.contributions[:, dec.top1]]) / score
    return ImageAnalysis(record, shares, x0[0].detach().double().cpu().numpy(), pd, votes.winner)


def analyse_attacked(model: torch.nn.Module, x0: torch.Tensor, eps: list[float], *, label: int | None = None,
                     value_range: tuple[float, float] = (0.0, 1.0), top: int = 3, vote_classes: int | None = None,
                     group: str = "layer") -> tuple[ImageAnalysis, list[ImageAnalysis]]:
    """The clean analysis and one FGSM analysis per ε (target: ``label`` if known, else the clean top-1).

    Each attacked record gains ``eps``, ``target``, ``clean_top1``, ``top1_changed`` and, under ``votes``,
    ``clean_top1_share`` (the share of pixels still voting for the clean top-1 class).
    """
    clean = analyse(model, x0, top=top, vote_classes=vote_classes, group=group)
    clean_top1 = clean.record["top1"]
    target = clean_top1 if label is None else int(label)
    attacked = []
    for e in eps:
        x_adv, _ = fgsm(model, x0, target, e, value_range)
        a = analyse(model, x_adv, top=top, vote_classes=vote_classes, group=group)
        a.record.update(eps=float(e), target=target, clean_top1=clean_top1, top1_changed=a.record["top1"] != clean_top1)
        a.record["votes"]["clean_top1_share"] = votes_from_winner(a.winner, []).share(clean_top1)
        attacked.append(a)
    return clean, attacked


def residual_table(results: dict[str, list[dict]], key: str = "residual_share") -> list[dict]:
    """Table 1: per model, mean ± std (population, over images) of the residual share of the top-1 score.

    ``results`` maps a model name to its list of per-image records (``results.json``); attacked records are
    summarised too when present (``attacks`` entries, one column pair per ε).
    """
    rows = []
    for model, records in results.items():
        share = np.array([r[key] for r in records], dtype=float)
        row = {"model": model, "images": len(records), "mean": float(share.mean()), "std": float(share.std())}
        for eps in sorted({a["eps"] for r in records for a in r.get("attacks", [])}):
            att = np.array([a[key] for r in records for a in r.get("attacks", []) if a["eps"] == eps])
            row[f"fgsm {eps:g} mean"] = float(att.mean())
            row[f"fgsm {eps:g} std"] = float(att.std())
        rows.append(row)
    return rows


def summary(records: list[dict]) -> list[dict]:
    """Per condition (clean, then each FGSM ε): images, accuracy (when labels are known), residual share,
    vote agreement (share of pixels voting for the image's own top-1 class), and for attacks the share of pixels
    still voting for the clean top-1 class and the fraction of images whose top-1 changed (means and stds)."""
    conditions = [("clean", None, records)]
    for eps in sorted({a["eps"] for r in records for a in r.get("attacks", [])}):
        conditions.append((f"fgsm {eps:g}", eps, [a | {"label": r.get("label")} for r in records
                                                   for a in r.get("attacks", []) if a["eps"] == eps]))
    rows = []
    for name, eps, recs in conditions:
        row = {"condition": name, "eps": eps, "images": len(recs)}
        labelled = [r for r in recs if r.get("label") is not None]
        if labelled:
            row["accuracy"] = float(np.mean([r["top1"] == r["label"] for r in labelled]))
        stats = {"residual_share": [r["residual_share"] for r in recs],
                 "vote_agreement": [r["votes"]["top1_share"] for r in recs]}
        if eps is not None:
            stats["clean_top1_votes"] = [r["votes"]["clean_top1_share"] for r in recs]
            row["top1_changed"] = float(np.mean([r["top1_changed"] for r in recs]))
        for key, values in stats.items():
            row[f"{key} mean"] = float(np.mean(values))
            row[f"{key} std"] = float(np.std(values))
        rows.append(row)
    return rows
