"""Deployment pieces: the one-component entry point, the compose file and Kubernetes manifests."""
