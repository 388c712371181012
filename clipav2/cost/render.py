"""The budget report as Markdown or a self-contained HTML page (same tables)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from clipav2.cost.ledger import KINDS


def _n(x, fmt="{:,.0f}", none="–"):
    return none if x is None else fmt.format(x)


def _tables(rep: dict) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """(title, header, rows, notes) for each section."""
    stage_head = ["stage", "samples done", "planned", *(f"GPU-h {k}" for k in KINDS), "GPU-h total", "USD",
                  "samples/s/GPU", "MFU", "USD to finish", "USD projected"]
    stage_rows = []
    for s in rep["stages"]:
        stage_rows.append([s["name"], _n(s["samples_done"]), _n(s["samples_planned"]),
                           *(_n(s["gpu_hours"][k], "{:,.3f}") for k in KINDS), _n(s["gpu_hours_total"], "{:,.3f}"),
                           _n(s["cost_usd"], "${:,.2f}"), _n(s["samples_per_s_per_gpu"], "{:,.1f}"), _n(None if s["mfu"] is None else 100 * s["mfu"], "{:.3g}%"),
                           _n(s["cost_usd_to_go"], "${:,.2f}"), _n(s["projected_cost_usd"], "${:,.2f}")])
    stage_rows.append(["**total**", "", "", *(_n(rep["gpu_hours_by_kind"][k], "{:,.3f}") for k in KINDS),
                       _n(rep["total_gpu_hours"], "{:,.3f}"), _n(rep["total_cost_usd"], "${:,.2f}"), "", "",
                       "", _n(rep["projected_total_usd"], "${:,.2f}")])
    budget_rows = []
    for line in rep["budget_lines"]:
        spent = rep["total_cost_usd"] / line
        proj = rep["projected_total_usd"]
        verdict = "–" if proj is None else ("within" if proj <= line else "OVER")
        budget_rows.append([_n(line, "${:,.0f}"), f"{spent:.1%}", _n(proj, "${:,.2f}"), verdict])
    sections = [("Stages", stage_head, stage_rows, []),
                ("Budget", ["budget", "spent so far", "projected total", "projection"], budget_rows,
                 [] if rep["budget_usd"] else ["No budget in the recipe: showing the paper's $10,000 and $15,000."])]
    p = rep.get("paper")
    if p:
        rows = [["paper (A100-80GB, $1.575/h)", _n(p["a100_hours"]), _n(p["cost_usd"], "${:,.0f}"), f"{p['zero_shot']}% IN-1K"],
                [f"this run ({rep['gpus']} x {rep['accelerator']}, ${rep['price_per_gpu_hour']:.3f}/h)",
                 _n(rep["projected_total_gpu_hours"], "{:,.1f}"), _n(rep["projected_total_usd"], "${:,.2f}"), "projected"]]
        notes = [f"Paper row: {p['label']} (printed ${p['printed_usd']:,})."]
        if rep["projected_total_usd"]:
            notes.append(f"Projected cost is {rep['projected_total_usd'] / p['cost_usd']:.2f}x the paper's.")
        sections.append(("Compared with the paper", ["", "GPU-hours", "USD", "note"], rows, notes))
    return sections


def _header_lines(rep: dict) -> list[str]:
    return [f"Run `{rep['run_dir']}`, model {rep['model'] or 'unknown'}, {rep['gpus']} x {rep['accelerator']} "
            f"at ${rep['price_per_gpu_hour']:.3f} per GPU-hour.",
            f"Spent **${rep['total_cost_usd']:,.2f}** for {rep['total_gpu_hours']:,.3f} GPU-hours"
            + (f"; projected total **${rep['projected_total_usd']:,.2f}**." if rep["projected_total_usd"] is not None else ".")]


def to_markdown(rep: dict, plot_path: str | None = None) -> str:
    out = ["# Cost report", "", *_header_lines(rep), ""]
    for title, head, rows, notes in _tables(rep):
        out += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out += [""] + [f"{n}" for n in notes] + ([""] if notes else [])
    if plot_path:
        out += [f"![cumulative dollars vs samples seen]({plot_path})", ""]
    if rep["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in rep["notes"]] + [""]
    return "\n".join(out)


def to_html(rep: dict, png: Path | None = None) -> str:
    esc = html.escape
    body = ["<h1>Cost report</h1>"] + [f"<p>{esc(line).replace('**', '')}</p>" for line in _header_lines(rep)]
    for title, head, rows, notes in _tables(rep):
        body.append(f"<h2>{esc(title)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{esc(c.replace('**', ''))}</td>" for c in r) + "</tr>" for r in rows]
        body.append("</table>" + "".join(f"<p>{esc(n)}</p>" for n in notes))
    if png is not None and Path(png).is_file():
        data = base64.b64encode(Path(png).read_bytes()).decode()
        body.append(f'<img alt="cumulative dollars vs samples seen" src="data:image/png;base64,{data}">')
    if rep["notes"]:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in rep["notes"]) + "</ul>")
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>Cost report</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
