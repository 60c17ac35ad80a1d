"""Loading Hugging Face models and the scalar-head (reward / value) model."""
