"""Stage 1, build dataset: load, validate, dedupe, filter, split and decontaminate the rows a team brings."""
