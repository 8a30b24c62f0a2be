"""lm-eval integration: run lm-eval unchanged and capture what attribution needs."""
