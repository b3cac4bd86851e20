"""Answers from models: local batched generation, the OpenAI-compatible client and server, chat backends."""
