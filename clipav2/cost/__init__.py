"""Cost: the GPU-hour ledger, projection, the budget guard, the plan and the report, priced from
the accelerator table (clipav2.accelerators; docs/cost.md)."""
