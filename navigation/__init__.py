"""OrthoNav navigation."""
