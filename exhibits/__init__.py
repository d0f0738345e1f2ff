"""The show itself and the torch-free core: exhibit definitions, prompts, the store and the playlist."""
