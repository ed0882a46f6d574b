"""The scribe: writes each conversation memory ended down as an encounter."""
