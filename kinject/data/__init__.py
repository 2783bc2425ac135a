"""The background stage (conf group `data`): sources, files, filter, tokenizer, the background stream."""
