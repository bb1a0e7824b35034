"""The ranks of one run: the Trainer's strategy, the launcher that makes the other ranks replay rank 0's run
(`ranks`), and what a child rank runs (`replica`)."""
