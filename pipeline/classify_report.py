"""Figures, tables and the HTML report of ``linterp classify`` (matplotlib, Agg backend; no remote resources).

- :func:`contribution_figure` — Figure 1: layer-wise contributions to the top-1 score as shares of it, mean with
  ± std shading over the images, one panel per condition (clean, FGSM ε …);
- :func:`discussion_figure` — Figure 2: the image, the pixel discussions of its top classes, the vote map and the
  vote shares;
- :func:`attack_figure` — Figure 3: clean and attacked images with their top-1 and vote maps;
- :func:`write_results`, :func:`write_table`, :func:`write_report` — JSON / CSV / Markdown / HTML files.
"""
from __future__ import annotations

import csv
import html
import json
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from pipeline.progress import counted  # noqa: E402

#: vote maps colour the classes with the most votes (up to this many), the others grey.
VOTE_COLOURS = 9
#: at most this many source names under Figure 1 (every k-th source is labelled on deeper networks).
MAX_TICKS = 60


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temporary file + rename), so a killed run never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _label(k: int, class_names: list[str] | None) -> str:
    if class_names and k < len(class_names) and class_names[k] != str(k):
        return f"{k} {class_names[k]}"
    return str(k)


def _display(x: np.ndarray, value_range: tuple[float, float]) -> tuple[np.ndarray, str | None]:
    """(C, H, W) input -> an image for imshow in [0, 1] and its colour map."""
    lo, hi = value_range
    img = np.clip((np.asarray(x, dtype=float) - lo) / (hi - lo), 0, 1)
    if img.shape[0] == 1:
        return img[0], "gray"
    return np.moveaxis(img[:3], 0, -1), None


def _flat_rows(records: list[dict]):
    """(record, eps) for every clean record (eps None) and every attacked one."""
    for r in records:
        yield r, None
        for a in r.get("attacks", []):
            yield a | {"image": r["image"]}, a["eps"]


def write_results(out: Path, records: list[dict]) -> None:
    """``results.json`` (the records), ``results.csv`` (one row per image and condition) and ``contributions.csv``
    (image, condition, source, value, share of the score)."""
    out = Path(out)
    write_json(out / "results.json", records)
    fields = ["image", "label", "eps", "top1", "score", "input_term", "residual", "residual_share", "vote_classes",
              "vote_top1_share", "vote_clean_top1_share", "top1_changed"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r, eps in _flat_rows(records):
            v = r.get("votes", {})
            w.writerow([r["image"], r.get("label", ""), "" if eps is None else eps, r["top1"], r["score"],
                        r["input_term"], r["residual"], r["residual_share"], v.get("classes", ""),
                        v.get("top1_share", ""), v.get("clean_top1_share", ""), r.get("top1_changed", "")])
    with open(out / "contributions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "eps", "source", "value", "share"])
        for r, eps in _flat_rows(records):
            rows = [("input", r["input_term"])] + [(c["name"], c["value"]) for c in r["contributions"]]
            for name, value in rows:
                w.writerow([r["image"], "" if eps is None else eps, name, value, value / r["score"]])


def contribution_shares(records: list[dict]) -> tuple[list[str], np.ndarray]:
    """Names (``input`` then the bias sources) and the (N, L + 1) shares of the top-1 score of each record."""
    if not records:
        return [], np.zeros((0, 0))
    names = ["input"] + [c["name"] for c in records[0]["contributions"]]
    shares = np.array([[r["input_term"] / r["score"]] + [c["value"] / r["score"] for c in r["contributions"]]
                       for r in records])
    return names, shares


def contribution_figure(path: Path, conditions: dict[str, list[dict]], title: str) -> None:
    """Figure 1: per condition, the mean share of each source (input term first, then network order) with ± std.

    The sources are the bars in network order; ``contributions.csv`` has every value by name."""
    n = len(conditions)
    n_sources = _n_sources(conditions)
    every = -(-n_sources // MAX_TICKS)  # label every k-th source on deep networks
    fig, axes = plt.subplots(n, 1, figsize=(min(16.0, max(6.0, 0.25 * n_sources + 2)), 2.6 * n + 0.8),
                             squeeze=False, sharex=True)
    for ax, (label, recs) in zip(axes[:, 0], conditions.items()):
        names, shares = contribution_shares(recs)
        mean, std = shares.mean(0), shares.std(0)
        x = np.arange(len(names))
        ax.bar(x, mean, color="tab:blue", alpha=0.8, width=0.8)
        ax.bar(x, 2 * std, bottom=mean - std, color="tab:orange", alpha=0.3, width=0.8, linewidth=0, label="± std")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.use_sticky_edges = False  # the ± std bars' bottoms would pin the limits to the tallest bar: a margin
        ax.margins(y=0.08)
        ax.set_ylabel("share of top-1 score")
        ax.set_title(f"{label} (n = {len(recs)})", fontsize=9)
        ax.set_xticks(x[::every])
        ax.set_xticklabels([n if len(n) <= 40 else "…" + n[-39:] for n in names[::every]], rotation=90, fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _n_sources(conditions: dict[str, list[dict]]) -> int:
    recs = next(iter(conditions.values()), [])
    return 1 + len(recs[0]["contributions"]) if recs else 1


def _vote_image(winner: np.ndarray, shares: list[dict], class_names):
    """Colour the classes with the most votes; returns (index image, colour map, legend labels)."""
    ranked = [s["class"] for s in shares][:VOTE_COLOURS]
    idx = np.full(winner.shape, len(ranked))
    for i, k in enumerate(ranked):
        idx[winner == k] = i
    colours = list(plt.get_cmap("tab10").colors[:len(ranked)]) + [(0.75, 0.75, 0.75)]
    labels = [f"{_label(k, class_names)} ({s['share']:.0%})" for k, s in zip(ranked, shares)]
    return idx, ListedColormap(colours), labels


def _vote_panel(ax, winner, record, class_names):
    idx, cmap, labels = _vote_image(winner, record["votes"]["shares"], class_names)
    ax.imshow(idx, cmap=cmap, vmin=-0.5, vmax=cmap.N - 0.5, interpolation="nearest")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(len(labels))]
    # below the map: to its right a long class name ran under the next column's map (attack figures)
    ax.legend(handles, labels, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.02), frameon=False)
    ax.set_title(f"votes over {record['votes']['classes']} classes", fontsize=8)
    ax.axis("off")


def discussion_figure(path: Path, analysis, name: str, class_names=None, value_range=(0.0, 1.0)) -> None:
    """Figure 2 for one image: the input, PD_k of the top classes (signed, shared colour scale), the vote map."""
    rec = analysis.record
    n = len(rec["top_classes"])
    fig, axes = plt.subplots(1, n + 2, figsize=(2.4 * (n + 2) + 1.6, 2.8))
    img, cmap = _display(analysis.x, value_range)
    axes[0].imshow(img, cmap=cmap, vmin=0, vmax=1)
    axes[0].set_title(f"{name}\ntop-1 {_label(rec['top1'], class_names)}", fontsize=8)
    axes[0].axis("off")
    lim = float(np.abs(analysis.pd).max()) or 1.0
    for ax, k, s, pd in zip(axes[1:], rec["top_classes"], rec["top_scores"], analysis.pd):
        im = ax.imshow(pd, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"PD {_label(k, class_names)}\nscore {s:.3g} = Σ pixels", fontsize=8)
        ax.axis("off")
    fig.colorbar(im, ax=list(axes[1:n + 1]), shrink=0.8, label="score per pixel")
    _vote_panel(axes[n + 1], analysis.winner, rec, class_names)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def attack_figure(path: Path, clean, attacked: list, name: str, class_names=None, value_range=(0.0, 1.0)) -> None:
    """Figure 3 for one image: per condition (clean, each ε) the input with its top-1 and the vote map."""
    cols = [clean] + list(attacked)
    fig, axes = plt.subplots(2, len(cols), figsize=(3.6 * len(cols), 5.6), squeeze=False)
    for j, a in enumerate(cols):
        rec = a.record
        img, cmap = _display(a.x, value_range)
        axes[0, j].imshow(img, cmap=cmap, vmin=0, vmax=1)
        cond = "clean" if j == 0 else f"FGSM ε = {rec['eps']:g}"
        axes[0, j].set_title(f"{name}: {cond}\ntop-1 {_label(rec['top1'], class_names)} ({rec['score']:.3g})",
                             fontsize=8)
        axes[0, j].axis("off")
        _vote_panel(axes[1, j], a.winner, rec, class_names)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_table(rows: list[dict], prefix: Path) -> list[Path]:
    """Table 1 as ``prefix.csv``, ``prefix.md`` and ``prefix.html``; shares printed as percentages in md/html."""
    prefix = Path(prefix)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    paths = [prefix.with_suffix(".csv"), prefix.with_suffix(".md"), prefix.with_suffix(".html")]
    with open(paths[0], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    cells = [_table_cells(r) for r in rows]
    head = ["model", "images"] + [h for h in cells[0] if h not in ("model", "images")] if cells else []
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(c.get(h, "") for h in head) + " |" for c in cells]
    paths[1].write_text("\n".join(md) + "\n")
    paths[2].write_text(_html_table(head, cells))
    return paths


def _table_cells(row: dict) -> dict[str, str]:
    """'mean'/'std' pairs merged into 'mean % ± std'."""
    out = {"model": str(row["model"]), "images": str(row["images"])}
    for key in row:
        if key.endswith("mean"):
            base = key[: -len("mean")].strip() or "residual share"
            out[base] = f"{100 * row[key]:.1f} % ± {100 * row[key[:-4] + 'std']:.1f}"
    return out


def _html_table(head: list[str], cells: list[dict[str, str]]) -> str:
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c.get(h, ''))}</td>" for h in head) + "</tr>\n"
                   for c in cells)
    return ("<table class=\"classify-table\">\n<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr>\n" + rows + "</table>\n")


def write_report(out: Path, model: str, records: list[dict], figures: list[str], table_html: str,
                 class_names=None, skipped: list[str] = ()) -> Path:
    """``out/index.html``: the summary table, the figures (relative PNG links) and the per-image table; ``skipped``:
    the inputs that could not be read (named, without their paths: the report holds none)."""
    out = Path(out)
    lines = []
    for r, eps in _flat_rows(records):
        v = r.get("votes", {})
        lines.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            r["image"], "clean" if eps is None else f"FGSM {eps:g}", _label(r["top1"], class_names),
            f"{r['score']:.4g}", f"{r['input_term']:.4g}", f"{r['residual']:.4g}",
            f"{100 * r['residual_share']:.1f} %", f"{100 * v.get('top1_share', float('nan')):.1f} %")) + "</tr>")
    skipped_html = (f"<p>Skipped, could not be read: {html.escape(', '.join(skipped))}.</p>\n" if skipped else "")
    imgs = "\n".join(f'<figure><img src="{html.escape(f)}" alt="{html.escape(f)}"></figure>' for f in figures)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>linterp classify: {html.escape(model)}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1400px}} img{{max-width:100%}}
table{{border-collapse:collapse;font-size:0.85em}} td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
figure{{margin:1em 0}}</style></head><body>
<h1>{html.escape(model)}: linear-interpreter analysis of {len(records)} {counted(len(records), "images")}</h1>
<p>Scores are logits. y = F(x0)·x0 + Σ<sub>i</sub> Q<sub>i</sub> b̂<sub>i</sub>; residual share = r / score of the
top-1 class. Files: <a href="results.json">results.json</a>, <a href="results.csv">results.csv</a>,
<a href="contributions.csv">contributions.csv</a>.</p>
{skipped_html}<h2>Residual share (Table 1)</h2>
{table_html}
<h2>Figures</h2>
{imgs}
<h2>Per image</h2>
<table><tr><th>image</th><th>condition</th><th>top-1</th><th>score</th><th>F·x0</th><th>r</th>
<th>r / score</th><th>votes for top-1</th></tr>
{chr(10).join(lines)}
</table></body></html>
"""
    path = out / "index.html"
    path.write_text(page)
    return path


# ---------------------------------------------------------------------------------------------------------------
# The run: images in, per-image cache (resumable), report out.

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def image_files(paths) -> list[Path]:
    """Files given directly plus the image files (by suffix, sorted) of the directories given; a link named as an
    image is listed even when it leads nowhere, so that the run names it as skipped rather than passing over it."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir()
                            if (f.is_file() or f.is_symlink()) and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(p)
    return files


def load_input(path: Path, spec, size: tuple[int, int], crop_ratio: float = 1.0, polarity: str = "auto"):
    """An image file as (x0 (1, C, *size) float32 in the model's value range, preprocessing record).

    Read by ``pipeline.images.load_image`` (a transparent background composited, see ``images.flatten_alpha``)
    and prepared by ``pipeline.preprocess.classifier_input``, exactly as ``linterp run`` does.
    """
    from pipeline import images
    from pipeline.preprocess import classifier_input

    img, channels, colour = images.load_image_file(path, composite_alpha=True)
    return classifier_input(img, spec, size, crop_ratio, polarity, source_channels=channels, source_colour=colour)


def save_analysis(stem: Path, settings: dict, clean, attacked: list, preprocessing: dict | None = None) -> None:
    """Cache one image's analyses: ``stem.npz`` (maps) then ``stem.json`` (record + settings + how the input was
    prepared; written last)."""
    arrays = {}
    for i, a in enumerate([clean] + list(attacked)):
        arrays.update({f"x{i}": a.x.astype(np.float32), f"pd{i}": a.pd, f"winner{i}": a.winner,
                       f"shares{i}": a.shares})
    tmp = stem.with_name(stem.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, stem.with_suffix(".npz"))
    write_json(stem.with_suffix(".json"), {"settings": settings, "records": [a.record for a in [clean] + attacked],
                                           "preprocessing": preprocessing})


def load_analysis(stem: Path, settings: dict):
    """The cached (clean, attacked, preprocessing) of ``save_analysis`` if present and made with the same settings,
    else None."""
    from pipeline.classify import ImageAnalysis

    meta, maps = stem.with_suffix(".json"), stem.with_suffix(".npz")
    if not (meta.exists() and maps.exists()):
        return None
    try:
        cached = json.loads(meta.read_text())
        if cached.get("settings") != settings:
            return None
        with np.load(maps) as z:
            items = [ImageAnalysis(r, z[f"shares{i}"], z[f"x{i}"], z[f"pd{i}"], z[f"winner{i}"])
                     for i, r in enumerate(cached["records"])]
    except (OSError, ValueError, KeyError):
        return None
    return items[0], items[1:], cached.get("preprocessing")


def record_of(clean, attacked: list, preprocessing: dict | None, image: str, label: int | None) -> dict:
    """The ``results.json`` object of one image: clean top-1 decomposition, ``attacks`` (one per ε) and
    ``preprocessing`` (what was done to an image file, ``pipeline.preprocess``)."""
    rec = {"image": image} | ({"label": int(label)} if label is not None else {}) | clean.record
    if preprocessing is not None:
        rec["preprocessing"] = preprocessing
    if attacked:
        rec["attacks"] = [a.record for a in attacked]
    return rec


def generate(model, model_name: str, inputs: list[tuple[str, object, int | None, str]], out: Path, *,
             eps: list[float] = (), top: int = 3, vote_classes: int = 0, figures: int = 4, group: str = "layer",
             class_names=None, value_range=(0.0, 1.0), settings: dict | None = None,
             progress: bool = True) -> list[dict]:
    """Analyse every input and write the report into ``out``; returns the ``results.json`` records.

    inputs: (name, x0 — a tensor (1, C, H, W), or a no-argument callable returning (x0, preprocessing record or
    None), label or None, source — a string that identifies the input's content, e.g. the sha256 of its file; it
    goes into the cache, so never a path). ``settings`` go into the cache too (JSON, no paths). ``group``:
    contributions per "layer" or per raw bias "source". Images already analysed with the same settings (cache in
    ``out/images``) are not recomputed, so a killed
    run resumes where it stopped.
    """
    from pipeline.classify import analyse_attacked, residual_table, summary
    from pipeline.images import ImageError
    from pipeline.progress import iterate

    out = Path(out)
    cache = out / "images"
    cache.mkdir(parents=True, exist_ok=True)
    settings = dict(settings or {}, model=model_name, eps=list(map(float, eps)), top=top,
                    vote_classes=vote_classes, value_range=list(value_range), group=group)
    records, shown, skipped = [], [], []
    for i, (name, x0, label, source) in enumerate(iterate(inputs, f"classify {model_name}", unit="images",
                                                   enabled=progress)):
        stem = cache / f"{i:05d}-{_safe(name)}"
        image_settings = settings | {"source": source}
        got = load_analysis(stem, image_settings)
        if got is None:
            try:
                x0, prep = x0() if callable(x0) else (x0, None)
            except ImageError as err:  # an unreadable file among good ones: the others are analysed
                skipped.append((name, str(err)))
                continue
            clean, attacked = analyse_attacked(model, x0, list(eps), label=label, value_range=value_range, top=top,
                                               vote_classes=vote_classes or None, group=group)
            got = clean, attacked, prep
            save_analysis(stem, image_settings, *got)
        records.append(record_of(*got, name, label))
        if len(shown) < figures:
            shown.append((name, got[:2]))
    if skipped and not records:
        raise ImageError(skipped[0][1] if len(skipped) == 1 else f"none of the {len(skipped)} images could be read; "
                         f"{skipped[0][1]}")
    for name, why in skipped:
        print(f"{model_name}: skipped {name}: {why}", file=sys.stderr)
    write_results(out, records)
    figs = []
    conditions = {"clean": records} | {f"FGSM ε = {e:g}": [r["attacks"][j] for r in records]
                                        for j, e in enumerate(eps)}
    if records:
        contribution_figure(out / "contributions.png", conditions,
                            f"{model_name}: contributions to the top-1 score, per {group}")
        figs.append("contributions.png")
    for j, (name, (clean, attacked)) in enumerate(shown):
        f = f"discussion-{j}.png"
        discussion_figure(out / f, clean, name, class_names, value_range)
        figs.append(f)
        if attacked:
            f = f"attack-{j}.png"
            attack_figure(out / f, clean, attacked, name, class_names, value_range)
            figs.append(f)
    table_html = ""
    if records:
        write_table(residual_table({model_name: records}), out / "table")
        table_html = (out / "table.html").read_text()
        rows = summary(records)
        write_json(out / "summary.json", rows)
        table_html += "<h2>Summary</h2>\n" + _html_table(list(rows[0]) + [k for k in rows[-1] if k not in rows[0]],
                                                          [{k: _fmt(v) for k, v in r.items()} for r in rows])
    write_report(out, model_name, records, figs, table_html, class_names, [name for name, _ in skipped])
    return records


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _safe(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).stem)
    return keep[:60] or "image"
