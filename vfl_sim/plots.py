"""PNG plots of a run's ``report.json``: where each unlearned model sits between forgetting and utility.

Every function takes the report dict (as ``vfl_sim.report`` writes it) and returns a matplotlib
:class:`~matplotlib.figure.Figure`, or ``None`` when the report holds no data for that plot (party and
feature requests have no forgotten-sample accuracies and no ``representation`` section; sample requests
have no ``class_recovery``). :func:`write_plots` saves every plot that has data.

Plots
-----
``trilemma.png`` (:func:`trilemma_figure`)
    The unlearning trilemma of Mirage (arXiv 2605.20282): utility (retained test accuracy, x), forgetting
    at the output (forgotten-sample accuracy, y) and forgetting in the representation (fused-embedding LPR
    gap to ``retrain``, colour). A method can look like ``retrain`` on the first two axes while its
    embeddings still separate the forgotten samples linearly; the colour shows that residue, which an
    output-only plot hides.
``layerwise_lpr.png`` (:func:`layerwise_figure`)
    Linear probe recovery (LPR) at each named layer of every party's bottom model, then at the party's
    embedding, one line per model. Mirage (arXiv 2605.20282) finds forgotten information surviving in
    intermediate layers even when the last ones look clean; the lines show at which depth a method stops
    (or never starts) erasing it, party by party, as VFL splits the representation across parties.
``cka.png`` (:func:`cka_figure`)
    Linear CKA of the fused embedding to the original model (x) against CKA to ``retrain`` (y). Above the
    diagonal the representation is closer to the retrained model than to the one it started from.
``probe_vs_output.png`` (:func:`probe_output_figure`)
    For class requests, accuracy on the forgotten classes' test samples of the model's own output, of a
    multi-class linear probe and of a nearest-class-mean classifier on its embeddings. "An Illusion of
    Unlearning?" (arXiv 2604.08271) shows output accuracy near zero while a probe still recovers the
    forgotten classes; a tall probe bar over a short output bar is that illusion.

The figures are built with the object-oriented :class:`~matplotlib.figure.Figure` API and rendered by the
Agg canvas, so importing this module selects no backend, opens no window and registers nothing with
``pyplot`` (no figure outlives its last reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vfl_sim.forget import ORIGINAL, RETRAIN, ForgetKind

__all__ = [
    "DPI",
    "PLOT_FILES",
    "cka_figure",
    "layerwise_figure",
    "probe_output_figure",
    "trilemma_figure",
    "write_plots",
]

DPI = 120
"""Resolution of the written PNGs."""


# Colour is taken by the LPR gap in the trilemma, so the two reference models are told apart by shape.
_MARKERS = {ORIGINAL: "s", RETRAIN: "D"}
_METHOD_MARKER = "o"
_NO_DATA_COLOUR = "lightgrey"
_GAP_CMAP = "RdBu_r"
# A gap range narrower than this would paint sampling noise (one probe sample is ~0.02) in full colour.
_MIN_GAP_RANGE = 0.05


# ---------------------------------------------------------------------------------------------- report access


def _get(node: Any, *keys: str) -> Any:
    """``node[k0][k1]...``, or None where a level is missing, None or not a mapping (reports are partial)."""
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _num(value: Any) -> float | None:
    """A finite number as float, else None (JSON may carry NaN, and bools are not measurements)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _models(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    models = _get(report, "models")
    if not isinstance(models, Mapping):
        return {}
    return {str(name): m for name, m in models.items() if isinstance(m, Mapping)}


def _title(report: Mapping[str, Any], what: str) -> str:
    name = _get(report, "name")
    kind = _get(report, "forget_request", "kind")
    classes = _get(report, "forget_request", "classes")
    request = f"{kind} request" if isinstance(kind, str) else ""
    if kind == ForgetKind.CLASS and isinstance(classes, list) and classes:
        request += " " + ", ".join(str(c) for c in classes)
    context = " - ".join(s for s in (str(name) if name is not None else "", request) if s)
    return f"{what}\n({context})" if context else what


def _model_colours(names: Iterable[str]) -> dict[str, Any]:
    """One colour per model of the report, the same in every figure; the two references in black and grey."""
    methods = [n for n in names if n not in (ORIGINAL, RETRAIN)]
    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    colours: dict[str, Any] = {ORIGINAL: "black", RETRAIN: "dimgrey"}
    for i, name in enumerate(methods):
        colours[name] = cmap(i % cmap.N)
    return colours


def _annotation_size(n: int) -> float:
    return 8.0 if n <= 8 else 6.5


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    # Attaching the Agg canvas explicitly keeps rendering off whichever interactive backend pyplot may pick.
    FigureCanvasAgg(fig)
    return fig


def _padded_limits(values: list[float], lo: float = 0.0, hi: float = 1.0, min_span: float = 0.1) -> tuple[float, float]:
    """Limits around ``values``, at least ``min_span`` wide, kept inside [lo, hi] but for a small margin.

    Accuracies of working models crowd near 1; a fixed [0, 1] axis would stack them on one spot, and a
    window centred on them would waste half its height on values above 1 that cannot occur.
    """
    vmin, vmax = min(values), max(values)
    span = min(max(vmax - vmin, min_span), hi - lo)
    low = (vmin + vmax - span) / 2
    low = min(max(low, lo), hi - span)
    pad = 0.05 * span
    return low - pad, low + span + pad


def _label_offsets(
    points: Sequence[tuple[float, float]], xlim: tuple[float, float], ylim: tuple[float, float]
) -> list[tuple[float, float]]:
    """Text offsets (in points) that stack the names of nearly coincident markers instead of overprinting them.

    Methods that barely move a model (or tie with it) land on one spot; without this their names merge.
    """
    xspan, yspan = (xlim[1] - xlim[0]) or 1.0, (ylim[1] - ylim[0]) or 1.0
    offsets: list[tuple[float, float]] = []
    for i, (x, y) in enumerate(points):
        # A name is ~10 % of the axes wide and ~2 % high; closer neighbours than that collide.
        crowd = sum(abs(x - px) / xspan < 0.1 and abs(y - py) / yspan < 0.025 for px, py in points[:i])
        offsets.append((5.0, 4.0 - 9.0 * crowd))
    return offsets


# ---------------------------------------------------------------------------------------------- trilemma


def trilemma_figure(report: Mapping[str, Any]) -> Figure | None:
    """The unlearning trilemma (Mirage, arXiv 2605.20282): utility, output forgetting, representation residue.

    Parameters
    ----------
    report
        A ``report.json`` dict.

    Returns
    -------
    Figure or None
        x: ``output.retain_test_acc``; y: ``output.forget_test_acc`` (``forget_train_acc`` when the
        report has no forgotten test accuracy, as for sample requests); colour: fused
        ``representation.fused.lpr_gap`` on a diverging scale centred at 0 (grey where the model has
        none). None when no model has both accuracies (party and feature requests forget no samples).
    """
    models = _models(report)
    # Chosen for the whole report, not per model, so no plot mixes test and train accuracies on one axis.
    has_test = any(_num(_get(m, "output", "forget_test_acc")) is not None for m in models.values())
    y_key = "forget_test_acc" if has_test else "forget_train_acc"
    points: list[tuple[str, float, float, float | None]] = []
    for name, m in models.items():
        x = _num(_get(m, "output", "retain_test_acc"))
        y = _num(_get(m, "output", y_key))
        if x is not None and y is not None:
            points.append((name, x, y, _num(_get(m, "representation", "fused", "lpr_gap"))))
    if not points:
        return None

    gaps = [abs(g) for *_, g in points if g is not None]
    bound = max([_MIN_GAP_RANGE, *gaps])
    norm = Normalize(vmin=-bound, vmax=bound)
    cmap: Colormap = colormaps[_GAP_CMAP]

    fig = _new_figure(7.5, 6.0)
    ax = fig.add_subplot()
    size = _annotation_size(len(points))
    retrain_point = next(((x, y) for name, x, y, _ in points if name == RETRAIN), None)
    if retrain_point is not None:
        # Retrain is the target of every method: crosshairs make the distance to it readable on both axes.
        ax.axvline(retrain_point[0], color="grey", lw=0.8, ls=":", zorder=0)
        ax.axhline(retrain_point[1], color="grey", lw=0.8, ls=":", zorder=0)
    xlim = _padded_limits([x for _, x, _, _ in points])
    ylim = _padded_limits([y for _, _, y, _ in points])
    offsets = _label_offsets([(x, y) for _, x, y, _ in points], xlim, ylim)
    for (name, x, y, gap), offset in zip(points, offsets):
        face = _NO_DATA_COLOUR if gap is None else cmap(norm(gap))
        is_reference = name in _MARKERS
        ax.scatter(
            [x],
            [y],
            color=[face],
            marker=_MARKERS.get(name, _METHOD_MARKER),
            s=110 if is_reference else 70,
            edgecolors="black",
            linewidths=1.4 if is_reference else 0.8,
            zorder=3,
            clip_on=False,
        )
        ax.annotate(name, (x, y), xytext=offset, textcoords="offset points", fontsize=size, zorder=4)

    if gaps:
        mappable = ScalarMappable(norm=norm, cmap=cmap)
        bar = fig.colorbar(mappable, ax=ax, shrink=0.85)
        bar.set_label(
            "fused-embedding LPR gap to retrain\n(> 0: forgotten samples more separable than after retraining)"
        )
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("retained test accuracy (utility, higher is better)")
    split = "test" if has_test else "training"
    ax.set_ylabel(f"accuracy on forgotten {split} samples\n(output forgetting: retrain's value is the target)")
    fig.suptitle(_title(report, "Unlearning trilemma: utility vs output forgetting vs representation residue"))
    ax.grid(True, alpha=0.3)
    handles = [
        Line2D([], [], marker=_MARKERS[ORIGINAL], ls="", mfc="white", mec="black", label="original"),
        Line2D([], [], marker=_MARKERS[RETRAIN], ls="", mfc="white", mec="black", label="retrain (target)"),
        Line2D([], [], marker=_METHOD_MARKER, ls="", mfc="white", mec="black", label="unlearning method"),
    ]
    if any(gap is None for *_, gap in points):
        handles.append(
            Line2D([], [], marker=_METHOD_MARKER, ls="", mfc=_NO_DATA_COLOUR, mec="black", label="no LPR gap")
        )
    _figure_legend(fig, handles=handles)
    return fig


# ---------------------------------------------------------------------------------------------- layer-wise LPR


def layerwise_figure(report: Mapping[str, Any]) -> Figure | None:
    """Layer-wise linear probe recovery per party (Mirage, arXiv 2605.20282).

    Parameters
    ----------
    report
        A ``report.json`` dict.

    Returns
    -------
    Figure or None
        One subplot per party; x: the party's layers in report order
        (``representation.layers.<party>.<layer>.lpr``) then its embedding
        (``representation.parties.<party>.lpr``); one line per model. None when no model has ``layers``.
    """
    models = _models(report)
    layered = {name: m for name, m in models.items() if isinstance(_get(m, "representation", "layers"), Mapping)}
    if not any(_get(m, "representation", "layers") for m in layered.values()):
        return None

    # Layer order is the report's insertion order; a union keeps layers that only some models report.
    layer_names: dict[str, list[str]] = {}
    for m in layered.values():
        for party, layers in _get(m, "representation", "layers").items():
            order = layer_names.setdefault(str(party), [])
            if isinstance(layers, Mapping):
                order.extend(str(layer) for layer in layers if str(layer) not in order)
    for m in layered.values():
        parties = _get(m, "representation", "parties")
        if isinstance(parties, Mapping):
            for party in parties:
                layer_names.setdefault(str(party), [])

    has_value = any(
        _num(_get(m, "representation", "layers", party, layer, "lpr")) is not None
        for m in layered.values()
        for party, layers in layer_names.items()
        for layer in layers
    )
    if not has_value:
        return None

    n = len(layer_names)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(4.2 * ncols + 2.0, 3.6 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    colours = _model_colours(models)
    for ax, (party, layers) in zip(axes, layer_names.items()):
        ticks = [*layers, "embedding"]
        for name, m in layered.items():
            values = [_num(_get(m, "representation", "layers", party, layer, "lpr")) for layer in layers]
            values.append(_num(_get(m, "representation", "parties", party, "lpr")))
            if all(v is None for v in values):
                continue
            # NaN breaks the line, so a layer missing for one model shows as a gap rather than a false slope.
            ys = [math.nan if v is None else v for v in values]
            ax.plot(
                range(len(ticks)),
                ys,
                marker=_MARKERS.get(name, _METHOD_MARKER),
                ms=6 if name in _MARKERS else 4,
                lw=2.0 if name in _MARKERS else 1.2,
                ls="--" if name == ORIGINAL else "-",
                color=colours[name],
                label=name,
                # Thin method lines on top of the thick references, so a method that ties one stays visible.
                zorder=2 if name in _MARKERS else 3,
            )
        ax.axhline(0.5, color="grey", lw=0.8, ls=":", zorder=0)
        ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_title(party, fontsize=10)
        ax.set_ylim(0.0, 1.03)
        ax.grid(True, alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("LPR (balanced accuracy, 0.5 = chance)")
    fig.suptitle(_title(report, "Layer-wise linear probe recovery of the forgotten samples, per party"))
    _figure_legend(fig, "model")
    return fig


def _figure_legend(fig: Figure, title: str | None = None, handles: Sequence[Artist] | None = None) -> None:
    """One legend for all subplots, below them: inside, with many models, it would cover the data it explains."""
    entries: dict[str, Artist] = {}
    if handles is not None:
        entries = {str(h.get_label()): h for h in handles}
    else:
        for ax in fig.axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                # Every subplot draws the same models; one entry each is enough.
                entries.setdefault(label, handle)
    if not entries:
        return
    n = len(entries)
    fig.legend(
        list(entries.values()),
        list(entries),
        loc="outside lower center",
        fontsize=8 if n <= 10 else 7,
        ncols=min(n, 5),
        title=title,
        title_fontsize=8,
    )


# ---------------------------------------------------------------------------------------------- CKA


def cka_figure(report: Mapping[str, Any]) -> Figure | None:
    """Fused-embedding CKA to the original model against CKA to the retrained model.

    Parameters
    ----------
    report
        A ``report.json`` dict.

    Returns
    -------
    Figure or None
        x: ``representation.fused.cka_original``; y: ``representation.fused.cka_retrain``; the diagonal
        y = x (above it: closer to retrain) on axes [0, 1], plus a zoomed panel when the models crowd into
        less than half of that range. Models missing either value are left out; None when none has both.
    """
    points: list[tuple[str, float, float]] = []
    for name, m in _models(report).items():
        x = _num(_get(m, "representation", "fused", "cka_original"))
        y = _num(_get(m, "representation", "fused", "cka_retrain"))
        if x is not None and y is not None:
            points.append((name, x, y))
    if not points:
        return None

    xs, ys = [x for _, x, _ in points], [y for _, _, y in points]
    # Trained models of one run usually crowd into a corner of [0, 1]; a second, zoomed panel keeps
    # their names apart while the full panel keeps the absolute scale.
    zoom = max(max(xs) - min(xs), max(ys) - min(ys)) < 0.5
    fig = _new_figure(11.5 if zoom else 6.5, 6.0)
    axes = fig.subplots(1, 2 if zoom else 1, squeeze=False).ravel()
    colours = _model_colours(_models(report))
    size = _annotation_size(len(points))
    for k, ax in enumerate(axes):
        is_zoom = zoom and k == 1
        if is_zoom:
            low, high = _padded_limits(xs + ys, min_span=0.05)
        else:
            low, high = 0.0, 1.0
        offsets = _label_offsets([(x, y) for _, x, y in points], (low, high), (low, high))
        ax.plot([low, high], [low, high], color="grey", lw=1.0, ls="--", zorder=0, label="y = x")
        # Along the diagonal, not in the corners: the corners are where original and retrain themselves sit.
        for text, (tx, ty) in (("closer to retrain", (0.36, 0.44)), ("closer to original", (0.44, 0.36))):
            ax.text(
                tx, ty, text, fontsize=8, color="grey", rotation=45, ha="center", va="center", transform=ax.transAxes
            )
        for (name, x, y), offset in zip(points, offsets):
            ax.scatter(
                [x],
                [y],
                color=[colours[name]],
                marker=_MARKERS.get(name, _METHOD_MARKER),
                s=90 if name in _MARKERS else 55,
                edgecolors="black",
                linewidths=0.8,
                zorder=3,
                clip_on=False,
                label=name,
            )
            if is_zoom or not zoom:
                ax.annotate(name, (x, y), xytext=offset, textcoords="offset points", fontsize=size, zorder=4)
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_aspect("equal")
        ax.set_xlabel("linear CKA to original (fused embedding)")
        ax.set_ylabel("linear CKA to retrain (fused embedding)")
        ax.set_title("zoom on the models" if is_zoom else "full scale", fontsize=10)
        ax.grid(True, alpha=0.3)
    fig.suptitle(_title(report, "Representation similarity to the original and to the retrained model"))
    _figure_legend(fig)
    return fig


# ---------------------------------------------------------------------------------------------- probe vs output

_RECOVERY_BARS = (
    ("output_accuracy", "model output", "tab:blue"),
    ("probe_accuracy", "linear probe (multi-class)", "tab:red"),
    ("ncm_accuracy", "nearest class mean", "tab:orange"),
)


def probe_output_figure(report: Mapping[str, Any]) -> Figure | None:
    """Output accuracy against probe-recovered accuracy on the forgotten classes ("An Illusion of Unlearning?").

    Parameters
    ----------
    report
        A ``report.json`` dict.

    Returns
    -------
    Figure or None
        Grouped bars per model of ``representation.class_recovery.output_accuracy``, ``probe_accuracy`` and
        ``ncm_accuracy`` on the forgotten classes' test samples (arXiv 2604.08271); a missing value leaves
        its bar out. None when no model has ``class_recovery`` (or it holds no values); a dotted line marks
        chance (one over the number of classes) where the report lists ``dataset.classes``.
    """
    rows = {
        name: rec
        for name, m in _models(report).items()
        if isinstance(rec := _get(m, "representation", "class_recovery"), Mapping)
    }
    # A section whose values are all missing would draw empty axes; that is no data too.
    if not any(_num(_get(rec, key)) is not None for rec in rows.values() for key, _, _ in _RECOVERY_BARS):
        return None

    n = len(rows)
    fig = _new_figure(max(6.5, 0.65 * n + 3.5), 5.0)
    ax = fig.add_subplot()
    width = 0.8 / len(_RECOVERY_BARS)
    label_values = n <= 8
    for i, (key, label, colour) in enumerate(_RECOVERY_BARS):
        xs = [j + (i - (len(_RECOVERY_BARS) - 1) / 2) * width for j in range(n)]
        pairs = [(x, v) for x, rec in zip(xs, rows.values()) if (v := _num(rec.get(key))) is not None]
        if not pairs:
            continue
        bars = ax.bar([x for x, _ in pairs], [v for _, v in pairs], width=width, color=colour, label=label)
        if label_values:
            ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    classes = _get(report, "dataset", "classes")
    if isinstance(classes, list) and len(classes) > 1:
        # A probe at chance recovers nothing; bars near this line are what real forgetting looks like.
        ax.axhline(1 / len(classes), color="grey", lw=0.9, ls=":", label=f"chance (1/{len(classes)})")
    rotate = n > 4
    ax.set_xticks(
        range(n), list(rows), rotation=45 if rotate else 0, ha="right" if rotate else "center", rotation_mode="anchor"
    )
    ax.set_ylim(0.0, 1.1)
    ax.set_ylabel("accuracy on forgotten-class test samples")
    fig.suptitle(_title(report, "Forgotten-class recovery: model output vs probes on its embeddings"))
    ax.grid(True, axis="y", alpha=0.3)
    _figure_legend(fig)
    return fig


# ---------------------------------------------------------------------------------------------- writing

PLOT_FILES: dict[str, tuple[str, Callable[[Mapping[str, Any]], Figure | None]]] = {
    "trilemma": ("trilemma.png", trilemma_figure),
    "layerwise_lpr": ("layerwise_lpr.png", layerwise_figure),
    "cka": ("cka.png", cka_figure),
    "probe_vs_output": ("probe_vs_output.png", probe_output_figure),
}
"""Plot name -> (file name, figure function), in the order :func:`write_plots` writes them."""


def write_plots(report: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write every plot that the report has data for into ``folder`` (created); returns {plot_name: path}.

    Parameters
    ----------
    report
        A ``report.json`` dict.
    folder
        Where the PNGs go; created with its parents when missing. Existing files of the same names are
        replaced; a plot without data writes nothing (and leaves any older file of its name alone).

    Returns
    -------
    dict[str, Path]
        Plot name (a key of :data:`PLOT_FILES`) -> path of the written PNG, for the plots written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, (filename, make) in PLOT_FILES.items():
        fig = make(report)
        if fig is None:
            continue
        path = folder / filename
        try:
            fig.savefig(path, dpi=DPI, format="png")
        finally:
            # Not registered with pyplot, so clearing drops the artists now rather than at the next GC cycle.
            fig.clear()
        written[name] = path
    return written
