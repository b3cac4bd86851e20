"""Reading and writing the row files that pass between stages."""
