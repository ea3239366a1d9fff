"""Built-in tasks: prompts, demonstrations and gold scorers."""
