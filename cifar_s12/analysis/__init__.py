"""What a trained model gets right and wrong: predictions, GradCAM, every figure (plots.py), the report command."""
