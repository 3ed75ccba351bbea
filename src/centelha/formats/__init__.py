"""Import and export of other model formats: Hugging Face folders and GGUF files."""
