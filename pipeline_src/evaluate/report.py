"""The results report: the papers' published figures beside ours and the baselines, with plots.

    python -m pipeline_src report --metrics-dir data/metrics --published config/published.yaml \
        --out data/report/

Writes, into --out (built under a temporary name and renamed into place when complete):
- results.md: an overview, then per paper one table per evaluation (the paper's rows for the same recipe, ours,
  the baselines) with the protocol, preset, checkpoint and MLflow run ids beneath it, and one table per
  published entry that no metrics file evaluates yet;
- plots/<evaluation>_bars.png (the main metric per row: PSNR, or max F for blur detection) and
  plots/<evaluation>_per_image.png (its per-image distribution, model and baselines, from the per-image CSV);
- rows.csv: every table row with its metrics, one row per line, for `dvc plots show` (x: psnr, y: label).
Published figures are the papers' own on the papers' datasets; where ours were computed on another dataset
(the synthetic sets) the table says so, and the comparison is orientation, not reproduction.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
from pathlib import Path

from pipeline_src.errors import PipelineError

METRIC_ORDER = ("psnr", "ssim", "ms_ssim", "mae", "lpips", "max_f", "mean_max_f", "f_at_0_5")
PRIMARY = {"restoration": "psnr", "detection": "max_f"}
MISSING = "missing"
RECORD_SUFFIX = ".record.json"  # evaluate's --record; its --out holds the same figures, numbers only
ROW_KINDS = ("model", "input", "other")
KIND_COLOURS = {"published": "#9e9e9e", "ours": "#1f77b4", "authors": "#2ca02c", "baseline": "#ff7f0e"}
MIN_GAIN_DB = 0.3  # what a restoration model trained at the default budget should gain over its blurry input
AUTHORS = "authors' release"  # weights_import.AUTHORS_RELEASE: the record's weights_source for imported weights
_ENTRY_KEYS = {"paper", "recipe", "dataset", "protocol", "test_images", "source", "page", "rows"}
_EVAL_KEYS = ("model", "baselines", "images", "name", "paper", "recipe", "dataset", "split", "task",
              "protocol_name", "protocol", "checkpoint", "preset", "training_run_id", "eval_run_id",
              "per_image_csv", "bit_depth_conversion", "tiling")


class ReportInputError(PipelineError, ValueError):
    """A published-figures file or metrics file that cannot be reported; names the file and the field."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--metrics", nargs="+", type=Path, help="evaluation records (*.record.json) of the "
                                                                   "evaluate stage")
    source.add_argument("--metrics-dir", type=Path,
                        help="every *.record.json directly in this folder (the DAG's data/metrics: a variable set "
                             "of evaluations that DVC cannot list in a command)")
    parser.add_argument("--published", default=Path("config/published.yaml"), type=Path,
                        help="the papers' figures (default config/published.yaml)")
    parser.add_argument("--out", required=True, type=Path, help="report folder, e.g. data/report/")


def run(args: argparse.Namespace) -> int:
    from pipeline_src.fileio import atomic_dir

    published = load_published(args.published)
    paths = sorted(args.metrics) if args.metrics else sorted(args.metrics_dir.glob(f"*{RECORD_SUFFIX}"))
    if not paths:
        raise ReportInputError(f"{args.metrics_dir}: no evaluation records (*{RECORD_SUFFIX}); run the evaluate "
                               "stage first")
    evaluations = [load_evaluation(p) for p in paths]
    names = [e["name"] for e in evaluations]
    if len(set(names)) != len(names):
        raise ReportInputError(f"two metrics files share a name: {sorted(names)}; each evaluation needs its own")
    tables = build_tables(published, evaluations)
    with atomic_dir(args.out) as tmp:
        (tmp / "plots").mkdir()  # a folder of its own: DVC tracks it whole, results.md and rows.csv singly
        plots = {t.name: write_plots(t, tmp / "plots") for t in tables if t.evaluation is not None}
        (tmp / "results.md").write_text(render_markdown(tables, published, evaluations, plots, args))
        (tmp / "rows.csv").write_text(rows_csv(tables))
    print(f"{args.out}: results.md with {len(tables)} tables from {len(evaluations)} evaluations")
    return 0


# ------------------------------------------------------------------------------------------------ inputs
def load_published(path: str | Path) -> dict:
    from pipeline_src.config import load_yaml

    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict) or set(raw) != {"papers", "entries"}:
        raise ReportInputError(f"{path}: top level must hold exactly `papers` and `entries`, found "
                               f"{sorted(raw) if isinstance(raw, dict) else type(raw).__name__}")
    for i, entry in enumerate(raw["entries"]):
        where = f"{path}: entries[{i}]"
        missing = _ENTRY_KEYS - set(entry)
        extra = set(entry) - _ENTRY_KEYS - {"note"}
        if missing or extra:
            raise ReportInputError(f"{where}: missing {sorted(missing)}, unknown {sorted(extra)}; an entry has "
                                   f"{sorted(_ENTRY_KEYS)} and an optional note")
        if entry["paper"] not in raw["papers"]:
            raise ReportInputError(f"{where}.paper: {entry['paper']!r} is not in `papers` ({', '.join(raw['papers'])})")
        _check_value(entry["test_images"], f"{where}.test_images", integer=True)
        for j, row in enumerate(entry["rows"]):
            _check_row(row, f"{where}.rows[{j}]")
    return raw


def _check_row(row: dict, where: str) -> None:
    for key in ("name", "kind", "source"):
        if key not in row:
            raise ReportInputError(f"{where}: missing {key!r}")
    if row["kind"] not in ROW_KINDS:
        raise ReportInputError(f"{where}.kind: {row['kind']!r}; expected one of {', '.join(ROW_KINDS)}")
    metrics = set(row) - {"name", "kind", "source"}
    unknown = metrics - set(METRIC_ORDER)
    if unknown:
        raise ReportInputError(f"{where}: unknown metric(s) {sorted(unknown)}; known: {', '.join(METRIC_ORDER)}")
    if not metrics:
        raise ReportInputError(f"{where}: no metric; give the paper's figures or mark them `missing`")
    for m in metrics:
        _check_value(row[m], f"{where}.{m}")


def _check_value(v, where: str, integer: bool = False) -> None:
    if v == MISSING:
        return
    ok = isinstance(v, int) if integer else isinstance(v, (int, float)) and math.isfinite(v)
    if isinstance(v, bool) or not ok:
        raise ReportInputError(f"{where}: {v!r}; expected {'an integer' if integer else 'a number'} or "
                               f"`{MISSING}` (never a guess)")


def load_evaluation(path: str | Path) -> dict:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportInputError(f"{path}: no such evaluation record (written by `python -m pipeline_src evaluate "
                               "--record`)") from None
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{path}: not JSON ({exc})") from None
    missing = [k for k in _EVAL_KEYS if k not in doc]
    if missing:
        raise ReportInputError(f"{path}: missing field(s) {missing}; not an evaluation record of the evaluate stage")
    if doc["task"] not in PRIMARY:
        raise ReportInputError(f"{path}: task {doc['task']!r}; expected one of {', '.join(PRIMARY)}")
    doc["_path"] = str(path)
    return doc


def _per_image(doc: dict) -> dict[str, list[float]]:
    """Main metric per image for the model and each baseline, from the evaluation's per-image CSV."""
    path = Path(doc["per_image_csv"])
    if not path.is_file():
        raise ReportInputError(f"{doc['_path']}: its per-image CSV {path} is missing (run the evaluate stage again)")
    metric = PRIMARY[doc["task"]]
    columns = {"ours": metric, **{f"baseline: {b}": f"{b}_{metric}" for b in doc["baselines"]}}
    rows = list(csv.DictReader(path.open()))
    out = {}
    for label, col in columns.items():
        if rows and col not in rows[0]:
            raise ReportInputError(f"{path}: no column {col!r} (columns: {list(rows[0])})")
        out[label] = [float(r[col]) for r in rows if r[col] not in ("", "inf", "nan")]
    return out


# ------------------------------------------------------------------------------------------------ tables
@dataclasses.dataclass
class Row:
    label: str
    kind: str            # published | ours | authors | baseline
    data: str            # dataset and split the figures are on
    images: object       # int, or "missing"
    values: dict         # metric -> number | None (n/a) | "missing"


@dataclasses.dataclass
class Table:
    name: str
    paper: str
    title: str
    rows: list[Row]
    facts: list[str]
    metric: str                      # the main metric (plots)
    evaluation: dict | None = None   # None: published figures only
    per_image: dict | None = None


def _published_rows(entry: dict) -> list[Row]:
    split = "test"
    return [Row(label=f"{r['name']} (paper, {entry['dataset']}, {r['source']})", kind="published",
                data=f"{entry['dataset']} {split}",
                images=entry["test_images"], values={m: r[m] for m in METRIC_ORDER if m in r}) for r in entry["rows"]]


def _entry_facts(entry: dict) -> list[str]:
    facts = [f"published: {entry['dataset']}, {entry['source']}, page {entry['page']}; "
             f"scored as protocol `{entry['protocol']}`"]
    if entry.get("note"):
        facts.append(f"note: {' '.join(entry['note'].split())}")
    return facts


def _is_authors(doc: dict) -> bool:
    return doc.get("weights_source") == AUTHORS


def _model_row(doc: dict) -> Row:
    data = f"{doc['dataset']} {doc['split']}"
    if _is_authors(doc):
        prov = doc.get("provenance") or {}
        return Row(label=f"authors' weights: {prov.get('import', doc['model_name'])} ({prov.get('file', '?')}, "
                         f"sha256 {str(prov.get('sha256', ''))[:12]})", kind="authors", data=data,
                   images=doc["images"], values=dict(doc["model"]))
    ck = doc["checkpoint"]
    budget = f"phase {ck['phase']}, {ck['step']} steps, preset {doc['preset']}"
    return Row(label=f"ours: {doc['recipe'] or doc['model_name']} ({budget})", kind="ours", data=data,
               images=doc["images"], values=dict(doc["model"]))


def _evaluation_table(doc: dict, entries: list[dict], authors: list[dict] = ()) -> Table:
    """One evaluation's table: the paper's rows, ours (or the authors' weights), the authors' weights evaluated
    on the same data and protocol, then the baselines."""
    rows = [row for e in entries for row in _published_rows(e)]
    rows.append(_model_row(doc))
    rows += [_model_row(a) for a in authors]
    for b, values in doc["baselines"].items():
        extra = ""
        if "radius_px_median" in values:
            extra = f" (disc r = {values['radius_px_median']:g} px median, {values['radius_source']})"
        rows.append(Row(label=f"baseline: {b}{extra}", kind="baseline", data=f"{doc['dataset']} {doc['split']}",
                        images=doc["images"], values={m: v for m, v in values.items() if m in METRIC_ORDER}))
    p, ck = doc["protocol"], doc["checkpoint"]
    facts = [
        f"protocol: `{doc['protocol_name']}`: {p['bit_depth']}-bit ({doc['bit_depth_conversion']}), data range "
        f"{p['data_range']:g}, {p['colour_order']}, output {p['activation']} / clip {p['clip']} / quantise "
        f"{p['quantize']} ({p['quantize_bits']}-bit), border crop {p['border_crop']}, SSIM {p['ssim']['window']}x"
        f"{p['ssim']['window']} {'Gaussian' if p['ssim']['gaussian'] else 'uniform'} {p['ssim']['covariance']} "
        f"covariance; tiles {doc['tiling']['tile']} px, overlap {doc['tiling']['overlap']}",
        f"preset: `{doc['preset']}`; checkpoint: `{ck['path']}` (phase {ck['phase']}, step {ck['step']}, "
        f"sha256 {ck['sha256'][:12]})",
        f"MLflow: training run `{doc['training_run_id']}`, evaluation run `{doc['eval_run_id']}`",
    ]
    for metric, why in (doc.get("unavailable") or {}).items():
        facts.append(f"{metric}: n/a ({why})")
    for a in ([doc] if _is_authors(doc) else []) + list(authors):
        prov = a.get("provenance") or {}
        match = {True: "equals the release's git blob", False: "DIFFERS from the release's git blob"}.get(
            prov.get("matches_release"), "not compared with the release")
        facts.append(f"authors' weights `{prov.get('import')}`: {prov.get('source')} ({prov.get('url')}); file "
                     f"`{prov.get('file')}`, sha256 {prov.get('sha256')}, {match}; imported exactly, evaluated with "
                     "the same protocol")
    if not _is_authors(doc) and doc["preset"] != "paper":
        facts.append(f"ours was trained with the `{doc['preset']}` preset (phase {ck['phase']} ended at step "
                     f"{ck['step']}): a budget to show the pipeline working, not the paper's training")
    gain = (doc["model"].get("psnr") or 0) - ((doc["baselines"].get("input") or {}).get("psnr") or 0)
    if doc["task"] == "restoration" and "input" in doc["baselines"] and doc["model"].get("psnr") is not None:
        facts.append(f"ours is {gain:+.2f} dB against the blurry input"
                     + (f" (short of the {MIN_GAIN_DB} dB this preset aims at)" if gain < MIN_GAIN_DB else ""))
    if doc.get("budget_note"):
        facts.append(f"why, at this budget: {' '.join(doc['budget_note'].split())}")
    for e in entries:
        facts += _entry_facts(e)
        if e["dataset"] != doc["dataset"]:
            facts.append(f"the paper's figures are on {e['dataset']}, ours on {doc['dataset']}: different data, "
                         "so the comparison is orientation only")
        if e["protocol"] != doc["protocol_name"]:
            facts.append(f"the paper's figures follow protocol `{e['protocol']}`, ours `{doc['protocol_name']}`")
    return Table(name=doc["name"], paper=doc["paper"] or "unknown",
                 title=f"{doc['recipe'] or doc['model_name']} on {doc['dataset']} ({doc['split']}, "
                       f"{doc['images']} images)",
                 rows=rows, facts=facts, metric=PRIMARY[doc["task"]], evaluation=doc, per_image=_per_image(doc))


def _same_test(a: dict, b: dict) -> bool:
    return (a["recipe"], a["dataset"], a["split"], a["protocol_name"]) == \
        (b["recipe"], b["dataset"], b["split"], b["protocol_name"])


def build_tables(published: dict, evaluations: list[dict]) -> list[Table]:
    evaluated = {e["recipe"] for e in evaluations}
    ours = [e for e in evaluations if not _is_authors(e)]
    # the authors' weights join the table of our model on the same data and protocol; alone, they get their own
    joined = {id(a) for a in evaluations if _is_authors(a) and any(_same_test(a, o) for o in ours)}
    tables = []
    for doc in evaluations:
        if id(doc) in joined:
            continue
        authors = [a for a in evaluations if id(a) in joined and _same_test(a, doc)] if not _is_authors(doc) else []
        tables.append(_evaluation_table(doc, [e for e in published["entries"] if e["recipe"] == doc["recipe"]],
                                        authors))
    for i, entry in enumerate(published["entries"]):
        if entry["recipe"] in evaluated:
            continue
        metric = "max_f" if any("max_f" in r for r in entry["rows"]) else "psnr"
        tables.append(Table(name=f"published-{i}", paper=entry["paper"],
                            title=f"{entry['recipe']} on {entry['dataset']} (published figures; not evaluated in "
                                  "this run)",
                            rows=_published_rows(entry), facts=_entry_facts(entry), metric=metric))
    order = list(published["papers"])
    return sorted(tables, key=lambda t: (order.index(t.paper) if t.paper in order else len(order), t.paper,
                                         t.evaluation is None, t.name))


# ------------------------------------------------------------------------------------------------ output
def _cell(metric: str, v, published: bool = False) -> str:
    """Ours at fixed precision; the papers' figures as printed (0.845 stays 0.845, not 0.8450)."""
    if v == MISSING:
        return MISSING
    if v is None:
        return "n/a"
    if published:
        return f"{v:g}"
    return f"{v:.2f}" if metric == "psnr" else f"{v:.4f}"


def _md(text) -> str:
    return str(text).replace("|", "\\|")  # a literal pipe would end the table cell


def _columns(table: Table) -> list[str]:
    return [m for m in METRIC_ORDER if any(m in r.values for r in table.rows)]


def render_markdown(tables: list[Table], published: dict, evaluations: list[dict], plots: dict, args) -> str:
    lines = ["# Results", "",
             f"Generated by `python -m pipeline_src report` from {len(evaluations)} metrics file(s) and "
             f"`{args.published}`. Published rows are the papers' own figures on the papers' datasets (cited by "
             "table); `missing` = the paper gives no such figure; `n/a` = not computed here (e.g. LPIPS without its "
             "weights). Every table names the protocol its numbers follow.", ""]
    if evaluations:
        lines += ["## Overview", "", "| evaluation | paper | dataset | protocol | preset | ours | baselines |",
                  "|---|---|---|---|---|---|---|"]
        for doc in evaluations:
            m = PRIMARY[doc["task"]]
            base = ", ".join(f"{b} {_cell(m, v.get(m))}" for b, v in doc["baselines"].items()) or "-"
            preset = "authors' weights" if _is_authors(doc) else doc["preset"]  # imported: no preset trained it
            lines.append(f"| {_md(doc['name'])} | {doc['paper']} | {_md(doc['dataset'])} {doc['split']} | "
                         f"`{doc['protocol_name']}` | {preset} | {m} {_cell(m, doc['model'].get(m))} | {base} |")
        lines.append("")
    current = None
    for t in tables:
        if t.paper != current:
            current = t.paper
            info = published["papers"].get(t.paper)
            heading = f"{info['title']} ({info['citation']})" if info else t.paper
            lines += [f"## {heading}", ""]
        cols = _columns(t)
        lines += [f"### {t.title}", "", "| row | data | images | " + " | ".join(cols) + " |",
                  "|---|---|---|" + "---|" * len(cols)]
        for r in t.rows:
            lines.append(f"| {_md(r.label)} | {_md(r.data)} | {r.images} | "
                         + " | ".join(_cell(c, r.values.get(c, MISSING), r.kind == "published") for c in cols) + " |")
        lines.append("")
        lines += [f"- {f}" for f in t.facts]
        lines.append("")
        for png in plots.get(t.name, []):
            lines += [f"![{png}](plots/{png})", ""]
    return "\n".join(lines)


def rows_csv(tables: list[Table]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["table", "label", "row", "kind", "data", "images", *METRIC_ORDER])
    for t in tables:
        for r in t.rows:
            values = [r.values.get(m) for m in METRIC_ORDER]
            writer.writerow([t.name, f"{t.name} | {r.label}", r.label, r.kind, r.data, r.images,
                             *("" if v is None or v == MISSING else repr(v) for v in values)])
    return buf.getvalue()


def write_plots(table: Table, out_dir: Path) -> list[str]:
    """Bars of the main metric per row, and its per-image distribution; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    m = table.metric
    shown = [r for r in table.rows if isinstance(r.values.get(m), (int, float))]
    names = []
    if shown:
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(shown) + 1.2))
        ax.barh(range(len(shown)), [r.values[m] for r in shown], color=[KIND_COLOURS[r.kind] for r in shown])
        ax.set_yticks(range(len(shown)), [r.label if len(r.label) < 60 else r.label[:57] + "..." for r in shown],
                      fontsize=7)
        ax.invert_yaxis()
        values = [r.values[m] for r in shown]
        lo = min(values)
        ax.set_xlim(lo - 0.1 * (max(values) - lo + 1e-9) - (1.0 if m == "psnr" else 0.02), None)
        ax.set_xlabel(m)
        ax.set_title(table.title, fontsize=9)
        kinds = sorted({r.kind for r in shown}, key=list(KIND_COLOURS).index)
        ax.legend(handles=[Patch(color=KIND_COLOURS[k], label=k) for k in kinds], fontsize=7, loc="lower right")
        fig.tight_layout()
        names.append(f"{table.name}_bars.png")
        fig.savefig(out_dir / names[-1], dpi=100, metadata={"Software": None})
        plt.close(fig)
    series = {k: v for k, v in (table.per_image or {}).items() if v}
    if series:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.boxplot(list(series.values()), orientation="horizontal", tick_labels=list(series))
        ax.set_xlabel(f"{m} per image")
        ax.set_title(f"{table.title}: per-image {m}", fontsize=9)
        fig.tight_layout()
        names.append(f"{table.name}_per_image.png")
        fig.savefig(out_dir / names[-1], dpi=100, metadata={"Software": None})
        plt.close(fig)
    return names
