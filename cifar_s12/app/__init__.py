"""The S12 deliverable: the Gradio app, the shipped weights and their export, the mistakes gallery's cache, the
Hugging Face Space folder, and the app's latency benchmark."""
