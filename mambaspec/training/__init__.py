"""Training drafters: data (prompt sources, distillation), the training loop, evaluation."""
