"""Direct preference optimization: losses and the trainer."""
