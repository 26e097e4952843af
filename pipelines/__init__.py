"""The embedding plan, its stages and the runs built from them."""
