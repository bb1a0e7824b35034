"""What a run reports: the experiment loggers (`loggers`), the plots (`plots`) and the record of how the
run can be replayed (`provenance`)."""
