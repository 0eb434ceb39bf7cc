"""The encrypted, versioned model repository (Triton-style layout)."""
