"""Cost: prices, the GPU-hour ledger, projection, the budget guard, the plan and the report
(docs/cost.md)."""
