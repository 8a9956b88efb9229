"""Generation, caption metrics and the evaluation of a checkpoint directory."""
