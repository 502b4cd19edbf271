"""The five AWARE stages (sample, verify, gate, update, evaluate) and the loop that runs them."""
