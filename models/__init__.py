"""Data package ``qembed_gguf.models``: model specs (*.toml) and the bundled tiny demo checkpoint."""
