"""Reports: W&B logging and reports, and the self-contained local report (tables and plots)."""
