"""Record validation in Alpha: required fields, JSON Schema (draft-07), field rule files."""
