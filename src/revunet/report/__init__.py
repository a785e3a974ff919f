"""The papers' reported numbers, and the tables and figures that set ours beside them."""
