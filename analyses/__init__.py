"""The study: statistics collection over a corpus and the paper's analyses (to come)."""
