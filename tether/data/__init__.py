"""Records, readers, validation, tokenisation with response masks, and collation."""
