"""Stage 5, evaluate and promote: held-out answers, benchmarks, and the gate that promotes only a winner."""
