"""The attribution study: threshold-free quality of subject maps per layer and timestep (docs/attribution.md)."""
