"""Loading targets and drafters by name (short names, hub ids, folders, GGUF files) and putting them together."""
