"""The phase runner every paper's training uses: config in, checkpoints and MLflow runs out."""
