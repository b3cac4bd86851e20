"""Stages 3 and 4, SFT and DPO: the shared training loop, batching, optimizer and data parallelism."""
