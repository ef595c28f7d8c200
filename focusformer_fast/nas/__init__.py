"""Architecture search: costs and budgets, latency tables, samplers, scoring with shared weights, specialization."""
