"""The caption side: caption readers, concept tables, and concept search in captions."""
