"""OrthoNav planning."""
