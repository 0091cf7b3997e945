"""Datasets: registry, download, synthetic generator, manifests, patches, torch datasets."""
