"""recbole_mm's models."""
