"""Training data: file readers with file-and-line errors, and the Lightning DataModule over a head."""
