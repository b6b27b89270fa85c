"""Where generation runs: a local Hugging Face model, an OpenAI-compatible HTTP API, or vLLM."""
