"""The engine: trees, sampling, verification, the decoding loop, its stats, and the tree policies."""
