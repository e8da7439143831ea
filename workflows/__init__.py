"""Hera only: builds Argo Workflows from the spec and cluster settings; no business logic."""
