"""Direct preference optimization: losses, reference log-probs and the trainer."""
