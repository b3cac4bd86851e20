"""Benchmarks beyond the verifiable-instruction set: MT-Bench-style grading, pairwise win rates,
implicit-reward preference accuracy, perplexity, and lm-evaluation-harness tasks."""
