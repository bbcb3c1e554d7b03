"""Module Beta: apply rules, enrich, score quality; feed the delivery queue."""
