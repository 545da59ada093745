"""Runs built from the one loop: a training run, a proxy teacher then its student, pruning's two
stages, the quickstart. Each stage is an ordinary run directory, resumable on its own."""
