"""Serialised contracts read by several layers (the plans file), kept below every package that reads them."""
