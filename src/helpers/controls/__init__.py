"""The study's two controls on a user's own data: sample-similarity pruning and a Let It Wag!-style test set."""
