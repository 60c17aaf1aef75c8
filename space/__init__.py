"""The Gradio demo Space (`app.py`) and its deployment to the Hub (`deploy.py`)."""
