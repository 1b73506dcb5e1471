"""Model-store tooling: the embedded defaults, importers for production models, the manifest."""
