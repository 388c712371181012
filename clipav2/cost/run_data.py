"""Reading a run directory for the budget report: RUN_DIR/ledger.json (required),
RUN_DIR/metrics.jsonl and RUN_DIR/config.yaml (used when present). No checkpoint is needed, so a
directory copied from a cluster without them works."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from clipav2.config import Config, ConfigError, load_config, parse_yaml
from clipav2.cost import ledger as ledger_mod
from clipav2.cost.ledger import Ledger


@dataclass
class RunData:
    run_dir: Path
    ledger: Ledger
    ledger_doc: dict
    metrics: list[dict] = field(default_factory=list)
    cfg: Config | None = None
    notes: list[str] = field(default_factory=list)


def load_run(run_dir, price=None) -> RunData:
    """`price` (already validated) re-prices every bucket: 'what would this run cost at P/hour'."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ledger_mod.LedgerError(f"{run_dir}: no such run directory")
    doc = ledger_mod.read(run_dir)
    led = Ledger(max(int(doc.get("gpus", 1)), 1), float(doc.get("price_per_gpu_hour", 0.0)),
                 accelerator=doc.get("accelerator", "unknown"))
    led.load_state_dict(doc)
    if price is not None:
        led.price = price
        for s in led.stages.values():
            s["usd"] = {k: v / 3600.0 * price for k, v in s["gpu_seconds"].items()}
    run = RunData(run_dir, led, doc)
    run.metrics = _read_metrics(run_dir / "metrics.jsonl", run.notes)
    run.cfg = _read_config(run_dir / "config.yaml", run.notes)
    return run


def _read_metrics(path: Path, notes: list) -> list[dict]:
    if not path.is_file():
        notes.append("no metrics.jsonl: throughput and MFU come from the ledger alone")
        return []
    rows, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1  # a line cut by a crash
            continue
        if isinstance(row, dict) and "stage" in row:
            rows.append(row)
    if bad:
        notes.append(f"metrics.jsonl: skipped {bad} unreadable line(s)")
    return rows


def _read_config(path: Path, notes: list) -> Config | None:
    """The resolved config of the run. Paths that only exist on the cluster (init_from,
    deepspeed_config, vocab) are cleared so a copied run directory still loads."""
    if not path.is_file():
        notes.append("no config.yaml: planned samples, budget and projection are unavailable")
        return None
    try:
        raw = parse_yaml(path.read_bytes(), str(path)) or {}
        overrides = ["parallel.deepspeed_config=null", "data.vocab=null"]
        overrides += [f"stages.{s['name']}.init_from=null" for s in raw.get("stages", []) if isinstance(s, dict) and s.get("name")]
        return load_config(path, overrides)
    except (ConfigError, AttributeError, TypeError) as e:
        notes.append(f"config.yaml not usable ({str(e).splitlines()[0]}): plan and projection are unavailable")
        return None
