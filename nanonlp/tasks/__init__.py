"""Tasks: each joins data, tokenizer, model and the training loop for one kind of problem."""
