"""The Streamlit workbench: layout and calls into `engine/` (never torch, transformers or peft here)."""
