"""The CLIPA-v2 paper's cost table (arXiv 2306.15658): A100-80GB hours estimated
for its TPU runs, priced at $1.575 per A100-hour. The budget report compares a run with the row
that matches its recipe (model + stage resolutions)."""
from __future__ import annotations

from dataclasses import dataclass

PAPER_PRICE = 1.575  # USD per A100-80GB hour, the paper's GCP figure
# The A100 MFU the paper's 8,640 A100-hours imply for configs/h14.yaml's training FLOPs (fine-tune
# masks counted; tests/test_cost_paper.py): `clipav2 plan` assumes it when no rate is given.
PAPER_MFU = 0.265


@dataclass(frozen=True)
class PaperRun:
    label: str
    model: str
    resolutions: tuple[int, ...]
    a100_hours: float
    printed_usd: float  # as printed; the paper's rounding and some rows' prices differ (see docs/cost.md)
    zero_shot: float


PAPER_RUNS = (
    PaperRun("CLIPA-v2 H/14 12.8B@70 + 512M@224 (DataComp-1B)", "ViT-H-14-CLIPA", (70, 224), 5920, 9324, 81.1),
    PaperRun("CLIPA-v2 L/14 12.8B@84 + 512M@224", "ViT-L-14-CLIPA", (84, 224), 4008, 6318, 79.7),
    PaperRun("CLIPA-v2 L/14 + 128M@336", "ViT-L-14-CLIPA", (84, 224, 336), 4008 + 512, 6318 + 806, 80.3),
    PaperRun("CLIPA-v2 H/14 12.8B@84 + 512M@224", "ViT-H-14-CLIPA", (84, 224), 7776, 12247, 81.5),
    PaperRun("CLIPA-v2 H/14 + 128M@336", "ViT-H-14-CLIPA", (84, 224, 336), 7776 + 864, 12247 + 1366, 81.8),
    PaperRun("CLIPA-v2 bigG/14 @84 + @224", "ViT-bigG-14-CLIPA", (84, 224), 21998, 34646, 82.7),
    PaperRun("CLIPA-v2 bigG/14 + @336", "ViT-bigG-14-CLIPA", (84, 224, 336), 23742, 39056, 83.0),
    # the same H/14 schedule on LAION-2B (after the DataComp-1B row above, which `matching_run` finds first)
    PaperRun("CLIPA-v2 H/14 12.8B@84 + 512M@224 + 128M@336 (LAION-2B)", "ViT-H-14-CLIPA", (84, 224, 336), 8640, 13613, 79.1),
)
OPENCLIP_RUNS = (
    PaperRun("OpenCLIP H/14 32B@224 (LAION-2B)", "ViT-H-14", (224,), 216712, 247864, 78.0),
    PaperRun("OpenCLIP G/14 32B + 6.7B@224 (LAION-2B)", "ViT-bigG-14", (224,), 232448, 366105, 80.1),
)


def paper_cost(a100_hours: float, price: float = PAPER_PRICE) -> float:
    return a100_hours * price


def matching_run(model: str, resolutions) -> PaperRun | None:
    """The paper's row for this model and sequence of stage image sizes, if it has one."""
    for run in PAPER_RUNS:
        if run.model == model and run.resolutions == tuple(resolutions):
            return run
    return None


def published_points(model: str, resolutions) -> list[PaperRun]:
    """The paper's runs of `model` (cost against accuracy), when this recipe is one of them."""
    if matching_run(model, resolutions) is None:
        return []
    return sorted((r for r in PAPER_RUNS if r.model == model), key=lambda r: r.a100_hours)
